"""ops/grafana/approval-gate.json: valid, over metrics the services expose, with the alert rules' thresholds."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pj_approvals.metrics import ApprovalMetrics
from pj_dispatcher.metrics import DispatcherMetrics
from pj_gateway.state import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "approval-gate.json"
RULES = ROOT / "ops" / "alerts" / "approval-alerts.yml"

# PromQL functions, aggregations and keywords: never metric names, whatever follows them.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "resets", "changes",
    "histogram_quantile", "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max", "vector",
    "scalar", "absent", "absent_over_time", "label_replace", "label_join", "time", "timestamp", "sort",
    "sort_desc", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "quantile_over_time", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "le", "inf", "nan",
}
# Label lists after by/without/on/ignoring/group_*: label names, not metrics (`sum by (route, status)`).
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
# A metric name: an identifier followed by a label matcher, a range or the closing parenthesis of a call.
METRIC = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=[{\[)])")
IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")

# Which alert's threshold each dashboard quantity is drawn against: alert -> the metric the panel plots.
ALERT_PANELS = {
    "ApprovalsBacklogHigh": "approval_pending_gauge",
    "DispatchLatencyHigh": "dispatch_latency_seconds_bucket",
    "ConsumeForDispatchConflictsSpike": "consume_for_dispatch_conflict_total",
    "ApprovalTimeTooHigh": "approval_time_seconds_bucket",
}
EXPECTED_THRESHOLDS = {"ApprovalsBacklogHigh": 10, "DispatchLatencyHigh": 60, "ConsumeForDispatchConflictsSpike": 5}


def _clean(expr: str) -> str:
    return LABEL_LIST.sub("", STRING.sub('""', expr))


def metric_names(expr: str) -> set[str]:
    return {name for name in METRIC.findall(_clean(expr)) if name.lower() not in PROMQL_WORDS}


def bare_identifiers(expr: str) -> set[str]:
    """Every identifier that is not a call, a keyword or inside {...}: what METRIC must not miss."""
    text = re.sub(r"\{[^}]*\}", "", _clean(expr))
    return {m.group(1) for m in IDENTIFIER.finditer(text)
            if m.group(2) is None and m.group(1).lower() not in PROMQL_WORDS}


def aggregated(expr: str) -> bool:
    """True if every metric selector sits inside a sum(...) or max(...)."""
    text = _clean(expr)  # `sum by (le) (x)` -> `sum (x)`
    stack: list[str] = []
    pending = ""
    for token in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*|\(|\)|\{[^}]*\}|\[[^\]]*\]|\S", text):
        value = token.group()
        if value == "(":
            stack.append(pending)
        elif value == ")":
            stack.pop()
        is_word = re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", value) is not None
        if is_word and value.lower() not in PROMQL_WORDS and not {"sum", "max"} & set(stack):
            return False
        pending = value.lower() if is_word else ""
    return True


def targets(panel: dict[str, Any]) -> list[dict[str, Any]]:
    return [target for target in panel.get("targets", []) if "expr" in target]


def squash(expr: str) -> str:
    return re.sub(r"\s+", "", expr)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


@pytest.fixture(scope="module")
def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return found


@pytest.fixture(scope="module")
def exprs(panels: list[dict[str, Any]]) -> list[str]:
    return [target["expr"] for panel in panels for target in targets(panel)]


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """Every sample name the three services' registries expose once each metric has been used."""
    names: set[str] = set()
    for metrics in (ApprovalMetrics(), DispatcherMetrics(), GatewayMetrics()):
        registry: CollectorRegistry = metrics.registry
        for collector in vars(metrics).values():
            if not isinstance(collector, Counter | Gauge | Histogram):
                continue
            labelnames = collector._labelnames
            child = collector.labels(*["x"] * len(labelnames)) if labelnames else collector
            if isinstance(child, Histogram):
                child.observe(1.0)
            elif isinstance(child, Gauge):
                child.set(1)
            else:
                child.inc()
        names |= {sample.name for family in registry.collect() for sample in family.samples}
    return names


