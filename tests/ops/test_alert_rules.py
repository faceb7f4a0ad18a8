"""ops/alerts/approval-alerts.yml: the runbook's seven alerts, over metrics the approvals service exposes,
each one unit-tested with `promtool test rules` (tests/ops/alerts_test.yml), firing and quiet."""

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from pj_approvals.metrics import ApprovalMetrics
from pj_notifier.metrics import NotifierMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "alerts" / "approval-alerts.yml"
PROMTOOL_TESTS = Path(__file__).with_name("alerts_test.yml")
ENSURE_PROMTOOL = ROOT / "ops" / "dev" / "ensure-promtool.sh"

EXPECTED = {
    "ApprovalsBacklogHigh": "page",
    "DispatchFailuresSpike": "page",
    "ConsumeForDispatchConflictsSpike": "warn",
    "ApprovalTimeTooHigh": "page",
    "DispatchLatencyHigh": "warn",
    "NoApprovalsProcessed": "warn",
    "DeadLettersPresent": "warn",
    "DispatchOutboxStuck": "page",
    "NotificationsFailing": "warn",
}

# Which metrics each alert is about (a rule over the wrong metric fails here even if the name exists).
EXPECTED_METRICS = {
    "ApprovalsBacklogHigh": {"approval_pending_gauge"},
    "DispatchFailuresSpike": {"dispatch_failure_total"},
    "ConsumeForDispatchConflictsSpike": {"consume_for_dispatch_conflict_total"},
    "ApprovalTimeTooHigh": {"approval_time_seconds_bucket"},
    "DispatchLatencyHigh": {"dispatch_latency_seconds_bucket"},
    "NoApprovalsProcessed": {"approvals_created_total", "approvals_approved_total",
                             "approvals_rejected_total"},
    "DeadLettersPresent": {"pj_dead_letters"},
    "DispatchOutboxStuck": {"dispatch_outbox_oldest_seconds"},
    "NotificationsFailing": {"notifier_notifications_failed_total"},
}

PROMQL_KEYWORDS = {"by", "without", "and", "or", "unless", "on", "ignoring", "group_left", "group_right",
                   "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords or labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)                     # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                              # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                             # range durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


@pytest.fixture(scope="module")
def rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    found: dict[str, dict[str, Any]] = {}
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] not in found, f"duplicate alert {rule['alert']}"
                found[rule["alert"]] = rule
    return found


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """Every sample name the approvals service's /metrics text contains once each metric has data."""
    metrics = ApprovalMetrics()
    for collector in vars(metrics).values():
        if not isinstance(collector, Counter | Gauge | Histogram):
            continue
        labels = ["x"] * len(getattr(collector, "_labelnames", ()))
        if isinstance(collector, Histogram):
            (collector.labels(*labels) if labels else collector).observe(1.0)
        else:
            (collector.labels(*labels) if labels else collector).inc()
    text = metrics.render().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples
            } | notifier_samples()


def notifier_samples() -> set[str]:
    """The sample names a notifier's own /metrics serves once each metric has data."""
    metrics = NotifierMetrics()
    for collector in vars(metrics).values():
        if isinstance(collector, Counter | Gauge):
            labels = ["x"] * len(getattr(collector, "_labelnames", ()))
            (collector.labels(*labels) if labels else collector).inc()
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def test_the_seven_alerts_with_their_severities(rules: dict[str, dict[str, Any]]) -> None:
    assert set(rules) == set(EXPECTED)
    for name, severity in EXPECTED.items():
        assert rules[name]["labels"]["severity"] == severity, name


def test_annotations(rules: dict[str, dict[str, Any]]) -> None:
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), name
        assert "docs/runbook.md" in annotations["runbook_url"], name


