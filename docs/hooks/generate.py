"""MkDocs hook: the pages that must not drift from the code are generated at build time.

- ``reference/cli.md``: every command of the Typer app (``pgsched.cli.main.cli``) with its
  help, arguments and options, read from the click command tree Typer builds.
- ``reference/rest-api.md``: every route of the REST API with method, path, summary and the
  API-key scope it needs, read from the app's OpenAPI document and its route handlers. The app
  is built without a database (``create_app`` opens its pool only in the lifespan).
- ``performance/results/*``: the benchmark reports and charts from ``benchmarks/results/``,
  copied in so pages can link them and ``mkdocs build --strict`` can check those links.

Nothing is written to the source tree: the files exist only in the build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
CLI_PAGE = "reference/cli.md"
API_PAGE = "reference/rest-api.md"
RESULTS_DIR = "performance/results"


def on_files(files: Files, /, *, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, CLI_PAGE, content=cli_reference()))
    files.append(File.generated(config, API_PAGE, content=rest_reference()))
    for result in sorted((REPO / "benchmarks" / "results").iterdir()):
        if result.suffix in (".md", ".png"):
            files.append(File.generated(config, f"{RESULTS_DIR}/{result.name}", abs_src_path=str(result)))
    return files


# --- the command line ------------------------------------------------------------------------
# Duck-typed on purpose: Typer 0.29 builds its commands on its own copy of click (typer._click),
# so isinstance checks against the click package would see no groups and no parameters.


def cli_commands() -> Iterator[tuple[str, Any]]:
    """Every command of the pgsched CLI, depth first, with its full name ("pgsched runs list")."""
    import typer

    from pgsched.cli.main import cli

    def walk(name: str, command: Any) -> Iterator[tuple[str, Any]]:
        yield name, command
        for sub_name in sorted(getattr(command, "commands", {})):
            yield from walk(f"{name} {sub_name}", command.commands[sub_name])

    yield from walk("pgsched", typer.main.get_command(cli))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


_HELP_TAGS = re.compile(r"\s*\[(default: (?P<default>.*?)|required)\]\s*$")


def _param_row(param: Any, ctx: Any) -> str:
    """One table row from the parameter's own help record: what `--help` prints, split into
    names, help text and default."""
    record = param.get_help_record(ctx)
    names, help_text = record if record else (param.name, "")
    default, required = "", param.required
    while (match := _HELP_TAGS.search(help_text)) is not None:
        if match["default"] is not None:
            default = f"`{match['default']}`"
        help_text = help_text[: match.start()]
    return f"| `{names}` | {_cell(help_text)} | {default} | {'yes' if required else ''} |"


def cli_reference() -> str:
    import typer

    out = [
        "# Command line",
        "",
        "Generated from the Typer app (`pgsched.cli.main.cli`) when these docs are built, so it",
        "lists exactly the commands and options of this version; `pgsched COMMAND --help` prints",
        "the same. `--dsn` overrides `$PGSCHED_DSN`; with neither, commands use the embedded server.",
        "Mistakes print one `error:` line and exit 1 (`pgsched --debug …` shows the traceback).",
        "",
    ]
    for name, command in cli_commands():
        level = "##" if name.count(" ") <= 1 else "###"
        out += [f"{level} `{name}`", ""]
        ctx = typer.Context(command, info_name=name)
        usage = " ".join(command.collect_usage_pieces(ctx))
        out += ["```", f"{name} {usage}".rstrip(), "```", ""]
        if command.help:
            out += [_clean_help(command.help), ""]
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        if params:
            out += ["| argument / option | help | default | required |", "|---|---|---|---|"]
            out += [_param_row(p, ctx) for p in params]
            out.append("")
        subcommands = sorted(getattr(command, "commands", {}))
        if subcommands:
            out += ["Commands: " + ", ".join(f"[`{c}`](#{_anchor(f'{name} {c}')})" for c in subcommands), ""]
    return "\n".join(out)


def _clean_help(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines())


def _anchor(heading: str) -> str:
    """The id MkDocs' toc extension gives a heading like "`pgsched runs list`"."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


