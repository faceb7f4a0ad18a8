from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from pj_common.messages import ApprovalEvent, ApprovalStatus
from pj_notifier.catalog import QuietHours, parse_catalog
from pj_notifier.domain import Notice, NoticeKind, Timing, apply_event, due_nudges, is_quiet
from tests.unit.notifier.catalog_text import CATALOG

CAT = parse_catalog(yaml.safe_load(CATALOG))
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
TIMING = Timing(pending_ttl_s=7200, remind_after_s=600, escalate_after_s=1200)
P = ApprovalStatus.PENDING


def event(type_: str, to: ApprovalStatus, *, at: datetime = T0, actor: str | None = "alice",
          from_: ApprovalStatus | None = P, **extra: Any) -> ApprovalEvent:
    return ApprovalEvent(type=type_, approval_id="a-1", tenant_id="acme", action_id="environment.create",
                         actor=actor, from_status=from_, to_status=to, occurred_at=at, **extra)


def created() -> ApprovalEvent:
    return event("approval.created", P, actor="erin", from_=None)


def test_a_new_pending_approval_tells_its_first_stage_and_sets_its_times() -> None:
    state, notices = apply_event(None, created(), CAT.action("environment.create"), timing=TIMING)
    assert notices == [Notice(NoticeKind.PENDING, 0)]
    assert state.requester == "erin" and state.status is P
    assert state.expires_at == T0 + timedelta(hours=2)
    assert state.remind_at == T0 + timedelta(minutes=10) and state.escalate_at == T0 + timedelta(minutes=20)


def test_each_stage_decided_tells_the_next_stage_and_counts_n_of_m() -> None:
    action = CAT.action("environment.create")  # review: 1 operator; sign-off: 2 admins
    state, _ = apply_event(None, created(), action, timing=TIMING)
    later = T0 + timedelta(minutes=5)
    state, notices = apply_event(state, event("approval.decided", P, actor="carol", at=later), action, timing=TIMING)
    assert notices == [Notice(NoticeKind.PENDING, 1)]
    assert (state.stage_index, state.stage_votes) == (1, 0)
    assert state.remind_at == later + timedelta(minutes=10), "the new stage's reminder counts from its start"
    state, notices = apply_event(state, event("approval.decided", P, actor="alice", at=later), action, timing=TIMING)
    assert notices == [] and (state.stage_index, state.stage_votes) == (1, 1)
    state, notices = apply_event(state, event("approval.decided", ApprovalStatus.APPROVED, actor="bob", at=later),
                                 action, timing=TIMING)
    assert notices == [Notice(NoticeKind.APPROVED, 1)]
    assert state.status is ApprovalStatus.APPROVED and state.decided_by == ("carol", "alice", "bob")
    assert state.remind_at is None and state.escalate_at is None
    assert state.expires_at == later + timedelta(seconds=TIMING.dispatch_window_s), "the dispatch window opens"


def test_outcomes_tell_the_requester() -> None:
    action = CAT.action("notify.webhook")
    state, _ = apply_event(None, created(), action, timing=TIMING)
    steps = [("approval.decided", ApprovalStatus.APPROVED, NoticeKind.APPROVED),
             ("approval.dispatch.started", ApprovalStatus.DISPATCHING, None),
             ("approval.dispatch.failed", ApprovalStatus.DISPATCH_FAILED, NoticeKind.DISPATCH_FAILED),
             ("approval.dispatch.started", ApprovalStatus.DISPATCHING, None),
             ("approval.dispatch.completed", ApprovalStatus.DISPATCHED, NoticeKind.DISPATCHED)]
    for minute, (type_, to, kind) in enumerate(steps, start=1):
        state, notices = apply_event(state, event(type_, to, at=T0 + timedelta(minutes=minute)), action, timing=TIMING)
        assert notices == ([Notice(kind, 0)] if kind else []), type_
        assert state.status is to
    expired, notices = apply_event(replace(state, status=P), event("approval.expired", ApprovalStatus.EXPIRED,
                                                                   at=T0 + timedelta(hours=3)), action, timing=TIMING)
    assert notices == [Notice(NoticeKind.EXPIRED, 0)] and expired.status is ApprovalStatus.EXPIRED


def test_an_event_that_overtook_the_creation_keeps_its_status() -> None:
    action = CAT.action("notify.webhook")
    state, notices = apply_event(None, event("approval.decided", ApprovalStatus.REJECTED,
                                             at=T0 + timedelta(minutes=1)), action, timing=TIMING)
    assert notices == [Notice(NoticeKind.REJECTED, 0)] and state.requester is None
    state, notices = apply_event(state, created(), action, timing=TIMING)
    assert notices == [] and state.status is ApprovalStatus.REJECTED and state.requester == "erin"


def test_a_launch_tier_action_asks_nobody() -> None:
    state, notices = apply_event(None, event("approval.created", ApprovalStatus.DISPATCHING, from_=None),
                                 CAT.action("notify.webhook"), timing=TIMING)
    assert notices == [] and state.remind_at is None


def test_reminder_and_escalation_fall_due_only_while_pending() -> None:
    state, _ = apply_event(None, created(), CAT.action("notify.webhook"), timing=TIMING)
    assert due_nudges(state, T0 + timedelta(minutes=9)) == []
    assert due_nudges(state, T0 + timedelta(minutes=10)) == [Notice(NoticeKind.REMINDER, 0)]
    assert due_nudges(state, T0 + timedelta(minutes=30)) == [Notice(NoticeKind.REMINDER, 0),
                                                             Notice(NoticeKind.ESCALATION, 0)]
    assert due_nudges(replace(state, remind_at=None), T0 + timedelta(minutes=30)) == [
        Notice(NoticeKind.ESCALATION, 0)]
    assert due_nudges(replace(state, status=ApprovalStatus.APPROVED), T0 + timedelta(hours=1)) == []


def test_no_escalation_without_a_group() -> None:
    route = CAT.route("acme", "notify.webhook").model_copy(update={"escalate_to": None})
    timing = Timing.of(CAT.action("notify.webhook"), route, pending_ttl_s=100.0, dispatch_window_s=50.0)
    assert timing.escalate_after_s is None and timing.pending_ttl_s == 7200 and timing.remind_after_s == 1800
    assert timing.dispatch_window_s == 50


def test_quiet_hours_span_midnight_in_the_tenants_time_zone() -> None:
    quiet = QuietHours.model_validate({"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"})
    assert is_quiet(quiet, datetime(2026, 11, 2, 22, 30, tzinfo=UTC))  # 23:30 in Berlin
    assert is_quiet(quiet, datetime(2026, 11, 2, 5, 30, tzinfo=UTC))  # 06:30
    assert not is_quiet(quiet, datetime(2026, 11, 2, 6, 30, tzinfo=UTC))  # 07:30
    assert not is_quiet(quiet, datetime(2026, 11, 2, 20, 30, tzinfo=UTC))  # 21:30
    day = QuietHours.model_validate({"start": "12:00", "end": "13:00"})
    assert is_quiet(day, datetime(2026, 11, 2, 12, 30, tzinfo=UTC)) and not is_quiet(None, T0)


def test_the_plan_hash_of_the_events_is_kept() -> None:
    action = CAT.action("environment.create")
    state, _ = apply_event(None, event("approval.created", P, from_=None, plan_hash="9f2c0a"), action, timing=TIMING)
    assert state.plan_hash == "9f2c0a"
    state, _ = apply_event(state, event("approval.decided", P), action, timing=TIMING)  # an event without one
    assert state.plan_hash == "9f2c0a"
