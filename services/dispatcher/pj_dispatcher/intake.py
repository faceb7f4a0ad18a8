"""Order intake: takes dispatch orders off the queue, confirms each with the approvals service, and
hands the confirmed plan to the runner; on shutdown, drains the orders still running.

Only orders approvals signed are taken: an unsigned one, or one whose signature does not check
out (forged, or altered on the way), is counted and dead-lettered at once with why, unread: a
message forged with broker access runs nothing and asks nothing. Orders leave approvals at least
once (its outbox may publish one twice), so no order runs on its own word either: every signed one
is confirmed with get_dispatch_plan, which also binds the order's claim to this
process (its holder id) if no other process took it first. A stale order (its claim no longer holds
the dispatch, or another dispatcher holds it) is dropped; a confirmed one runs the plan approvals
returns, after the steps already done. A copy of an order whose claim is already running in this
process, or is spent here (its plan ran to its final report, its lease was lost, or approvals said
stale), is dropped before asking: the holder check cannot tell two copies in one process apart, and
approvals may not have recorded the final report yet when a late copy asks. The transport acks an
order only after the plan's final report is confirmed by the broker.
"""

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage

from pj_common.messages import DispatchOrder, DispatchPlan
from pj_common.signing import SIGNATURE_HEADER, is_signed
from pj_common.transport import Permanent

from .metrics import DispatcherMetrics
from .runner import PlanRunner
from .settings import DispatcherSettings

log = logging.getLogger("pj.dispatcher")

ConfirmPlan = Callable[[DispatchOrder], Awaitable[DispatchPlan]]

# How many spent claims a process remembers (oldest forgotten first): copies come within seconds of
# each other, and a forgotten one is still answered stale by approvals once the dispatch is recorded.
SPENT_CLAIMS_KEPT = 10_000


def admission(*, signature: str, redelivered: bool) -> str:
    """How the order arrived, for the `dispatch_orders` metric (`unsigned` and `bad_signature` ones are
    dead-lettered, the others confirmed).

    `signature` is `valid`, `missing` or `bad`.
    """
    if signature != "valid":
        return "unsigned" if signature == "missing" else "bad_signature"
    return "redelivered" if redelivered else "signed"


class OrderIntake:
    """The dispatch queue's handler; knows how many orders are running, for the drain."""

    def __init__(self, settings: DispatcherSettings, *, confirm_plan: ConfirmPlan, runner: PlanRunner,
                 metrics: DispatcherMetrics) -> None:
        self._signing_key = settings.signing_key
        self._confirm_plan = confirm_plan
        self._runner = runner
        self._metrics = metrics
        self._running = 0
        self._claims: set[tuple[str, str]] = set()  # (approval, claim) of the orders taken and not yet done
        self._spent: OrderedDict[tuple[str, str], None] = OrderedDict()  # claims that must not run here again
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
        order = DispatchOrder.model_validate_json(message.body)
        how = admission(signature=self._signature(order, message), redelivered=bool(message.redelivered))
        self._metrics.orders.labels(how).inc()
        if how in ("unsigned", "bad_signature"):
            raise Permanent(f"dispatch order {'without a signature' if how == 'unsigned' else 'with a bad signature'}"
                            ": only orders signed by approvals are taken")
        claim = (order.approval_id, order.claim_token)
        if claim in self._claims or claim in self._spent:
            self._drop_duplicate(order, message)
            return
        self._claims.add(claim)
        self._running += 1
        self._idle.clear()
        try:
            confirmed = await self._admit(order, admitted=how, redelivered=bool(message.redelivered))
            if confirmed is not None:
                with self._metrics.in_flight.track_inprogress():
                    await self._runner.run_order(confirmed)
            # Stale, finished or its lease lost: spent for good (an order handed back raised instead).
            self._spend(claim)
        finally:
            self._claims.discard(claim)
            self._running -= 1
            if not self._running:
                self._idle.set()

    def _spend(self, claim: tuple[str, str]) -> None:
        self._spent[claim] = None
        while len(self._spent) > SPENT_CLAIMS_KEPT:
            self._spent.popitem(last=False)

    def _drop_duplicate(self, order: DispatchOrder, message: AbstractIncomingMessage) -> None:
        self._metrics.duplicates.inc()
        log.warning("duplicate dispatch order dropped: its claim is running or spent here", extra={
            "scope": "dispatcher.duplicate_order", "approvalId": order.approval_id, "attempt": order.attempt,
            "messageId": message.message_id, "redelivered": bool(message.redelivered)})

    async def _admit(self, order: DispatchOrder, *, admitted: str, redelivered: bool) -> DispatchOrder | None:
        """The order as approvals confirms it (its plan, the steps done, the lease), or None when it is
        stale: the claim no longer holds the dispatch, or another dispatcher holds it."""
        plan = await self._confirm_plan(order)
        if plan.stale:
            self._metrics.stale.inc()
            log.warning("stale dispatch order dropped", extra={
                "scope": "dispatcher.stale_order", "approvalId": order.approval_id, "redelivered": redelivered,
                "admission": admitted})
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
        log.warning("dispatch order with a bad signature: dead-lettered, nothing runs",
                    extra={"scope": "dispatcher.unsigned_order", "approvalId": order.approval_id,
                           "messageId": message.message_id})
        return "bad"

    @staticmethod
    def _log_resumed(order: DispatchOrder) -> None:
        if order.completed:
            log.info("order resumes after finished steps", extra={
                "scope": "dispatcher.resumed", "approvalId": order.approval_id,
                "done": [c.step_id for c in order.completed]})
