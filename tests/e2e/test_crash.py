"""A dispatcher killed mid-plan loses nothing and repeats nothing: its claim is held by the killed
process, so the broker's redelivery of its order to the other dispatcher is stale and dropped; once
the claim's lease runs out the reaper re-issues the dispatch (a new claim, attempt 2), and the
dispatcher that confirms it asks for the step checkpoints and resumes after the last finished step."""

import asyncio
import signal
import time
import uuid

import aio_pika
import httpx

from pj_common.messages import DispatchOrder, PlanStep
from pj_common.topology import Topology
from tests.support.system import System
from tests.support.webhook_sink import SinkState

from .conftest import approve, headers, request_approval


def delivered_keys(sink: SinkState, approval_id: str) -> list[str]:
    """The Idempotency-Key of every delivery the receiver accepted for this approval."""
    return [d.headers["Idempotency-Key"] for d in sink.deliveries if d.body["approvalId"] == approval_id]


async def test_killed_dispatcher_order_resumes_on_the_other(client: httpx.AsyncClient, system: System,
                                                            sink: SinkState) -> None:
    t = f"crash-{uuid.uuid4().hex[:6]}"
    aid = await request_approval(client, t, "test.three")
    await approve(client, t, aid)

    sink.delay_s = 1.0  # every delivery takes a second: time to kill the worker inside step two
    dispatch = asyncio.create_task(client.post(f"/api/approvals/{aid}/dispatch",
                                               headers=headers("admin", "alice", t), json={}))
    try:
        deadline = time.monotonic() + 15
        victim = None
        while time.monotonic() < deadline and victim is None:
            await asyncio.sleep(0.05)
            if f"{aid}:first" in delivered_keys(sink, aid):
                victim = next((name for name in ("dispatcher-1", "dispatcher-2")
                               if '"stepId": "second"' in system.log(name) and aid in system.log(name)), None)
        assert victim is not None, "step two never started"
        await asyncio.sleep(0.3)  # step one's checkpoint reaches approvals; step two is at the receiver
        system.stop(victim, signal.SIGKILL)
        response = await asyncio.wait_for(dispatch, 30)
    finally:
        sink.delay_s = 0.0
        if "dispatcher-1" not in system.processes:
            system.start("dispatcher-1", "pj_dispatcher")
        if "dispatcher-2" not in system.processes:
            system.start("dispatcher-2", "pj_dispatcher")
    assert response.status_code in (200, 202), response.text
    for _ in range(300):  # the lease (PJ_DISPATCH_LEASE_S, 10 s here) runs out, then the reaper re-issues it
        record = (await client.get(f"/api/approvals/{aid}", headers=headers(tenant=t))).json()["data"]
        if record["approval_status"] != "dispatching":
            break
        await asyncio.sleep(0.1)
    assert record["approval_status"] == "dispatched"
    assert [s["status"] for s in record["dispatch_result"]] == ["succeeded"] * 3
    delivered = delivered_keys(sink, aid)
    assert delivered.count(f"{aid}:first") == 1  # finished before the crash: never run again
    assert delivered.count(f"{aid}:third") == 1
    # Step two was in flight when its worker died; it may reach the receiver twice, always with the
    # same Idempotency-Key, which is how the receiver knows it is one effect.
    assert 1 <= delivered.count(f"{aid}:second") <= 2
    # Resumed once, by whichever dispatcher confirmed the re-issued claim (the survivor, or the victim
    # restarted with a new holder id).
    resumed = [line for name in ("dispatcher-1", "dispatcher-2") for line in system.log(name).splitlines()
               if "dispatcher.resumed" in line and aid in line]
    assert len(resumed) == 1 and '"done": ["first"]' in resumed[0], resumed
    await system.wait_healthy()


async def test_forged_dispatch_order_runs_nothing(client: httpx.AsyncClient, system: System, sink: SinkState,
                                                  amqp_url: str) -> None:
    """Whoever can publish to the broker still cannot run a plan approvals did not claim."""
    t = f"forge-{uuid.uuid4().hex[:6]}"
    aid = await request_approval(client, t, payload={"forged": False})  # pending: never approved
    forged = DispatchOrder(approval_id=aid, tenant_id=t, action_id="notify.webhook", claim_token=str(uuid.uuid4()),
                           steps=[PlanStep(step_id="evil", connector="webhook", operation="post",
                                           params={"body": "pwned"})])
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(forged.to_json(), message_id=forged.message_id),
                                               routing_key=Topology(system.env["PJ_AMQP_PREFIX"]).dispatch)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # unsigned: dead-lettered unread, approvals is not even asked
        logs = system.log("dispatcher-1") + system.log("dispatcher-2")
        if any("amqp.dead_lettered" in line and forged.message_id in line for line in logs.splitlines()):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the forged order was not dead-lettered")
    assert not [d for d in sink.deliveries if d.body.get("approvalId") == aid]
    record = (await client.get(f"/api/approvals/{aid}", headers=headers(tenant=t))).json()["data"]
    assert record["approval_status"] == "pending"


async def test_sigterm_drains_the_running_order_before_exit(client: httpx.AsyncClient, system: System,
                                                            sink: SinkState) -> None:
    """A dispatcher told to stop (a scale-down) takes no new order but finishes the one it runs."""
    t = f"drain-{uuid.uuid4().hex[:6]}"
    aid = await request_approval(client, t, "test.three")
    await approve(client, t, aid)

    sink.delay_s = 0.5
    dispatch = asyncio.create_task(client.post(f"/api/approvals/{aid}/dispatch",
                                               headers=headers("admin", "alice", t), json={}))
    try:
        runner = None
        deadline = time.monotonic() + 15
        while runner is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            runner = next((name for name in ("dispatcher-1", "dispatcher-2")
                           if aid in system.log(name) and '"stepId": "first"' in system.log(name)), None)
        assert runner is not None, "no dispatcher started the plan"
        proc = system.processes[runner]
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
        response = await asyncio.wait_for(dispatch, 20)
    finally:
        sink.delay_s = 0.0
        for name in ("dispatcher-1", "dispatcher-2"):
            if system.processes[name].poll() is not None:
                system.processes.pop(name)
                system.start(name, "pj_dispatcher")
    assert response.status_code == 200 and response.json()["data"]["approvalStatus"] == "dispatched"
    assert sorted(delivered_keys(sink, aid)) == sorted(f"{aid}:{s}" for s in ("first", "second", "third"))  # each once
    assert "dispatcher.drained" in system.log(runner)
    assert not any("dispatcher.resumed" in line and aid in line
                   for name in ("dispatcher-1", "dispatcher-2") for line in system.log(name).splitlines())
    await system.wait_healthy(dispatchers=2)
