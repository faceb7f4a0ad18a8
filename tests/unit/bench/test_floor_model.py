"""The floor's arithmetic: parts x counts, the rate it allows, the targets, the counts file."""

import json
from pathlib import Path

import pytest

from bench import floor_model


def test_floor_is_the_sum_of_each_unit_cost_times_its_count() -> None:
    floor = floor_model.lifecycle_floor({"http_request": 0.1, "rpc_round_trip": 0.5, "sql_update": 0.2},
                                        {"http_request": 3, "rpc_round_trip": 4, "sql_update": 5.5})
    assert floor["by_unit_ms"] == pytest.approx({"http_request": 0.3, "rpc_round_trip": 2.0, "sql_update": 1.1})
    assert floor["ms_per_lifecycle"] == pytest.approx(3.4)
    assert floor["max_lifecycles_per_s"] == pytest.approx(2000 / 3.4)
    assert floor["missing"] == []


def test_a_counted_unit_without_a_measurement_is_missing_not_zero() -> None:
    floor = floor_model.lifecycle_floor({"http_request": 0.1, "sql_select": None}, {
        "http_request": 2, "sql_select": 2, "event_publish": 4, "durable_message": 0})
    assert floor["ms_per_lifecycle"] == pytest.approx(0.2)
    assert sorted(floor["missing"]) == ["event_publish", "sql_select"]  # a count of 0 needs no measurement


def test_max_rate_is_the_cores_milliseconds_over_the_floor() -> None:
    assert floor_model.max_rate(3.3) == pytest.approx(606.06, abs=0.01)  # ARCHITECTURE.md's ~600/s
    assert floor_model.max_rate(4.0, cores=4) == pytest.approx(1000)
    assert floor_model.max_rate(0) is None


def test_the_floor_against_the_issue_targets() -> None:
    ok = floor_model.against_targets(3.0)
    assert ok["max_rate_per_s"] == pytest.approx(666.67, abs=0.01)
    assert ok["max_rate_over_target"] == pytest.approx(666.67 / 420, abs=1e-3)
    assert ok["ms_left_for_the_code"] == pytest.approx(1.2)
    assert ok["cpu_ms_at_rate_target"] == pytest.approx(2000 / 420)
    over = floor_model.against_targets(5.0)
    assert over["max_rate_per_s"] == pytest.approx(400) and over["max_rate_over_target"] < 1
    assert over["ms_left_for_the_code"] == pytest.approx(-0.8)


def test_default_counts_name_only_units_the_floor_measures() -> None:
    assert set(floor_model.LIFECYCLE_COUNTS) <= set(floor_model.UNITS)
    assert floor_model.LIFECYCLE_COUNTS["http_request"] == 3 and floor_model.LIFECYCLE_COUNTS["rpc_round_trip"] == 4


def test_counts_file_replaces_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"http_request": 3, "rpc_round_trip": 2.5}))
    assert floor_model.load_counts(path) == {"http_request": 3.0, "rpc_round_trip": 2.5}


@pytest.mark.parametrize("data", [[1, 2], {"http_requests": 3}, {"sql_insert": -1}, {"sql_insert": True},
                                  {"sql_insert": "2"}, {"sql_insert": float("nan")}])
def test_bad_counts_are_refused(data: object) -> None:
    with pytest.raises(ValueError):
        floor_model.check_counts(data)


def test_the_architecture_budget_counts_at_its_own_unit_costs_give_its_budget() -> None:
    # ARCHITECTURE.md: HTTP 100 µs, RPC 450 µs, durable message 250 µs, 3 transactions 1,140 µs: ~3 ms
    # of the ~3.3 ms it states (the rest is what it does not itemise).
    costs = {"http_request": 0.1, "rpc_round_trip": 0.45, "durable_message": 0.25, "sql_insert": 0.38,
             "sql_update": 0.38}
    floor = floor_model.lifecycle_floor(costs, floor_model.OTHER_COUNTS["architecture_budget"])
    assert floor["ms_per_lifecycle"] == pytest.approx(3.04)
    assert floor["missing"] == []


def test_the_floor_by_process_divides_the_floor_among_the_systems_processes() -> None:
    by_process = {"http_request": {"server": 0.2}, "rpc_round_trip": {"caller": 0.3, "responder": 0.3, "broker": 0.2},
                  "durable_message": {"publisher": 0.1, "consumer": 0.1, "broker": 0.2},
                  "sql_update": {"client": 0.15, "backends": 0.1}}
    counts = {"http_request": 3, "rpc_round_trip": 4, "durable_message": 2, "sql_update": 5}
    split = floor_model.floor_by_process(by_process, counts)
    assert split["gateway"] == pytest.approx(3 * 0.2 + 3 * 0.3)  # 3 of the 4 RPC calls
    assert split["dispatcher"] == pytest.approx(0.3 + 0.1 + 0.1)  # the 4th call, the result out, the order in
    assert split["approvals"] == pytest.approx(4 * 0.3 + 0.1 + 0.1 + 5 * 0.15)
    assert split["rabbitmq"] == pytest.approx(4 * 0.2 + 2 * 0.2) and split["postgresql"] == pytest.approx(0.5)
    totals = {unit: sum(ms for ms in roles.values()) for unit, roles in by_process.items()}
    assert sum(split.values()) == pytest.approx(floor_model.lifecycle_floor(totals, counts)["ms_per_lifecycle"])


def test_every_role_the_floor_measures_has_a_process() -> None:
    roles = {("http_request", "server"), ("http_client_call", "client"), ("rpc_round_trip", "caller"),
             ("rpc_round_trip", "responder"), ("rpc_round_trip", "broker"), ("durable_message", "publisher"),
             ("durable_message", "consumer"), ("durable_message", "broker"), ("event_publish", "publisher"),
             ("event_publish", "broker")} | {(f"sql_{k}", r) for k in ("insert", "update", "select")
                                              for r in ("client", "backends")}
    assert set(floor_model.PROCESS_SPLIT) == roles
    assert all(sum(shares.values()) == pytest.approx(1.0) for shares in floor_model.PROCESS_SPLIT.values())
