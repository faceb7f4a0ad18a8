"""Order intake (pj_dispatcher.intake): every order is confirmed with approvals before anything runs;
stale orders are dropped, redelivered ones resume, and a drain waits for the running ones."""

import asyncio
import logging
from dataclasses import dataclass

import pytest

from pj_common.messages import DispatchOrder, DispatchPlan, PlanStep, StepResult
from pj_dispatcher.intake import OrderIntake
from pj_dispatcher.metrics import DispatcherMetrics


@dataclass
class Delivery:
    """The two things intake reads of an AMQP delivery."""

    body: bytes
    redelivered: bool = False


class Runner:
    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.orders: list[DispatchOrder] = []
        self.hold = hold

    async def run_order(self, order: DispatchOrder) -> None:
        self.orders.append(order)
        if self.hold is not None:
            await self.hold.wait()


STEP = PlanStep(step_id="a", connector="webhook", operation="post")
DONE = StepResult(step_id="a", connector="webhook", operation="post", status="succeeded", attempts=1)
ORDER = DispatchOrder(approval_id="apr-1", tenant_id="t", action_id="act", claim_token="claim",
                      steps=[PlanStep(step_id="forged", connector="webhook", operation="post")])


def intake_for(plan: DispatchPlan, runner: Runner, metrics: DispatcherMetrics) -> OrderIntake:
    async def confirm(order: DispatchOrder) -> DispatchPlan:
        assert order.claim_token == "claim"
        return plan

    return OrderIntake(confirm_plan=confirm, runner=runner, metrics=metrics)  # type: ignore[arg-type]


async def test_a_stale_order_is_dropped_and_nothing_runs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    runner, metrics = Runner(), DispatcherMetrics()
    await intake_for(DispatchPlan(stale=True), runner, metrics).on_order(
        Delivery(ORDER.to_json(), redelivered=True))  # type: ignore[arg-type]
    assert runner.orders == []
    assert metrics.registry.get_sample_value("dispatch_orders_stale_total") == 1
    (record,) = [r for r in caplog.records if getattr(r, "scope", None) == "dispatcher.stale_order"]
    assert record.redelivered is True  # type: ignore[attr-defined]


async def test_the_confirmed_plan_runs_not_the_orders_own_steps() -> None:
    runner = Runner()
    await intake_for(DispatchPlan(stale=False, steps=[STEP]), runner, DispatcherMetrics()).on_order(
        Delivery(ORDER.to_json()))  # type: ignore[arg-type]
    (ran,) = runner.orders
    assert ran.steps == [STEP] and ran.completed == []


async def test_a_redelivered_order_resumes_after_its_checkpointed_steps(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    runner = Runner()
    await intake_for(DispatchPlan(stale=False, steps=[STEP], completed=[DONE]), runner, DispatcherMetrics()
                     ).on_order(Delivery(ORDER.to_json(), redelivered=True))  # type: ignore[arg-type]
    assert runner.orders[0].completed == [DONE]
    (record,) = [r for r in caplog.records if getattr(r, "scope", None) == "dispatcher.resumed"]
    assert record.done == ["a"]  # type: ignore[attr-defined]


async def test_drain_waits_for_running_orders_and_times_out() -> None:
    hold = asyncio.Event()
    runner = Runner(hold)
    intake = intake_for(DispatchPlan(stale=False, steps=[STEP]), runner, DispatcherMetrics())
    assert await intake.drain(0.01)  # nothing running
    task = asyncio.create_task(intake.on_order(Delivery(ORDER.to_json())))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert not await intake.drain(0.05)  # still running
    hold.set()
    assert await intake.drain(1.0)
    await task