# --- the REST API ----------------------------------------------------------------------------

METHOD_ORDER = {"GET": 0, "POST": 1, "PATCH": 2, "PUT": 3, "DELETE": 4}


def api_routes() -> list[dict[str, Any]]:
    """Every documented route: method, path, summary, description, scope, parameters, responses."""
    from litestar.handlers import HTTPRouteHandler

    from pgsched.api.app import create_app
    from pgsched.api.auth import needed_scope
    from pgsched.api.settings import ApiSettings

    # No connection is made: the pool opens in the lifespan, which a build never enters.
    app = create_app(ApiSettings(dsn="postgresql://docs-build.invalid/pgsched"))
    handlers = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if isinstance(handler, HTTPRouteHandler) and handler.operation_id:
                handlers[handler.operation_id] = handler
    document = app.openapi_schema.to_schema()
    routes = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            handler = handlers[operation["operationId"]]
            if handler.opt.get("exclude_from_auth"):
                scope = "none"
            else:
                scope = needed_scope(handler)
                if handler.opt.get("cluster_wide"):
                    scope += ", no tenant"
            description = _rst_to_md(operation.get("description", ""))
            routes.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "tag": (operation.get("tags") or ["other"])[0],
                    "summary": _first_sentence(description),
                    "description": description,
                    "scope": scope,
                    "parameters": operation.get("parameters", []),
                    "responses": operation.get("responses", {}),
                    "body": "requestBody" in operation,
                }
            )
    routes.sort(key=lambda r: (r["path"].split("/")[1], r["path"], METHOD_ORDER.get(r["method"], 9)))
    return routes


def _rst_to_md(text: str) -> str:
    return "\n".join(line.strip() for line in text.replace("``", "`").strip().splitlines())


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    match = re.match(r"(.+?\.)(\s|$)", flat)
    return match[1] if match else flat


def rest_reference() -> str:
    routes = api_routes()
    out = [
        "# REST API",
        "",
        "Generated from the app's OpenAPI document (`pgsched.api.app.create_app(...).openapi_schema`)",
        "and its route handlers when these docs are built. A running API serves the same document at",
        "`/schema/openapi.json` (no key needed). How to use the API — keys, pages, filters, errors,",
        "the Redis tier — is in the [REST API guide](../guides/rest-api.md).",
        "",
        "Scope is the smallest API-key scope a route accepts (`read` < `write` < `admin`); `none`: no",
        "key needed; `no tenant`: the route describes the whole installation and refuses tenant keys.",
        "",
        "| method | path | scope | summary |",
        "|---|---|---|---|",
    ]
    for r in routes:
        out.append(f"| {r['method']} | [`{r['path']}`](#{_route_anchor(r)}) | {r['scope']} | {_cell(r['summary'])} |")
    out.append("")
    for r in routes:
        out += [
            f"## {r['method']} {r['path']} {{ #{_route_anchor(r)} }}",
            "",
            r["description"],
            "",
            f"Scope: {r['scope']}.",
        ]
        if r["body"]:
            out[-1] += " Takes a JSON body."
        out.append("")
        if r["parameters"]:
            out += ["| parameter | in | required | description |", "|---|---|---|---|"]
            for p in r["parameters"]:
                out.append(
                    f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} "
                    f"| {_cell(_rst_to_md(p.get('description', '')))} |"
                )
            out.append("")
        out += ["Responses:", ""]
        out += [f"- `{code}` {_cell(r['responses'][code].get('description', ''))}" for code in sorted(r["responses"])]
        out.append("")
    return "\n".join(out)


def _route_anchor(route: dict[str, Any]) -> str:
    return (route["method"] + route["path"]).lower().replace("/", "-").replace("{", "").replace("}", "").rstrip("-")
