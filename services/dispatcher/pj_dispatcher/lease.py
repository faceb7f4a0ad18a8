"""A running order's lease: until when its claim holds the dispatch, kept alive by renewals.

Approvals re-issues a dispatch to a new claim only after its lease ran out, so while the lease holds
nobody else runs the plan. The dispatcher renews it every PJ_LEASE_RENEW_S while the order runs and
starts a step only while the lease holds, by its own clock, for longer than PJ_LEASE_MARGIN_S. A
refused renewal means the claim is stale (the dispatch finished or was re-issued): the plan stops
before its next step. An unanswered one changes nothing until the lease known so far runs out.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType

from pj_common.messages import DispatchOrder, LeaseGrant
from pj_common.runtime import cancel_and_wait

from .metrics import DispatcherMetrics

log = logging.getLogger("pj.dispatcher")

RenewLease = Callable[[DispatchOrder], Awaitable[LeaseGrant]]


def lease_holds(expires_at: datetime | None, *, now: datetime, margin_s: float) -> bool:
    """True when a lease ending at `expires_at` still holds for longer than `margin_s` at `now`."""
    return expires_at is not None and (expires_at - now).total_seconds() > margin_s


class Lease:
    """The lease of one running order, renewed in the background between `async with` and its end.

    The lease is kept on the monotonic clock from the moment it was learned, so a step of the wall
    clock does not stretch or cut it. An order without a lease (confirmed by an approvals service
    that gives none) holds until a renewal says otherwise.
    """

    def __init__(self, order: DispatchOrder, *, renew: RenewLease | None, every_s: float, margin_s: float,
                 metrics: DispatcherMetrics) -> None:
        self._order = order
        self._renew = renew
        self._every_s = every_s
        self._margin_s = margin_s
        self._metrics = metrics
        self._until: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.lost = False
        self._learn(order.lease_expires_at)

    def _learn(self, expires_at: datetime | None) -> None:
        if expires_at is not None:
            self._until = time.monotonic() + (expires_at - datetime.now(UTC)).total_seconds()

    @property
    def remaining_s(self) -> float | None:
        """Seconds the lease still holds by this host's clock (None: no lease known)."""
        return None if self._until is None else self._until - time.monotonic()

    def holds(self) -> bool:
        """True while the claim was not refused and the lease holds for longer than the margin."""
        remaining = self.remaining_s
        return not self.lost and (remaining is None or remaining > self._margin_s)

    async def may_start(self) -> bool:
        """The claim re-check before a step: the lease holds, or a renewal made now extends it."""
        if not self.holds() and not self.lost:
            await self.renew()
        return self.holds()

    async def renew(self) -> None:
        """Ask approvals to extend the lease; a refusal marks the claim lost."""
        if self._renew is None or self.lost:
            return
        fields = {"approvalId": self._order.approval_id, "attempt": self._order.attempt}
        try:
            grant = await self._renew(self._order)
        except Exception as exc:  # unanswered: the lease known so far still holds until it runs out
            self._metrics.lease_renewals.labels("unanswered").inc()
            remaining = self.remaining_s
            log.warning("lease renewal unanswered: %s", exc, extra={
                "scope": "dispatcher.lease_unanswered", **fields,
                "remainingS": None if remaining is None else round(remaining, 3)})
            return
        if not grant.granted:
            self.lost = True
            self._metrics.lease_renewals.labels("refused").inc()
            log.warning("lease lost: the claim no longer holds the dispatch; the plan stops before its next step",
                        extra={"scope": "dispatcher.lease_lost", **fields})
            return
        self._metrics.lease_renewals.labels("granted").inc()
        self._learn(grant.lease_expires_at)

    async def _keep(self) -> None:
        while not self.lost:
            await asyncio.sleep(self._every_s)
            await self.renew()

    async def __aenter__(self) -> "Lease":
        if self._renew is not None:
            self._task = asyncio.create_task(self._keep(), name=f"lease-{self._order.approval_id}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
