"""deploy/observability: the alert rules pass `promtool check rules` and their unit tests (`promtool test
rules`), every alert has one, and every metric the dashboard and the rules query is exported by a live
`tokendealer serve`."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from tokendealer import db
from tokendealer.http import as_oauth_error
from tokendealer.metrics import DATABASE_ERRORS

from .conftest import AUDIENCE, debian_tool, run_cli

HERE = Path(__file__).resolve().parent.parent / "deploy" / "observability"
RULES = HERE / "alerts.yml"
RULE_TESTS = HERE / "alerts_test.yml"
DASHBOARD = HERE / "tokendealer-dashboard.json"
# PromQL words that are neither metrics nor followed by "(" (aggregations and functions are).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "inf", "nan"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return debian_tool("promtool", "prometheus")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group(0).lower() in KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {f"{p['title']} [{t['refId']}]": t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])}


def test_metric_names_are_read_from_promql():
    assert metric_names('sum by (client_id) (rate(tokendealer_tokens_refused_total{error="x"}[5m])) > 1') == {
        "tokendealer_tokens_refused_total"
    }
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(a_bucket[$__rate_interval]))) > 1e3 or b == 0") == {"a_bucket", "b"}


def test_rules_pass_promtool_check(promtool):
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    print(result.stdout, result.stderr)
    assert result.returncode == 0 and "SUCCESS: 7 rules found" in result.stdout


def test_rules_pass_their_unit_tests(promtool):
    result = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60, cwd=HERE)
    print(result.stdout, result.stderr)
    assert result.returncode == 0 and "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_unit_test():
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert set(rule_expressions()) == tested


def test_dashboard_and_rules_query_only_metrics_a_live_server_exports(live_factory):
    server = live_factory(TOKENDEALER_AUTH_FAILURE_LIMIT="2/minute")
    created = run_cli("client", "create", "svc", "--scope", "read", "--audience", AUDIENCE, env=server.env)
    secret = json.loads(created.stdout)["client_secret"]
    token_url = server.url + "/oauth/token"
    form = {"grant_type": "client_credentials"}
    assert requests.post(token_url, data=form, auth=("svc", secret), timeout=10).status_code == 200
    statuses = [requests.post(token_url, data=form, auth=("svc", "wrong"), timeout=10).status_code for _ in range(6)]
    assert 401 in statuses and 429 in statuses  # refusals, then rate-limit refusals
    requests.get(server.url + "/readyz", timeout=10)
    expressions = {**rule_expressions(), **dashboard_expressions()}
    deadline = time.monotonic() + 10  # each worker publishes its request counts for the others' scrapes twice a second
    while True:
        scrape = requests.get(server.url + "/metrics", timeout=10).text
        families = list(text_string_to_metric_families(scrape))
        exported = {f.name for f in families} | {s.name for f in families for s in f.samples}
        missing = {title: sorted(metric_names(expr) - exported) for title, expr in expressions.items() if metric_names(expr) - exported}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, f"queried but not exported: {missing}"
    samples = {s.name: s for f in families for s in f.samples}
    for title, expr in expressions.items():  # what each query reads in this scrape (Grafana is not in Debian)
        print(f"{title}: {expr}")
        for name in sorted(metric_names(expr)):
            values = [f"{s.labels} {s.value}" for f in families for s in f.samples if s.name == name][:4]
            print(f"    {name}: {values or samples.get(name)}")
    ready = [s.value for f in families for s in f.samples if s.name == "tokendealer_ready"]
    assert ready == [1.0]


def test_a_database_error_answered_503_is_counted(services):
    before = DATABASE_ERRORS._value.get()
    assert as_oauth_error(OperationalError("SELECT 1", {}, Exception("down"))).status == 503
    assert DATABASE_ERRORS._value.get() == before + 1
    assert f"tokendealer_database_errors_total {before + 1}" in services.metrics.render().decode()


def test_readiness_gauge_follows_the_database(services, monkeypatch):
    assert "tokendealer_ready 1.0" in services.metrics.render().decode()

    def down(_engine):
        raise OperationalError("SELECT 1", {}, Exception("down"))

    monkeypatch.setattr(db, "ping", down)
    assert "tokendealer_ready 0.0" in services.metrics.render().decode()
