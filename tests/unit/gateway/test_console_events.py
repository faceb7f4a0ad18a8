"""The event hub's fan-out without a broker: who sees which event, replay after Last-Event-ID, resync."""

import asyncio
from datetime import UTC, datetime

from pj_common.auth import Principal, Role
from pj_common.messages import ApprovalEvent, ApprovalStatus, EventType
from pj_gateway.console.events import SUBSCRIBER_BUFFER, EventHub, Resync

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def event(tenant: str, approval_id: str, type_: EventType = "approval.created", actor: str = "olga") -> ApprovalEvent:
    return ApprovalEvent(type=type_, approval_id=approval_id, tenant_id=tenant, action_id="notify.webhook",
                         actor=actor, from_status=None, to_status=ApprovalStatus.PENDING, occurred_at=NOW)


def hub(history: int = 10) -> EventHub:
    return EventHub("amqp://unused/", "pj.events", history=history)  # never started: no broker here


ADMIN = Principal(subject="alice", tenant="acme", role=Role.ADMIN)
OPERATOR = Principal(subject="olga", tenant="acme", role=Role.OPERATOR)


def test_visibility_is_the_tenant_and_for_operators_their_own_requests() -> None:
    h = hub()
    h.publish(event("acme", "mine"))
    h.publish(event("acme", "theirs", actor="otto"))
    assert h.visible(ADMIN, event("acme", "theirs", "approval.decided", actor="alice"))
    assert not h.visible(ADMIN, event("globex", "g-1"))
    assert h.visible(OPERATOR, event("acme", "mine", "approval.decided", actor="alice"))
    assert not h.visible(OPERATOR, event("acme", "theirs", "approval.decided", actor="alice"))
    assert h.visible(OPERATOR, event("acme", "unknown", "approval.decided", actor="alice")) is None  # ask approvals
    h.remember_owner("unknown", "olga")
    assert h.visible(OPERATOR, event("acme", "unknown", "approval.decided", actor="alice"))


async def test_replay_after_last_event_id_then_live_and_duplicates_dropped() -> None:
    h = hub()
    first, other_tenant, second = event("acme", "a-1"), event("globex", "g-1"), event("acme", "a-2")
    for e in (first, other_tenant, second):
        h.publish(e)
    stream = h.subscribe(ADMIN, first.event_id)
    assert await anext(stream) == second
    live = event("acme", "a-3")
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    h.publish(live)
    h.publish(live)  # published twice by the relay: shown once
    assert await asyncio.wait_for(waiting, 1) == live
    assert h.subscribers == 1
    await stream.aclose()
    assert h.subscribers == 0


async def test_a_forgotten_last_event_id_or_a_slow_stream_gets_resync() -> None:
    h = hub(history=2)
    old = event("acme", "a-0")
    for e in (old, event("acme", "a-1"), event("acme", "a-2")):
        h.publish(e)
    stream = h.subscribe(ADMIN, old.event_id)  # pushed out of the history of 2
    assert isinstance(await anext(stream), Resync)
    for i in range(SUBSCRIBER_BUFFER + 1):
        h.publish(event("acme", f"burst-{i}"))
    item = await anext(stream)
    assert isinstance(item, Resync) and "too many" in item.reason
    await stream.aclose()
