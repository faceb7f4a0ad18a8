"""bench/floor.py's bookkeeping without servers: the least costly repeat, the broker's background, options."""

import pytest

from bench import floor


def run_of(ms: float | None, broker: float | None = None) -> dict[str, object]:
    return {"window": {}, "units": {"durable_message": {"ms": ms, "by_process_ms": {"broker": broker},
                                                        "broker_gross_ms": None if broker is None else broker + 0.1}}}


def test_each_unit_takes_its_least_costly_repeat_and_keeps_every_repeat() -> None:
    result = {"parts": {"durable_message": [run_of(0.6, 0.2), run_of(0.4, 0.1), run_of(None), run_of(0.5, 0.3)]}}
    unit = floor.least_costly(result)["durable_message"]
    assert unit["ms"] == 0.4 and unit["by_process_ms"] == {"broker": 0.1}  # that repeat's own figures
    assert unit["ms_each_repeat"] == [0.6, 0.4, None, 0.5]
    assert unit["ms_median"] == 0.5  # of the measured ones


def test_the_floor_with_the_broker_gross_adds_back_what_was_subtracted() -> None:
    result = floor.summarize({"parts": {"durable_message": [run_of(0.4, 0.1)]}}, {"durable_message": 2})
    assert result["floor"]["ms_per_lifecycle"] == pytest.approx(0.8)
    assert result["floor_broker_gross"]["ms_per_lifecycle"] == pytest.approx(1.0)


def test_the_lower_background_rate_is_subtracted_unless_it_exceeds_the_window() -> None:
    window = {"cpu_s": {"broker": 1.0}, "wall_s": 4.0}
    net = floor.broker_net(window, 0.05, after=0.3)  # after: the part's own late work is in it too
    assert net["background_s"] == pytest.approx(0.2) and net["net_s"] == pytest.approx(0.8)
    assert net["background_subtracted"]
    burst = floor.broker_net(window, 0.4, after=0.5)  # someone else's burst just before and after
    assert burst["net_s"] == 1.0 and not burst["background_subtracted"]
    assert floor.broker_net(window, None, after=None)["net_s"] == 1.0  # nothing measured, nothing subtracted


def test_repeats_are_ranked_by_their_gross_cost() -> None:
    lucky = {"ms": 0.3, "by_process_ms": {"broker": 0.0}, "broker_gross_ms": 0.5}  # a large background subtracted
    plain = {"ms": 0.4, "by_process_ms": {"broker": 0.1}, "broker_gross_ms": 0.12}
    result = {"parts": {"rpc_round_trip": [{"units": {"rpc_round_trip": lucky}},
                                           {"units": {"rpc_round_trip": plain}}]}}
    unit = floor.least_costly(result)["rpc_round_trip"]
    assert unit["ms"] == 0.4 and unit["ms_gross"] == pytest.approx(0.42)


def test_per_op_needs_operations_and_a_measurement() -> None:
    assert floor.per_op(0.5, 1000) == pytest.approx(0.5)
    assert floor.per_op(0.5, 0) is None and floor.per_op(None, 10) is None


@pytest.mark.parametrize("argv", [["--pg-url", "postgresql://postgres@db.example.com:5432/pj"],
                                  ["--amqp-url", "amqp://guest:guest@10.0.0.5:5672/"], ["--parts", "http,nonsense"],
                                  ["--seconds", "0"], ["--repeat", "0"]])
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        floor.parse_args(argv)


def window_with(others: float) -> dict[str, object]:
    return {"window": {"machine": {"busy_s": 8.0, "others_busy_s": others}}, "units": {}}


def test_a_run_is_quiet_only_if_other_processes_left_every_window_alone() -> None:
    quiet = floor.machine_quiet({"parts": {"http": [window_with(0.2), window_with(0.4)]}})
    assert quiet["quiet"] and quiet["others_share_max"] == pytest.approx(0.05)
    busy = floor.machine_quiet({"parts": {"http": [window_with(0.2)], "sql_insert": [window_with(4.0)]}})
    assert not busy["quiet"] and busy["others_share_max"] == pytest.approx(0.5)
