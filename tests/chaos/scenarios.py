"""The faults, one per scenario, and the run of one scenario: start the system, drive lifecycles,
inject the fault under load, let the system settle, audit."""

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.tcp_proxy import TcpProxy

from .audit import ScenarioResult, audit
from .harness import ACTION, APPROVALS, DISPATCHERS, LEASE_S, SWEEP_S, Backends, ChaosSystem, QueueMangler, topology
from .load import Load, wait_completed, wait_started_after


@dataclass
class Fault:
    """When the fault began, when it ended (the process killed, the server back), and what it did."""

    at: float = 0.0
    restored: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Size:
    lifecycles: int
    rate: float  # lifecycles started per second
    rounds: int  # how often a repeatable fault (a kill) is injected
    window_s: float  # how long a lasting fault (mangling, a slow receiver) lasts
    lifecycle_timeout_s: float


SHORT = Size(lifecycles=50, rate=10, rounds=1, window_s=3, lifecycle_timeout_s=120)


def full(lifecycles: int) -> Size:
    return Size(lifecycles=lifecycles, rate=40, rounds=3, window_s=10, lifecycle_timeout_s=120)


def current_size() -> Size:
    """PJ_CHAOS_LIFECYCLES (make chaos: 1000) above the short version's 50 selects the full size."""
    lifecycles = int(os.environ.get("PJ_CHAOS_LIFECYCLES", "0") or 0)
    return full(lifecycles) if lifecycles > SHORT.lifecycles else SHORT


def run_all() -> bool:
    """Every scenario (make chaos: PJ_CHAOS_ALL=1), not only those in `make test`."""
    return os.environ.get("PJ_CHAOS_ALL") == "1"


Inject = Callable[[ChaosSystem, Load, Size], Awaitable[Fault]]


async def _in_flight_at_receiver(cs: ChaosSystem, timeout: float = 5.0) -> int:
    """Until some delivery is being worked on at the receiver (so a kill lands mid-step)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = sum(1 for d in cs.receiver.snapshot()[-50:] if d.finished == 0.0)
        if busy:
            return busy
        await asyncio.sleep(0.01)
    return 0


async def kill_dispatcher(cs: ChaosSystem, load: Load, size: Size) -> Fault:
    """1. kill -9 of a dispatcher while it is inside a step (the receiver slowed to 0.3 s a delivery)."""
    fault = Fault(info={"kills": []})
    for round_ in range(size.rounds):
        victim = DISPATCHERS[round_ % 2]
        cs.receiver.delay_s = 0.3
        await asyncio.sleep(0.5)
        busy = await _in_flight_at_receiver(cs)
        now = time.time()
        cs.kill(victim)
        fault.at = fault.at or now
        fault.restored = fault.restored or now
        cs.receiver.delay_s = 0.0
        fault.info["kills"].append({"victim": victim, "steps_in_flight_at_receiver": busy})
        await asyncio.sleep(1.0)
        cs.start_service(victim)  # as a supervisor would
        await asyncio.sleep(3.0)
    return fault


async def kill_approvals(cs: ChaosSystem, load: Load, size: Size) -> Fault:
    """2a. kill -9 of an approvals instance under load; restarted a second later."""
    fault = Fault(info={"kills": []})
    for round_ in range(size.rounds):
        victim = APPROVALS[round_ % 2]
        now = time.time()
        cs.kill(victim)
        fault.at = fault.at or now
        fault.restored = fault.restored or now
        fault.info["kills"].append(victim)
        await asyncio.sleep(1.0)
        cs.start_service(victim)
        await asyncio.sleep(3.0)
    return fault


async def kill_approvals_between_cas_and_publish(cs: ChaosSystem, load: Load, size: Size) -> Fault:
    """2b. An approvals instance killed after its compare-and-set committed but before its publish went
    out: its broker link is stalled (commands it holds commit in PostgreSQL, then their publishes and
    replies hang), then it gets kill -9."""
    fault = Fault(info={"kills": []})
    for round_ in range(size.rounds):
        victim = APPROVALS[round_ % 2]
        proxy = cs.broker_proxies[victim]
        before = await _dispatching(cs)
        proxy.stall()
        await asyncio.sleep(0.7)
        now = time.time()
        cs.kill(victim)
        held = await _dispatching(cs)
        proxy.resume()
        proxy.drop()
        fault.at = fault.at or now
        fault.restored = fault.restored or now
        fault.info["kills"].append({"victim": victim, "dispatching_before": before, "dispatching_at_kill": held})
        await asyncio.sleep(1.0)
        cs.start_service(victim)
        await asyncio.sleep(3.0)
    return fault


async def _dispatching(cs: ChaosSystem) -> int:
    return sum(1 for r in await cs.approvals() if r["approval_status"] == "dispatching")


async def kill_gateway(cs: ChaosSystem, load: Load, size: Size) -> Fault:
    """3. kill -9 of the gateway with requests in flight; started again at once (clients retry)."""
    fault = Fault(info={"kills": 0})
    for _ in range(size.rounds):
        now = time.time()
        cs.kill("gateway")
        fault.at = fault.at or now
        fault.restored = fault.restored or now
        fault.info["kills"] += 1
        cs.start_service("gateway")
        await asyncio.sleep(4.0)
    return fault


async def restart_broker(cs: ChaosSystem, load: Load, size: Size) -> Fault:
    """4. RabbitMQ stopped (`rabbitmqctl stop`) and started again under load."""
    fault = Fault(at=time.time())
    await asyncio.to_thread(cs.backends.mq.stop)
    stopped = time.time()
    await asyncio.sleep(1.0)
    took = await asyncio.to_thread(cs.backends.mq.start)
    fault.restored = time.time()
    fault.info = {"stop_s": round(stopped - fault.at, 2), "start_s": round(took, 2),
                  "down_s": round(fault.restored - fault.at, 2)}
    return fault


def restart_postgres(mode: str) -> Inject:
    async def inject(cs: ChaosSystem, load: Load, size: Size) -> Fault:
        """5. PostgreSQL restarted under load (`pg_ctl restart -m fast|immediate`)."""
        fault = Fault(at=time.time())
        await asyncio.to_thread(cs.backends.pg.stop, mode)
        await asyncio.to_thread(cs.backends.pg.start)
        fault.restored = time.time()
        fault.info = {"mode": mode, "down_s": round(fault.restored - fault.at, 2)}
        return fault
    return inject


async def _reset_then_stall(proxies: dict[str, TcpProxy], size: Size) -> Fault:
    """Every connection through `proxies` reset, then all of them stalled for 3 s, `size.rounds` times."""
    fault = Fault(at=time.time(), info={"dropped": 0})
    for _ in range(size.rounds):
        fault.info["dropped"] += sum(p.drop() for p in proxies.values())
        await asyncio.sleep(1.5)
        for p in proxies.values():
            p.stall()
        await asyncio.sleep(3.0)
        for p in proxies.values():
            p.resume()
        fault.restored = time.time()
        await asyncio.sleep(3.0)
    return fault


async def flaky_broker_links(cs: ChaosSystem, load: Load, size: Size) -> Fault:
    """6a. Every service's broker connection reset, then all of them stalled for 3 s."""
    return await _reset_then_stall(cs.broker_proxies, size)