def test_conditions(rules: dict[str, dict[str, Any]]) -> None:
    squash = {name: re.sub(r"\s+", "", str(rule["expr"])) for name, rule in rules.items()}
    assert squash["ApprovalsBacklogHigh"].endswith(">10") and rules["ApprovalsBacklogHigh"]["for"] == "10m"
    assert squash["DispatchFailuresSpike"] == "sum(increase(dispatch_failure_total[5m]))>5"
    assert squash["ConsumeForDispatchConflictsSpike"] == (
        "sum(increase(consume_for_dispatch_conflict_total[5m]))>5")
    assert squash["ApprovalTimeTooHigh"] == (
        "histogram_quantile(0.95,sumby(le)(rate(approval_time_seconds_bucket[10m])))>600")
    latency = r"histogram_quantile\(0\.95,sumby\(le\)\(rate\(dispatch_latency_seconds_bucket\[\w+\]\)\)\)>60"
    assert re.fullmatch(latency, squash["DispatchLatencyHigh"])
    no_decisions = squash["NoApprovalsProcessed"]
    assert "sum(increase(approvals_created_total[24h]))>0" in no_decisions
    assert "approvals_approved_total[24h]" in no_decisions and "approvals_rejected_total[24h]" in no_decisions
    assert no_decisions.endswith("==0")
    assert squash["DeadLettersPresent"] == "max(pj_dead_letters)>0" and rules["DeadLettersPresent"]["for"] == "5m"
    assert squash["DispatchOutboxStuck"] == "max(dispatch_outbox_oldest_seconds)>60"
    assert rules["DispatchOutboxStuck"]["for"] == "2m"
    assert squash["NotificationsFailing"] == "sum(increase(notifier_notifications_failed_total[10m]))>5"
    assert rules["NotificationsFailing"]["for"] == "10m"


def test_every_referenced_metric_is_exposed(rules: dict[str, dict[str, Any]], exposed: set[str]) -> None:
    for name, rule in rules.items():
        referenced = metric_names(str(rule["expr"]))
        assert referenced == EXPECTED_METRICS[name], f"{name} selects {referenced}"
        unknown = referenced - exposed
        assert not unknown, f"{name} uses metrics the approvals service does not expose: {unknown}"


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (le) (rate(foo_bucket{job="a", le!="+Inf"}[10m]))) > 600 '
            "and on (instance) (bar_total or vector(0)) == 0")
    assert metric_names(expr) == {"foo_bucket", "bar_total"}


# --- promtool: the rules load, and each alert fires (and stays quiet) as its unit tests say ---------


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool's path; installed with apt (ops/dev/ensure-promtool.sh) when missing and we are root."""
    path = shutil.which("promtool")
    if path is None and os.geteuid() == 0:
        subprocess.run(["bash", str(ENSURE_PROMTOOL)], check=False, timeout=900)
        path = shutil.which("promtool")
        # The package ships a Prometheus server; installing promtool must not have started it.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", 9090)) != 0, "installing promtool started a server on 9090"
    if path is None:
        reason = ("promtool is not installed (Debian package prometheus; as root: "
                  "bash ops/dev/ensure-promtool.sh)")
        if os.environ.get("CI"):
            pytest.fail(reason + " and CI is set: the alert rules must be tested")
        pytest.skip(reason)
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED)} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_cover_every_alert_firing_and_quiet(rules: dict[str, dict[str, Any]]) -> None:
    document = yaml.safe_load(PROMTOOL_TESTS.read_text())
    assert [(PROMTOOL_TESTS.parent / f).resolve() for f in document["rule_files"]] == [RULES.resolve()]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in document["tests"]:
        for check in case.get("alert_rule_test", []):
            assert check["alertname"] in rules, f"a test of an alert that does not exist: {check['alertname']}"
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert not set(rules) - firing, f"alerts never tested firing: {sorted(set(rules) - firing)}"
    assert not set(rules) - quiet, f"alerts never tested quiet: {sorted(set(rules) - quiet)}"


def test_promtool_checks_the_prometheus_config(promtool: str, tmp_path: Path) -> None:
    """prometheus.yml loads, rule file included; the metrics token's placeholder path is given a file."""
    config = ROOT / "ops" / "prometheus" / "prometheus.yml"
    token = tmp_path / "pj-metrics-token"
    token.write_text("scrape-token\n")
    (tmp_path / "ops" / "prometheus").mkdir(parents=True)
    (tmp_path / "ops" / "alerts").mkdir()
    (tmp_path / "ops" / "alerts" / RULES.name).write_text(RULES.read_text())
    text = config.read_text()
    assert "/etc/prometheus/secrets/pj-metrics-token" in text
    copy = tmp_path / "ops" / "prometheus" / "prometheus.yml"
    copy.write_text(text.replace("/etc/prometheus/secrets/pj-metrics-token", str(token)))
    result = run_promtool(promtool, "check", "config", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED)} rules found" in result.stdout