@pytest.fixture(scope="module")
def alerts() -> dict[str, str]:
    document = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: str(rule["expr"]) for group in document["groups"] for rule in group["rules"]
            if "alert" in rule}


def test_valid_dashboard_with_panels(dashboard: dict[str, Any], panels: list[dict[str, Any]],
                                     exprs: list[str]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] and dashboard["title"]
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert len(graphs) >= 15 and exprs
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in graphs:
        assert targets(panel), f"{panel['title']} has no query"
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_prometheus_datasource_variable(dashboard: dict[str, Any], panels: list[dict[str, Any]]) -> None:
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_metric_in_an_expr_is_exposed(exprs: list[str], exposed: set[str]) -> None:
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        # Nothing the extraction could miss: a metric name not followed by {, [ or ) would show up here.
        assert bare_identifiers(expr) <= names, f"unrecognised identifiers in {expr!r}"
        unknown = names - exposed
        assert not unknown, f"{expr!r} uses metrics no service exposes: {unknown}"
        used |= names
    # The brief's metrics are all on the dashboard.
    assert {"approval_pending_gauge", "approvals_created_total", "approvals_approved_total",
            "approvals_rejected_total", "approvals_expired_total", "approval_time_seconds_bucket",
            "dispatch_success_total", "dispatch_failure_total", "dispatch_latency_seconds_bucket",
            "consume_for_dispatch_conflict_total", "dispatch_plan_changed_total", "pj_gateway_requests_total",
            "pj_gateway_request_seconds_bucket", "dispatch_steps_total", "dispatch_step_seconds_bucket",
            "dispatch_step_retries_total", "dispatch_orders_in_flight", "dispatch_orders_stale_total"} <= used


def test_every_query_aggregates(exprs: list[str]) -> None:
    for expr in exprs:
        assert aggregated(expr), f"not aggregated with sum/max across processes: {expr!r}"
        if "approval_pending_gauge" in metric_names(expr):
            # Every approvals process reports the same database count: copies, not parts.
            assert squash(expr) == "max(approval_pending_gauge)", expr


def test_thresholds_match_the_alert_rules(alerts: dict[str, str], panels: list[dict[str, Any]]) -> None:
    for alert, metric in ALERT_PANELS.items():
        condition = re.fullmatch(r"(.*)>\s*([0-9.]+)", alerts[alert].strip(), re.S)
        assert condition, f"{alert}: no `> N` threshold in {alerts[alert]!r}"
        quantity, threshold = squash(condition.group(1)), float(condition.group(2))
        if alert in EXPECTED_THRESHOLDS:
            assert threshold == EXPECTED_THRESHOLDS[alert], alert
        drawn = [panel for panel in panels if any(metric in metric_names(t["expr"]) for t in targets(panel))]
        assert drawn, f"no panel plots {metric}"
        # At least one panel plots exactly what the alert evaluates...
        assert any(squash(t["expr"]) == quantity for panel in drawn for t in targets(panel)), (
            f"no panel plots the {alert} quantity {quantity}")
        # ...and every panel over that metric marks the alert's threshold.
        for panel in drawn:
            defaults = panel["fieldConfig"]["defaults"]
            values = [step["value"] for step in defaults["thresholds"]["steps"] if step["value"] is not None]
            assert values == [threshold], f"{panel['title']}: thresholds {values}, {alert} uses {threshold}"
            if panel["type"] == "timeseries":
                assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", panel["title"]


def test_extraction_helpers() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(foo_bucket{route="a", le!="+Inf"}[5m]))) '
            "/ max(bar) + sum without (status) (clamp_min(baz_total, 0)) or vector(0)")
    # `baz_total,` is followed by none of { [ ): METRIC misses it, bare_identifiers (the safety net) does not.
    assert metric_names(expr) == {"foo_bucket", "bar"}
    assert bare_identifiers(expr) == {"foo_bucket", "bar", "baz_total"}
    assert bare_identifiers("sum(foo) > bar") - metric_names("sum(foo) > bar") == {"bar"}
    assert aggregated(expr)
    assert not aggregated("rate(foo_total[5m]) * 60")
    assert not aggregated("sum(rate(foo_total[5m])) / rate(bar_total[5m])")