async def flaky_database_links(cs: ChaosSystem, load: Load, size: Size) -> Fault:
    """6b. Every approvals-to-PostgreSQL connection reset, then all of them stalled for 3 s."""
    return await _reset_then_stall(cs.db_proxies, size)


async def mangle_queues(cs: ChaosSystem, load: Load, size: Size) -> Fault:
    """7. Messages of the dispatch and results queues duplicated and reordered for a while."""
    topo = topology(cs)
    mangler = QueueMangler(cs.backends.mq.url, [topo.dispatch, topo.results])
    fault = Fault(at=time.time())
    fault.restored = fault.at  # the system is expected to work on throughout
    mangler.start()
    await asyncio.sleep(size.window_s)
    await mangler.stop()
    fault.info = {"messages_duplicated": mangler.mangled, "window_s": size.window_s}
    return fault


async def slow_connector(cs: ChaosSystem, load: Load, size: Size) -> Fault:
    """8. Every 5th delivery takes longer than the dispatch lease, for a while."""
    fault = Fault(at=time.time())
    fault.restored = fault.at
    cs.receiver.slow_every, cs.receiver.slow_delay_s = 5, LEASE_S + 3
    await asyncio.sleep(size.window_s)
    cs.receiver.slow_every = 0
    fault.info = {"slow_delay_s": LEASE_S + 3, "lease_s": LEASE_S, "every": 5, "window_s": size.window_s}
    return fault


@dataclass(frozen=True)
class Scenario:
    name: str
    inject: Inject
    proxied: bool = False
    restart: bool = False  # a broker or database restart: recovery must be under 10 s
    # Dispatchers are killed: a step answered just before the kill and not yet reported is sent again
    # (a replay the receiver's Idempotency-Key absorbs). No other fault may cause a replay.
    kills_dispatchers: bool = False


SCENARIOS = {s.name: s for s in (
    Scenario("dispatcher-kill", kill_dispatcher, kills_dispatchers=True),
    Scenario("gateway-kill", kill_gateway),
    Scenario("queue-dup-reorder", mangle_queues),
    Scenario("broker-restart", restart_broker, restart=True),
    Scenario("postgres-restart-fast", restart_postgres("fast"), restart=True),
    Scenario("postgres-restart-immediate", restart_postgres("immediate"), restart=True),
    Scenario("approvals-kill", kill_approvals),
    Scenario("approvals-kill-cas-publish", kill_approvals_between_cas_and_publish, proxied=True),
    Scenario("slow-connector", slow_connector),
    Scenario("proxy-broker", flaky_broker_links, proxied=True),
    Scenario("proxy-postgres", flaky_database_links, proxied=True),
)}


async def run_scenario(scenario: Scenario, backends: Backends, logdir: Path, size: Size) -> ScenarioResult:
    cs = ChaosSystem(backends, logdir, proxied=scenario.proxied)
    try:
        await cs.start()
        load = Load(cs.sys.base_url, cs.identity, ACTION, target=size.lifecycles, rate=size.rate,
                    lifecycle_timeout_s=size.lifecycle_timeout_s)
        load.extend = True  # the load goes on through the fault and for a while after it
        task = asyncio.create_task(load.run())
        await wait_completed(load, max(5, size.lifecycles // 4), timeout=300)
        fault = await scenario.inject(cs, load, size)
        await wait_started_after(load, fault.restored, count=max(10, size.lifecycles // 4), timeout=120)
        load.extend = False
        await asyncio.wait_for(task, timeout=size.lifecycles * 0.5 + size.lifecycle_timeout_s + 30)
        await cs.settle(timeout=3 * (LEASE_S + SWEEP_S) + 10)
        rows = await cs.approvals()
        return audit(scenario.name, load.records, rows, cs.receiver, fault_at=fault.at, restored_at=fault.restored,
                     fault=fault.info)
    finally:
        await cs.stop()
