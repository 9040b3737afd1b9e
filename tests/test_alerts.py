"""deploy/prometheus/alerts.yml: valid rules (`promtool check rules`), every alert unit-tested on
synthetic series (`promtool test rules`), each with a summary and a runbook in the docs, and
every metric they read served by a real /metrics, so the rules cannot drift from the exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.support.api import Api
from tests.support.prometheus import DEPLOY, metric_names_in, promtool, scraped_metric_names

RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
RUNBOOKS = Path(__file__).resolve().parents[1] / "docs" / "operations" / "alerts.md"


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_where_it_fires():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]}
    names = {rule["alert"] for rule in alerts()}
    assert names == fired, "each alert needs a case where it fires"
    assert names == quiet, "each alert needs a case where it does not"


def test_every_alert_has_a_summary_and_a_runbook_section_in_the_docs():
    runbooks = RUNBOOKS.read_text()
    for rule in alerts():
        name = rule["alert"]
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook"] == f"docs/operations/alerts.md#{name.lower()}"
        assert f"\n## {name}\n" in runbooks, f"no runbook section for {name}"


def test_every_metric_the_alerts_read_is_served_by_metrics(api: Api, conn: psycopg.Connection, dsn: str):
    served = scraped_metric_names(api, conn, dsn)
    for rule in alerts():
        missing = metric_names_in(rule["expr"]) - served
        assert not missing, f"{rule['alert']} reads {missing}, which /metrics does not serve"
