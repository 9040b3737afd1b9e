"""deploy/grafana/pgsched.json: a Grafana dashboard whose every PromQL expression parses
(promtool checks each as a recording rule) and reads only metrics a real /metrics serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.support.api import Api
from tests.support.prometheus import DEPLOY, metric_names_in, promtool, scraped_metric_names

DASHBOARD = DEPLOY / "grafana" / "pgsched.json"
# Grafana's variables, as the values Prometheus receives: the queue selector's "All" is ".*".
GRAFANA_VARIABLES = {"$queue": ".*", "$__rate_interval": "5m", "$__interval": "1m"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def expressions() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel["targets"]]


def as_prometheus_receives(expression: str) -> str:
    return re.sub(r"\$\w+", lambda m: GRAFANA_VARIABLES[m[0]], expression)


def test_the_dashboard_is_a_grafana_dashboard_with_a_datasource_and_a_queue_selector():
    board = dashboard()
    assert board["uid"] == "pgsched" and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["queue"]["type"] == "query" and variables["queue"]["allValue"] == ".*"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in board["panels"]:
        assert panel["type"] in {"timeseries", "stat"} and panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_every_expression_of_the_dashboard_parses(tmp_path: Path):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expression_{i}", "expr": as_prometheus_receives(expr)}
                    for i, (_, expr) in enumerate(expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions())} rules found" in result.stdout


def test_every_metric_the_dashboard_reads_is_served_by_metrics(api: Api, conn: psycopg.Connection, dsn: str):
    served = scraped_metric_names(api, conn, dsn)
    variable = dashboard()["templating"]["list"][1]["definition"]
    for title, expr in [*expressions(), ("the queue selector", variable)]:
        missing = metric_names_in(expr) - served
        assert not missing, f"{title!r} reads {missing}, which /metrics does not serve"
