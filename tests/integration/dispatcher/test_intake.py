"""Dispatch on the real broker (pj_dispatcher.app + intake + runner): every order, signed or not, is
confirmed with approvals before it runs, so a copy of an order (the outbox publishes at least once)
runs nothing: not after the dispatch finished, not while it runs in the same process, not at a
second dispatcher process; a forged one runs nothing approvals did not claim; a delivery held for
PJ_ORDER_HOLD_MAX_S goes back to the queue and its redelivery resumes after the checkpointed steps.

Approvals is a stand-in that answers get_dispatch_plan from the step reports it received, gives the
claim to the first holder that confirms it (stale to any other, and once the dispatch finished) and
counts every command it is sent."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from pj_common.messages import (
    CommandEnvelope,
    DispatchOrder,
    DispatchPlan,
    GetDispatchPlan,
    LeaseGrant,
    PlanStep,
    RenewLease,
    Reply,
    StepReport,
    StepResult,
)
from pj_common.signing import signature_headers
from pj_common.topology import Topology, declare_topology
from pj_common.transport import consume, json_message, publish_confirmed, reply
from pj_dispatcher.app import DispatcherApp
from pj_dispatcher.settings import DispatcherSettings
from tests.support.local_http import serving


class Receiver:
    """A webhook receiver that records the body of every request; each takes `hold_s`."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.hold_s = 0.0
        self.url = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(receiver.hold_s)
                receiver.bodies.append(body.decode())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def steps(self) -> list[str]:
        return [step for body in self.bodies for step in "abcd" if f'"payload":"{step}"' in body]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    with serving(state.handler()) as base_url:
        state.url = f"{base_url}/hook"
        yield state


class Approvals:
    """The approvals stand-in: counts commands, confirms claims from the reports it received."""

    def __init__(self, channel: AbstractChannel, steps: list[PlanStep], *, stale: bool = False) -> None:
        self.channel = channel
        self.steps = steps
        self.stale = stale
        self.commands: list[str] = []
        self.holder: str | None = None
        self.final_delay_s = 0.0  # how long approvals takes to record a plan's final report
        self.checkpoints: dict[str, StepResult] = {}
        self.finals: list[StepReport] = []
        self.finished = asyncio.Event()
        self.asked = asyncio.Event()

    async def on_command(self, message: AbstractIncomingMessage) -> None:
        command = CommandEnvelope.model_validate_json(message.body).command
        self.commands.append(command.name)
        self.asked.set()
        lease = datetime.now(UTC) + timedelta(seconds=60)
        if isinstance(command, GetDispatchPlan):
            # approvals' compare-and-set: the first holder takes the claim; a finished dispatch is stale
            stale = self.stale or bool(self.finals) or self.holder not in (None, command.holder)
            if not stale:
                self.holder = command.holder
            await asyncio.sleep(0.2)  # let the last checkpoint arrive, as approvals records it before answering
            stale = stale or bool(self.finals)
            plan = DispatchPlan(stale=stale, steps=self.steps, completed=list(self.checkpoints.values()),
                                lease_expires_at=lease)
            await reply(self.channel, message, Reply[DispatchPlan](ok=True, data=plan).to_json())
        elif isinstance(command, RenewLease):
            grant = LeaseGrant(granted=command.holder == self.holder and not self.finals, lease_expires_at=lease)
            await reply(self.channel, message, Reply[LeaseGrant](ok=True, data=grant).to_json())

    async def on_report(self, message: AbstractIncomingMessage) -> None:
        report = StepReport.model_validate_json(message.body)
        if report.plan_status != "running":  # approvals checkpoints the last step with the plan's end
            await asyncio.sleep(self.final_delay_s)
        if report.step.status == "succeeded":
            self.checkpoints[report.step.step_id] = report.step
        if report.plan_status != "running":
            self.finals.append(report)
            self.finished.set()


def steps(*ids: str) -> list[PlanStep]:
    return [PlanStep(step_id=s, connector="webhook", operation="post", params={"body": s}) for s in ids]


def order_for(plan: list[PlanStep], *, lease_s: float | None = 60) -> DispatchOrder:
    lease = None if lease_s is None else datetime.now(UTC) + timedelta(seconds=lease_s)
    return DispatchOrder(approval_id="apr-1", tenant_id="t", action_id="notify.webhook", claim_token="claim",
                         steps=plan, lease_expires_at=lease)


class System:
    def __init__(self, connection: aio_pika.abc.AbstractConnection, topology: Topology, app: DispatcherApp) -> None:
        self.connection, self.topology, self.app = connection, topology, app

    async def approvals(self, plan: list[PlanStep], *, stale: bool = False) -> Approvals:
        channel = await self.connection.channel()
        stand_in = Approvals(channel, plan, stale=stale)
        await consume(channel, self.topology.leases, stand_in.on_command, prefetch=10)
        await consume(await self.connection.channel(), self.topology.results, stand_in.on_report, prefetch=10)
        await self.app.start()
        return stand_in

    async def publish(self, order: DispatchOrder, *, headers: dict[str, Any] | None = None) -> None:
        channel = await self.connection.channel(publisher_confirms=True)
        await publish_confirmed(channel, self.topology.dispatch,
                                json_message(order.to_json(), message_id=order.message_id, headers=headers))


@pytest.fixture
async def system(amqp_url: str, topology: Topology, receiver: Receiver, request: pytest.FixtureRequest
                 ) -> AsyncIterator[System]:
    extra: dict[str, Any] = getattr(request, "param", {})
    settings = DispatcherSettings(env="dev", amqp_url=amqp_url, amqp_prefix=topology.prefix, webhook_url=receiver.url,
                                  webhook_secret="s", webhook_allow_private=True, **extra)
    connection = await aio_pika.connect_robust(amqp_url)
    await declare_topology(await connection.channel(), topology)
    app = DispatcherApp(settings)
    try:
        yield System(connection, topology, app)
    finally:
        await app.stop()
        await connection.close()


def signed(order: DispatchOrder, key: str) -> dict[str, Any]:
    return signature_headers(order.to_json(), key)


async def test_a_signed_order_is_confirmed_before_it_runs(system: System, receiver: Receiver) -> None:
    approvals = await system.approvals(steps("a", "b"))
    order = order_for(steps("a", "b"))
    await system.publish(order, headers=signed(order, system.app.settings.signing_key))
    await asyncio.wait_for(approvals.finished.wait(), 20)
    assert approvals.finals[0].plan_status == "dispatched"
    assert receiver.steps() == ["a", "b"]
    assert approvals.commands == ["get_dispatch_plan"]  # the plan was done before any renewal
    assert approvals.holder == system.app.holder


async def test_a_copy_of_an_order_delivered_after_its_dispatch_finished_runs_nothing(
        system: System, receiver: Receiver) -> None:
    approvals = await system.approvals(steps("a", "b"))
    order = order_for(steps("a", "b"))
    headers = signed(order, system.app.settings.signing_key)
    await system.publish(order, headers=headers)
    await asyncio.wait_for(approvals.finished.wait(), 20)
    await system.publish(order, headers=headers)  # the relay published it again: a first delivery, its lease holds
    await asyncio.sleep(1.0)  # time enough for anything to run, if it ran
    assert receiver.steps() == ["a", "b"]
    assert len(approvals.finals) == 1
    # its claim is spent in this process: dropped before asking (approvals would answer stale)
    assert approvals.commands == ["get_dispatch_plan"]
    assert system.app.metrics.registry.get_sample_value("dispatch_orders_duplicate_total") == 1


async def test_a_copy_arriving_before_approvals_recorded_the_end_runs_nothing(
        system: System, receiver: Receiver) -> None:
    """The chaos suite's queue-dup-reorder: the copy reaches the holder after its plan ended but while
    the final report is still on its way, so approvals would still confirm the claim to its holder."""
    approvals = await system.approvals(steps("a", "b"))
    approvals.final_delay_s = 3.0
    order = order_for(steps("a", "b"))
    headers = signed(order, system.app.settings.signing_key)
    await system.publish(order, headers=headers)
    await asyncio.sleep(1.0)  # the plan ran (0.2 s to confirm, two quick steps); its end is not recorded yet
    assert receiver.steps() == ["a", "b"] and not approvals.finals
    await system.publish(order, headers=headers)
    await asyncio.wait_for(approvals.finished.wait(), 20)
    await asyncio.sleep(0.5)  # time enough for anything to run, if it ran
    assert receiver.steps() == ["a", "b"]
    assert approvals.commands == ["get_dispatch_plan"]
    assert system.app.metrics.registry.get_sample_value("dispatch_orders_duplicate_total") == 1


async def test_a_copy_of_an_order_running_in_the_same_process_runs_nothing(
        system: System, receiver: Receiver) -> None:
    receiver.hold_s = 0.4
    approvals = await system.approvals(steps("a", "b"))
    order = order_for(steps("a", "b"))
    headers = signed(order, system.app.settings.signing_key)
    await system.publish(order, headers=headers)
    await system.publish(order, headers=headers)
    await asyncio.wait_for(approvals.finished.wait(), 20)
    await asyncio.sleep(0.5)
    assert receiver.steps() == ["a", "b"]
    assert len(approvals.finals) == 1
    assert approvals.commands == ["get_dispatch_plan"]  # the copy was dropped in the process, before asking
    assert system.app.metrics.registry.get_sample_value("dispatch_orders_duplicate_total") == 1


async def test_copies_of_an_order_at_two_dispatcher_processes_run_once(
        system: System, receiver: Receiver) -> None:
    receiver.hold_s = 0.3
    approvals = await system.approvals(steps("a", "b"))
    other = DispatcherApp(system.app.settings)  # a second process: its own holder id
    assert other.holder != system.app.holder
    await other.start()
    try:
        order = order_for(steps("a", "b"))
        headers = signed(order, system.app.settings.signing_key)
        for _ in range(4):
            await system.publish(order, headers=headers)
        await asyncio.wait_for(approvals.finished.wait(), 20)
        await asyncio.sleep(1.0)  # time enough for any other copy to run, if it ran
    finally:
        await other.stop()
    assert receiver.steps() == ["a", "b"]
    assert len(approvals.finals) == 1


async def dead_letter(system: System) -> AbstractIncomingMessage:
    """The one message in the dead-letter queue (waiting up to 10 s for it)."""
    queue = await (await system.connection.channel()).get_queue(system.topology.dead_letters, ensure=False)
    for _ in range(100):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.1)
    raise AssertionError("nothing was dead-lettered")


@pytest.mark.parametrize("key", [None, "not-the-key-approvals-signs-with-0123456789"], ids=["unsigned", "forged"])
async def test_an_order_approvals_did_not_sign_is_dead_lettered_and_runs_nothing(
        system: System, receiver: Receiver, key: str | None) -> None:
    approvals = await system.approvals(steps("a"))
    order = order_for(steps("a"))
    await system.publish(order, headers=signed(order, key) if key else None)
    dead = await dead_letter(system)
    assert dead.message_id == order.message_id and dead.headers["x-pj-dead-reason"] == "permanent"
    assert str(dead.headers["x-pj-last-error"]).startswith("Permanent: ")
    await asyncio.sleep(0.3)  # time enough for anything to run, if it ran
    assert approvals.commands == [] and receiver.bodies == []
    bad = system.app.metrics.registry.get_sample_value("dispatch_orders_bad_signature_total")
    assert bad == (1 if key else 0)


@pytest.mark.parametrize("system", [{"PJ_ORDER_HOLD_MAX_S": 1.0, "PJ_STEP_DEADLINE_S": 0.5,
                                     "PJ_RATE_LIMIT_MAX_WAIT_S": 0.4}], indirect=True)
async def test_a_delivery_held_too_long_goes_back_and_resumes_after_its_checkpoints(
        system: System, receiver: Receiver) -> None:
    """The stand-in for RabbitMQ's consumer_timeout: a plan longer than one delivery may be held is
    handed back between two steps, and its redelivery (confirmed with approvals) runs the rest."""
    receiver.hold_s = 0.3
    plan = steps("a", "b", "c", "d")
    approvals = await system.approvals(plan)
    order = order_for(plan)
    await system.publish(order, headers=signed(order, system.app.settings.signing_key))
    await asyncio.wait_for(approvals.finished.wait(), 30)
    (final,) = approvals.finals
    assert final.plan_status == "dispatched"
    assert [r.status for r in final.results] == ["succeeded"] * 4
    assert receiver.steps() == ["a", "b", "c", "d"]  # each once: the redelivery skipped the checkpointed ones
    # Every delivery was confirmed (approvals told each redelivery what was done).
    # Steps start at about 0, 0.3 and 0.6 s of a delivery, and the third would end past 1 s: so one
    # hand-back after a and b, or (on a slow machine) more.
    handed_back = system.app.metrics.registry.get_sample_value("dispatch_plans_stopped_total",
                                                               {"reason": "handed_back"})
    assert handed_back is not None and handed_back >= 1
    assert approvals.commands.count("get_dispatch_plan") == int(handed_back) + 1
