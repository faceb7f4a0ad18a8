"""One fault at a time under load against the real services; after each, nothing lost, nothing
duplicated, nothing stuck, and a quick recovery. See conftest.py for sizes and the report."""

from pathlib import Path

import pytest

from .audit import RESULTS, write_report
from .harness import DISPATCHER_CONCURRENCY, Backends
from .scenarios import SCENARIOS, current_size, run_scenario

pytestmark = pytest.mark.chaos

# The short version in `make test`: one scenario of each kind of fault, within about 3 minutes on 2 cores
# (a process killed: dispatcher and approvals; a server restarted: RabbitMQ and PostgreSQL, immediate;
# messages duplicated and reordered; a connector slower than the lease). `make chaos` (PJ_CHAOS_ALL=1)
# runs every scenario: the gateway killed, PostgreSQL's fast shutdown, approvals killed between a
# compare-and-set and its publish, and the proxies that reset and stall connections take longer.
IN_MAKE_TEST = frozenset({"dispatcher-kill", "approvals-kill", "broker-restart", "postgres-restart-immediate",
                          "queue-dup-reorder", "slow-connector"})


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario(name: str, backends: Backends, tmp_path: Path) -> None:
    scenario = SCENARIOS[name]
    size = current_size()
    result = await run_scenario(scenario, backends, tmp_path, size)
    RESULTS.append(result)
    write_report(RESULTS, size.__dict__)  # after each scenario, so an interrupted run still leaves its figures
    problems = {k: v for k, v in {"lost": result.lost, "duplicated": result.duplicated,
                                  "stuck": result.stuck}.items() if v}
    assert not problems, f"{name}: {problems}; {result.details}"
    # A replay is a step sent again after its receiver did it: only a dispatcher that died between the
    # step's answer and its report may cause one, at most one per order it was running.
    allowed = size.rounds * DISPATCHER_CONCURRENCY if scenario.kills_dispatchers else 0
    assert result.replayed <= allowed, f"{name}: {result.replayed} replays; {result.details}"
    assert result.lifecycles >= size.lifecycles * 0.9, f"{name}: {result.lifecycles} lifecycles: {result.details}"
    if scenario.restart:
        assert result.recovery_s is not None and result.recovery_s < 10, f"{name}: recovery {result.recovery_s}"
