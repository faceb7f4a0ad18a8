"""Order intake: takes dispatch orders off the queue, confirms each one's claim with the approvals
service and hands the confirmed plan to the runner; on shutdown, drains the orders still running.

Nothing runs on an order's word alone: a forged, stale or superseded order is dropped, and a
redelivered one (its dispatcher died mid-plan) resumes after the steps already done. The transport
acks an order only after the plan's final report is confirmed by the broker.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage

from pj_common.messages import DispatchOrder, DispatchPlan

from .metrics import DispatcherMetrics
from .runner import PlanRunner

log = logging.getLogger("pj.dispatcher")

ConfirmPlan = Callable[[DispatchOrder], Awaitable[DispatchPlan]]


class OrderIntake:
    """The dispatch queue's handler; knows how many orders are running, for the drain."""

    def __init__(self, *, confirm_plan: ConfirmPlan, runner: PlanRunner, metrics: DispatcherMetrics) -> None:
        self._confirm_plan = confirm_plan
        self._runner = runner
        self._metrics = metrics
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until no order is running (after consuming stopped); False if `timeout` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def on_order(self, message: AbstractIncomingMessage) -> None:
        """Handle one delivery of the dispatch queue (the transport acks when this returns)."""
        self._running += 1
        self._idle.clear()
        try:
            await self._confirm_and_run(DispatchOrder.model_validate_json(message.body),
                                        redelivered=bool(message.redelivered))
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def _confirm_and_run(self, order: DispatchOrder, *, redelivered: bool) -> None:
        """Run the plan approvals confirms for the order's claim, after the steps already done."""
        plan = await self._confirm_plan(order)
        if plan.stale:
            self._metrics.stale.inc()
            log.warning("stale dispatch order dropped", extra={
                "scope": "dispatcher.stale_order", "approvalId": order.approval_id, "redelivered": redelivered})
            return
        order = order.model_copy(update={"steps": plan.steps, "completed": plan.completed})
        if plan.completed:
            log.info("order resumes after finished steps", extra={
                "scope": "dispatcher.resumed", "approvalId": order.approval_id,
                "done": [c.step_id for c in plan.completed]})
        with self._metrics.in_flight.track_inprogress():
            await self._runner.run_order(order)
