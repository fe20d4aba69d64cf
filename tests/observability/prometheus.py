"""Real Prometheus parts for the tests: Debian's prometheus, promtool and prometheus-pushgateway
(scripts/install-prometheus.sh unpacks them into .venv/bin), and the chart's rules and dashboard
exactly as `helm template` renders them."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.helm.chart import dashboard_configmap, only, render, tool
from tests.operator.conftest import free_port

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "inf", "nan",
}  # fmt: skip


def chart_rules() -> dict[str, Any]:
    """The rule groups of the chart's PrometheusRule, as a Prometheus rule file."""
    rule = only(render("metrics.prometheusRule.enabled=true"), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def write_chart_rules(folder: Path) -> Path:
    path = folder / "rules.yml"
    path.write_text(yaml.safe_dump(chart_rules(), sort_keys=False))
    return path


def chart_dashboard() -> dict[str, Any]:
    return dict(json.loads(dashboard_configmap(render())["data"]["kubetune.json"]))


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    return [(p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


def alert_queries(rules: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["alert"], r["expr"]) for group in rules["groups"] for r in group["rules"]]


def as_prometheus_sees_it(expr: str, range_seconds: int = 300) -> str:
    """A dashboard expression with Grafana's variables filled in, for Prometheus' own API."""
    for variable, value in (
        ("$__rate_interval", "1m"),
        ("$__range", f"{range_seconds}s"),
        ("$namespace", ".*"),
        ("$finetunejob", ".*"),
    ):
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects.

    Strings, label matchers, durations and grouping clauses are removed first; what is left
    that is neither a function call, a keyword nor a number is a metric name. The tests check
    the result against real Prometheus, which parses the same expressions.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b\d+(\.\d+)?(ms|[smhdwy])?\b", " ", text)  # numbers, and offsets' durations
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def family_of(name: str) -> str:
    """The family a sample name belongs to (histogram series carry _bucket/_sum/_count)."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[str]
    config: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query; None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None

    def names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def targets_up(self) -> dict[str, float]:
        return {r["metric"]["job"]: float(r["value"][1]) for r in self.query("up")}


def _start(command: list[str], folder: Path, name: str) -> subprocess.Popen[str]:
    """Start a server whose log goes to ``folder/name.log`` (a pipe nobody reads would fill up)."""
    with (folder / f"{name}.log").open("w") as log:
        return subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, text=True)


def _wait_ready(url: str, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{log.stem} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{log.stem} did not become ready at {url}:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def pushgateway(folder: Path, route_prefix: str = "") -> Iterator[str]:
    """A Pushgateway on loopback; its URL (under ``route_prefix``, e.g. ``/team-a``, if given)."""
    port = free_port()
    command = [tool("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}"]
    if route_prefix:
        command.append(f"--web.route-prefix={route_prefix}")
    process = _start(command, folder, "pushgateway")
    url = f"http://127.0.0.1:{port}{route_prefix}"
    try:
        _wait_ready(f"{url}/-/ready", process, folder / "pushgateway.log")
        yield url
    finally:
        _stop(process)


@contextmanager
def prometheus(folder: Path, scrape_configs: list[dict[str, Any]], rule_files: list[Path]) -> Iterator[Prometheus]:
    """A Prometheus server on loopback scraping every second and evaluating ``rule_files``."""
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(path) for path in rule_files],
                "scrape_configs": scrape_configs,
            }
        )
    )
    check = subprocess.run([tool("promtool"), "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    process = _start(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        folder,
        "prometheus",
    )
    server = Prometheus(f"http://127.0.0.1:{port}", process, config)
    try:
        _wait_ready(f"{server.url}/-/ready", process, folder / "prometheus.log")
        yield server
    finally:
        _stop(process)


def promtool(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, input=stdin, timeout=120)
