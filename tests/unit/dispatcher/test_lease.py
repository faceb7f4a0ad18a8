"""A running order's lease (pj_dispatcher.lease): when it holds, what renewals do to it, and the
claim re-check before a step."""

from datetime import UTC, datetime, timedelta

import pytest

from pj_common.messages import DispatchOrder, LeaseGrant
from pj_common.transport import Retryable
from pj_dispatcher.lease import Lease, RenewLease, lease_holds
from pj_dispatcher.metrics import DispatcherMetrics

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def order(lease_s: float | None) -> DispatchOrder:
    lease = None if lease_s is None else datetime.now(UTC) + timedelta(seconds=lease_s)
    return DispatchOrder(approval_id="apr-1", tenant_id="t", action_id="act", claim_token="claim", steps=[],
                         lease_expires_at=lease)


def answering(*answers: LeaseGrant | Exception) -> tuple[RenewLease, list[DispatchOrder]]:
    asked: list[DispatchOrder] = []
    pending = list(answers)

    async def renew(o: DispatchOrder) -> LeaseGrant:
        asked.append(o)
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return renew, asked


def lease(o: DispatchOrder, renew: RenewLease | None = None, *, margin_s: float = 5) -> Lease:
    return Lease(o, renew=renew, every_s=3600, margin_s=margin_s, metrics=DispatcherMetrics())


@pytest.mark.parametrize(("expires_in_s", "holds"), [(60, True), (5.001, True), (5, False), (-1, False)])
def test_a_lease_holds_only_for_longer_than_the_margin(expires_in_s: float, holds: bool) -> None:
    assert lease_holds(NOW + timedelta(seconds=expires_in_s), now=NOW, margin_s=5) is holds


def test_no_lease_does_not_hold_for_a_signed_order() -> None:
    assert not lease_holds(None, now=NOW, margin_s=5)


def test_a_confirmed_order_without_a_lease_holds_until_a_renewal_says_otherwise() -> None:
    assert lease(order(None)).holds()


async def test_a_granted_renewal_extends_the_lease() -> None:
    renew, asked = answering(LeaseGrant(granted=True, lease_expires_at=datetime.now(UTC) + timedelta(seconds=60)))
    held = lease(order(1), renew)
    assert not held.holds()  # 1 s left, under the 5 s margin
    await held.renew()
    assert held.holds() and len(asked) == 1
    remaining = held.remaining_s
    assert remaining is not None and 59 < remaining <= 60


async def test_a_refused_renewal_loses_the_claim_for_good() -> None:
    renew, asked = answering(LeaseGrant(granted=False))
    held = lease(order(60), renew)
    await held.renew()
    assert held.lost and not held.holds()
    await held.renew()
    assert len(asked) == 1  # a stale claim is not asked about again


async def test_an_unanswered_renewal_leaves_the_known_lease() -> None:
    renew, _ = answering(Retryable("no reply"))
    held = lease(order(60), renew)
    await held.renew()
    assert held.holds() and not held.lost


async def test_the_claim_re_check_renews_only_when_the_lease_is_short() -> None:
    renew, asked = answering(LeaseGrant(granted=True, lease_expires_at=datetime.now(UTC) + timedelta(seconds=60)))
    assert await lease(order(60), renew).may_start() and asked == []
    short = lease(order(1), renew)
    assert await short.may_start() and len(asked) == 1


async def test_the_claim_re_check_fails_when_the_short_lease_cannot_be_renewed() -> None:
    renew, _ = answering(Retryable("no reply"))
    held = lease(order(1), renew)
    assert not await held.may_start() and not held.lost
