"""Order intake: takes dispatch orders off the queue, decides whether each may run on its own word or
must be confirmed with the approvals service first, and hands the plan to the runner; on shutdown,
drains the orders still running.

An order runs on its own word (its `steps`, skipping `completed`, with no RPC) only when approvals
signed it (pj_common.signing), it is a first delivery, and its lease holds for longer than
PJ_LEASE_MARGIN_S: approvals re-issues a dispatch only after its lease ran out, so until then nobody
else holds it. Anything else (redelivered: its dispatcher may have died mid-plan; unsigned or badly
signed; no lease; a lease about to end) is confirmed with get_dispatch_plan: a stale order is
dropped, a confirmed one runs the plan approvals returns, after the steps already done. The
transport acks an order only after the plan's final report is confirmed by the broker.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage

from pj_common.messages import DispatchOrder, DispatchPlan
from pj_common.signing import SIGNATURE_HEADER, is_signed

from .lease import lease_holds
from .metrics import DispatcherMetrics
from .runner import PlanRunner
from .settings import DispatcherSettings

log = logging.getLogger("pj.dispatcher")

ConfirmPlan = Callable[[DispatchOrder], Awaitable[DispatchPlan]]


def confirmation_reason(order: DispatchOrder, *, signature: str, redelivered: bool, now: datetime,
                        margin_s: float) -> str | None:
    """Why the order must be confirmed with approvals before it runs, or None when it may run as it is.

    `signature` is `valid`, `missing` or `bad`.
    """
    if signature != "valid":
        return "unsigned" if signature == "missing" else "bad_signature"
    if redelivered:
        return "redelivered"
    if order.lease_expires_at is None:
        return "no_lease"
    if not lease_holds(order.lease_expires_at, now=now, margin_s=margin_s):
        return "lease_short"
    return None


class OrderIntake:
    """The dispatch queue's handler; knows how many orders are running, for the drain."""

    def __init__(self, settings: DispatcherSettings, *, confirm_plan: ConfirmPlan, runner: PlanRunner,
                 metrics: DispatcherMetrics) -> None:
        self._signing_key = settings.signing_key
        self._margin_s = settings.lease_margin_s
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
            order = await self._admit(DispatchOrder.model_validate_json(message.body), message)
            if order is not None:
                with self._metrics.in_flight.track_inprogress():
                    await self._runner.run_order(order)
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def _admit(self, order: DispatchOrder, message: AbstractIncomingMessage) -> DispatchOrder | None:
        """The order to run (its own, or as approvals confirms it), or None when it is stale."""
        redelivered = bool(message.redelivered)
        reason = confirmation_reason(order, signature=self._signature(order, message), redelivered=redelivered,
                                     now=datetime.now(UTC), margin_s=self._margin_s)
        self._metrics.orders.labels(reason or "signed").inc()
        if reason is None:
            self._log_resumed(order)
            return order
        plan = await self._confirm_plan(order)
        if plan.stale:
            self._metrics.stale.inc()
            log.warning("stale dispatch order dropped", extra={
                "scope": "dispatcher.stale_order", "approvalId": order.approval_id, "redelivered": redelivered,
                "admission": reason})
            return None
        order = order.model_copy(update={"steps": plan.steps, "completed": plan.completed,
                                         "lease_expires_at": plan.lease_expires_at})
        self._log_resumed(order)
        return order

    def _signature(self, order: DispatchOrder, message: AbstractIncomingMessage) -> str:
        """`valid`, `missing` or `bad`; a bad one is counted and logged, as someone may be forging orders."""
        headers = message.headers or {}
        if is_signed(message.body, headers, self._signing_key):
            return "valid"
        if SIGNATURE_HEADER not in headers:
            return "missing"
        self._metrics.bad_signature.inc()
        log.warning("dispatch order with a bad signature: confirming it with approvals, never running it as it is",
                    extra={"scope": "dispatcher.unsigned_order", "approvalId": order.approval_id,
                           "messageId": message.message_id})
        return "bad"

    @staticmethod
    def _log_resumed(order: DispatchOrder) -> None:
        if order.completed:
            log.info("order resumes after finished steps", extra={
                "scope": "dispatcher.resumed", "approvalId": order.approval_id,
                "done": [c.step_id for c in order.completed]})
