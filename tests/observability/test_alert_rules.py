"""The chart's alert rules, as `helm template` renders them, checked and unit-tested by promtool."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.observability.prometheus import alert_queries, chart_rules, promtool, write_chart_rules

UNIT_TESTS = Path(__file__).with_name("alerts.test.yaml")


def test_the_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = write_chart_rules(tmp_path)
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_queries(chart_rules()))} rules found" in result.stdout


def test_each_alert_fires_on_its_series_and_not_on_healthy_ones(tmp_path: Path) -> None:
    write_chart_rules(tmp_path)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    result = promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    firing = {c["alertname"] for c in checks if c["exp_alerts"]}
    quiet = {c["alertname"] for c in checks if not c["exp_alerts"]}
    alerts = {name for name, _ in alert_queries(chart_rules())}
    assert firing == alerts and quiet == alerts


def test_a_broken_rule_fails_promtool(tmp_path: Path) -> None:
    """The checks above can fail: promtool rejects an expression the chart could render by mistake."""
    rules = chart_rules()
    rules["groups"][0]["rules"][0]["expr"] = "sum by (namespace (kubetune_finetunejobs)"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr
