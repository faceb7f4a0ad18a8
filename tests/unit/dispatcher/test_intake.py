"""Order intake (pj_dispatcher.intake): every order is confirmed with approvals before it runs (a
signed first delivery too: orders go out at least once); stale orders are dropped, a copy of an order
already running in this process is dropped, redelivered ones resume, and a drain waits for the
running ones."""

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pj_common.messages import DispatchOrder, DispatchPlan, PlanStep, StepResult
from pj_common.signing import signature_headers
from pj_common.transport import Permanent, Retryable
from pj_dispatcher.intake import OrderIntake, admission
from pj_dispatcher.metrics import DispatcherMetrics
from pj_dispatcher.settings import DispatcherSettings

SETTINGS = DispatcherSettings(env="dev", PJ_LEASE_MARGIN_S=5)
KEY = SETTINGS.signing_key


@dataclass
class Delivery:
    """The things intake reads of an AMQP delivery."""

    body: bytes
    redelivered: bool = False
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str = "m-1"


def signed(order: DispatchOrder, *, redelivered: bool = False) -> Delivery:
    body = order.to_json()
    return Delivery(body, redelivered, signature_headers(body, KEY))


class Runner:
    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.orders: list[DispatchOrder] = []
        self.hold = hold

    async def run_order(self, order: DispatchOrder) -> None:
        self.orders.append(order)
        if self.hold is not None:
            await self.hold.wait()


class Approvals:
    """Stands in for approvals' get_dispatch_plan and counts every question asked."""

    def __init__(self, plan: DispatchPlan) -> None:
        self.plan = plan
        self.asked: list[DispatchOrder] = []

    async def confirm(self, order: DispatchOrder) -> DispatchPlan:
        assert order.claim_token == "claim"
        self.asked.append(order)
        return self.plan


STEP = PlanStep(step_id="a", connector="webhook", operation="post")
DONE = StepResult(step_id="a", connector="webhook", operation="post", status="succeeded", attempts=1)
ORDER = DispatchOrder(approval_id="apr-1", tenant_id="t", action_id="act", claim_token="claim",
                      steps=[PlanStep(step_id="forged", connector="webhook", operation="post")])


def leased(order: DispatchOrder, seconds: float, **update: Any) -> DispatchOrder:
    return order.model_copy(update={"lease_expires_at": datetime.now(UTC) + timedelta(seconds=seconds), **update})


def intake_for(approvals: Approvals, runner: Runner, metrics: DispatcherMetrics) -> OrderIntake:
    return OrderIntake(SETTINGS, confirm_plan=approvals.confirm, runner=runner, metrics=metrics)  # type: ignore[arg-type]


def admissions(metrics: DispatcherMetrics) -> dict[str, float]:
    return {s.labels["admission"]: s.value for m in metrics.registry.collect() if m.name == "dispatch_orders"
            for s in m.samples if s.name == "dispatch_orders_total"}


# ---------------------------------------------------------------- every order is confirmed


@pytest.mark.parametrize(("signature", "redelivered", "label"), [
    ("valid", False, "signed"),
    ("valid", True, "redelivered"),
    ("missing", False, "unsigned"),
    ("bad", True, "bad_signature"),
])
def test_the_admission_label_says_how_the_order_arrived(signature: str, redelivered: bool, label: str) -> None:
    assert admission(signature=signature, redelivered=redelivered) == label


async def test_a_signed_first_delivery_is_confirmed_too_and_runs_the_confirmed_plan() -> None:
    """No lean path: a signed order under a long lease is a copy like any other (the outbox may have
    published it twice), so approvals is asked, and a stale answer runs nothing."""
    lease = datetime.now(UTC) + timedelta(seconds=60)
    approvals, runner, metrics = Approvals(DispatchPlan(stale=False, steps=[STEP], lease_expires_at=lease)), \
        Runner(), DispatcherMetrics()
    order = leased(ORDER, 60, completed=[DONE])
    await intake_for(approvals, runner, metrics).on_order(signed(order))  # type: ignore[arg-type]
    assert approvals.asked == [order]
    (ran,) = runner.orders
    assert ran.steps == [STEP] and ran.completed == [] and ran.lease_expires_at == lease
    assert admissions(metrics) == {"signed": 1}


async def test_a_signed_first_delivery_of_a_finished_dispatch_runs_nothing() -> None:
    approvals, runner, metrics = Approvals(DispatchPlan(stale=True)), Runner(), DispatcherMetrics()
    await intake_for(approvals, runner, metrics).on_order(signed(leased(ORDER, 60)))  # type: ignore[arg-type]
    assert len(approvals.asked) == 1 and runner.orders == []
    assert metrics.registry.get_sample_value("dispatch_orders_stale_total") == 1


async def test_a_copy_of_an_order_running_in_this_process_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    hold = asyncio.Event()
    approvals, runner, metrics = Approvals(DispatchPlan(stale=False, steps=[STEP])), Runner(hold), DispatcherMetrics()
    intake = intake_for(approvals, runner, metrics)
    order = leased(ORDER, 60)
    first = asyncio.create_task(intake.on_order(signed(order)))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    await intake.on_order(signed(order))  # type: ignore[arg-type]  # returns at once: acked, not run
    await intake.on_order(signed(order, redelivered=True))  # type: ignore[arg-type]
    hold.set()
    await first
    assert len(runner.orders) == 1 and len(approvals.asked) == 1
    assert metrics.registry.get_sample_value("dispatch_orders_duplicate_total") == 2
    records = [r for r in caplog.records if getattr(r, "scope", None) == "dispatcher.duplicate_order"]
    assert len(records) == 2 and records[0].approvalId == "apr-1"  # type: ignore[attr-defined]
    # once the first copy ran to its end, a late copy is dropped too, before asking: approvals may not
    # have recorded the final report yet, and would confirm the claim to its holder again
    await intake.on_order(signed(order))  # type: ignore[arg-type]
    assert len(approvals.asked) == 1 and len(runner.orders) == 1
    assert metrics.registry.get_sample_value("dispatch_orders_duplicate_total") == 3


async def test_a_stale_claim_is_spent_and_not_asked_about_again() -> None:
    approvals, runner, metrics = Approvals(DispatchPlan(stale=True)), Runner(), DispatcherMetrics()
    intake = intake_for(approvals, runner, metrics)
    await intake.on_order(signed(leased(ORDER, 60)))  # type: ignore[arg-type]
    await intake.on_order(signed(leased(ORDER, 60)))  # type: ignore[arg-type]
    assert len(approvals.asked) == 1 and runner.orders == []


async def test_an_order_handed_back_or_unconfirmed_is_not_spent() -> None:
    """A plan handed back to the queue (the runner raised) resumes on its redelivery, and an order
    approvals could not confirm is tried again: neither claim is spent in the process."""

    class HandingBack(Runner):
        async def run_order(self, order: DispatchOrder) -> None:
            self.orders.append(order)
            if len(self.orders) == 1:
                raise Retryable("held for PJ_ORDER_HOLD_MAX_S")

    class Unavailable(Approvals):
        async def confirm(self, order: DispatchOrder) -> DispatchPlan:
            if not self.asked:
                self.asked.append(order)
                raise Retryable("dispatch plan unavailable")
            return await super().confirm(order)

    approvals, runner = Approvals(DispatchPlan(stale=False, steps=[STEP])), HandingBack()
    intake = intake_for(approvals, runner, DispatcherMetrics())
    with pytest.raises(Retryable):
        await intake.on_order(signed(leased(ORDER, 60)))  # type: ignore[arg-type]
    await intake.on_order(signed(leased(ORDER, 60), redelivered=True))  # type: ignore[arg-type]
    assert len(runner.orders) == 2 and len(approvals.asked) == 2

    unavailable, plain = Unavailable(DispatchPlan(stale=False, steps=[STEP])), Runner()
    intake = intake_for(unavailable, plain, DispatcherMetrics())
    with pytest.raises(Retryable):
        await intake.on_order(signed(ORDER))  # type: ignore[arg-type]
    await intake.on_order(signed(ORDER, redelivered=True))  # type: ignore[arg-type]
    assert len(plain.orders) == 1


async def test_a_copy_arriving_while_the_first_is_being_confirmed_is_dropped() -> None:
    gate = asyncio.Event()

    class Slow(Approvals):
        async def confirm(self, order: DispatchOrder) -> DispatchPlan:
            await gate.wait()
            return await super().confirm(order)

    approvals, runner = Slow(DispatchPlan(stale=False, steps=[STEP])), Runner()
    intake = intake_for(approvals, runner, DispatcherMetrics())
    first = asyncio.create_task(intake.on_order(signed(ORDER)))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    await intake.on_order(signed(ORDER))  # type: ignore[arg-type]
    gate.set()
    await first
    assert len(runner.orders) == 1 and len(approvals.asked) == 1


@pytest.mark.parametrize("delivery", [
    pytest.param(lambda o: signed(o, redelivered=True), id="redelivered"),
    pytest.param(lambda o: signed(o.model_copy(update={"lease_expires_at": None})), id="no-lease"),
    pytest.param(lambda o: signed(o.model_copy(update={"lease_expires_at": datetime.now(UTC)})), id="lease-short"),
    pytest.param(lambda o: signed(o), id="signed"),
])
async def test_any_order_is_confirmed_and_runs_the_confirmed_plan(delivery: Any) -> None:
    lease = datetime.now(UTC) + timedelta(seconds=60)
    approvals = Approvals(DispatchPlan(stale=False, steps=[STEP], lease_expires_at=lease))
    runner = Runner()
    order = leased(ORDER, 60)
    await intake_for(approvals, runner, DispatcherMetrics()).on_order(delivery(order))
    assert [o.message_id for o in approvals.asked] == [order.message_id]
    (ran,) = runner.orders
    assert ran.steps == [STEP] and ran.completed == [] and ran.lease_expires_at == lease


async def test_a_forged_signature_is_counted_logged_and_dead_lettered_unrun(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    approvals, runner, metrics = Approvals(DispatchPlan(stale=False, steps=[STEP])), Runner(), DispatcherMetrics()
    order = leased(ORDER, 60)
    forged = Delivery(order.to_json(), headers=signature_headers(order.to_json(), "someone-elses-key-" * 3))
    with pytest.raises(Permanent, match="bad signature"):  # the transport dead-letters it with this reason
        await intake_for(approvals, runner, metrics).on_order(forged)  # type: ignore[arg-type]
    assert approvals.asked == [] and runner.orders == []
    assert metrics.registry.get_sample_value("dispatch_orders_bad_signature_total") == 1
    assert admissions(metrics) == {"bad_signature": 1}
    (record,) = [r for r in caplog.records if getattr(r, "scope", None) == "dispatcher.unsigned_order"]
    assert record.levelno == logging.WARNING and record.approvalId == "apr-1"  # type: ignore[attr-defined]


async def test_a_signature_of_other_bytes_does_not_check_out() -> None:
    approvals, runner = Approvals(DispatchPlan(stale=False, steps=[STEP])), Runner()
    order = leased(ORDER, 60)
    tampered = leased(ORDER, 60, steps=[PlanStep(step_id="evil", connector="webhook", operation="post")])
    delivery = Delivery(tampered.to_json(), headers=signature_headers(order.to_json(), KEY))
    with pytest.raises(Permanent, match="bad signature"):
        await intake_for(approvals, runner, DispatcherMetrics()).on_order(delivery)  # type: ignore[arg-type]
    assert approvals.asked == [] and runner.orders == []


async def test_an_unsigned_order_is_dead_lettered_unrun_and_not_logged_as_forged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    metrics, approvals, runner = DispatcherMetrics(), Approvals(DispatchPlan(stale=False, steps=[STEP])), Runner()
    with pytest.raises(Permanent, match="without a signature"):
        await intake_for(approvals, runner, metrics).on_order(Delivery(ORDER.to_json()))  # type: ignore[arg-type]
    assert approvals.asked == [] and runner.orders == []
    assert admissions(metrics) == {"unsigned": 1}
    assert metrics.registry.get_sample_value("dispatch_orders_bad_signature_total") == 0
    assert not [r for r in caplog.records if getattr(r, "scope", None) == "dispatcher.unsigned_order"]


# ---------------------------------------------------------------- confirmed orders


async def test_a_stale_order_is_dropped_and_nothing_runs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    runner, metrics = Runner(), DispatcherMetrics()
    await intake_for(Approvals(DispatchPlan(stale=True)), runner, metrics).on_order(
        signed(leased(ORDER, 60), redelivered=True))  # type: ignore[arg-type]
    assert runner.orders == []
    assert metrics.registry.get_sample_value("dispatch_orders_stale_total") == 1
    (record,) = [r for r in caplog.records if getattr(r, "scope", None) == "dispatcher.stale_order"]
    assert record.redelivered is True  # type: ignore[attr-defined]


async def test_the_confirmed_plan_runs_not_the_orders_own_steps() -> None:
    runner = Runner()
    await intake_for(Approvals(DispatchPlan(stale=False, steps=[STEP])), runner, DispatcherMetrics()).on_order(
        signed(ORDER))  # type: ignore[arg-type]
    (ran,) = runner.orders
    assert ran.steps == [STEP] and ran.completed == []


async def test_a_redelivered_order_resumes_after_its_checkpointed_steps(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    runner = Runner()
    await intake_for(Approvals(DispatchPlan(stale=False, steps=[STEP], completed=[DONE])), runner,
                     DispatcherMetrics()).on_order(signed(ORDER, redelivered=True))  # type: ignore[arg-type]
    assert runner.orders[0].completed == [DONE]
    (record,) = [r for r in caplog.records if getattr(r, "scope", None) == "dispatcher.resumed"]
    assert record.done == ["a"]  # type: ignore[attr-defined]


async def test_drain_waits_for_running_orders_and_times_out() -> None:
    hold = asyncio.Event()
    runner = Runner(hold)
    intake = intake_for(Approvals(DispatchPlan(stale=False, steps=[STEP])), runner, DispatcherMetrics())
    assert await intake.drain(0.01)  # nothing running
    task = asyncio.create_task(intake.on_order(signed(ORDER)))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert not await intake.drain(0.05)  # still running
    hold.set()
    assert await intake.drain(1.0)
    await task
