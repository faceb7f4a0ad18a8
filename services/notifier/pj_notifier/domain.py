"""What the notifier knows of an approval, how each event changes it, and whom each change concerns.

Pure: no I/O, no clock (times come from the events or are passed in). Events carry the transition,
the actor and the time, not the plan or the stage: the stage is counted from the decisions with the
catalog's stages (a decision that leaves the approval pending is one approval of the current stage),
and the expiry from the creation time and the action's time to live.
"""

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo

from pj_common.messages import ApprovalEvent, ApprovalStatus

from .catalog import ActionInfo, QuietHours, Route, StageInfo


class NoticeKind(StrEnum):
    PENDING = "pending"  # a stage waits for its approvers (the first, or the next after a stage was decided)
    APPROVED = "approved"
    REJECTED = "rejected"
    DISPATCHED = "dispatched"
    DISPATCH_FAILED = "dispatch_failed"
    EXPIRED = "expired"
    REMINDER = "reminder"
    ESCALATION = "escalation"


Audience = Literal["approvers", "requester", "escalation"]

AUDIENCE: dict[NoticeKind, Audience] = {
    NoticeKind.PENDING: "approvers", NoticeKind.REMINDER: "approvers", NoticeKind.ESCALATION: "escalation",
    NoticeKind.APPROVED: "requester", NoticeKind.REJECTED: "requester", NoticeKind.DISPATCHED: "requester",
    NoticeKind.DISPATCH_FAILED: "requester", NoticeKind.EXPIRED: "requester",
}

# The notice to the requester that an event ending in this status sends.
OUTCOME_NOTICE: dict[ApprovalStatus, NoticeKind] = {
    ApprovalStatus.APPROVED: NoticeKind.APPROVED,
    ApprovalStatus.REJECTED: NoticeKind.REJECTED,
    ApprovalStatus.DISPATCHED: NoticeKind.DISPATCHED,
    ApprovalStatus.DISPATCH_FAILED: NoticeKind.DISPATCH_FAILED,
    ApprovalStatus.EXPIRED: NoticeKind.EXPIRED,
}


@dataclass(frozen=True)
class Notice:
    """Something to tell an audience about an approval: `stage_index` is the stage it concerns."""

    kind: NoticeKind
    stage_index: int

    @property
    def audience(self) -> Audience:
        return AUDIENCE[self.kind]


@dataclass(frozen=True)
class Tracked:
    """The notifier's view of one approval, built from its events."""

    approval_id: str
    tenant_id: str
    action_id: str
    status: ApprovalStatus
    requester: str | None
    created_at: datetime | None
    expires_at: datetime | None
    stage_index: int
    stage_votes: int
    decided_by: tuple[str, ...]
    last_note: str | None
    updated_at: datetime  # when the latest event applied to the status happened
    remind_at: datetime | None  # the current stage's reminder, until sent or the approval leaves pending
    escalate_at: datetime | None
    plan_hash: str | None = None  # what the approvers decide on (every event carries it)

    def stage(self, action: ActionInfo) -> StageInfo | None:
        """The stage waiting for a decision, or None once every stage is decided."""
        return action.stages[self.stage_index] if self.stage_index < len(action.stages) else None


@dataclass(frozen=True)
class Timing:
    """The times that apply to an approval's stages: its time to live, reminder and escalation delays."""

    pending_ttl_s: float
    remind_after_s: float
    escalate_after_s: float | None  # None: no escalation group configured
    dispatch_window_s: float = 24 * 3600

    @classmethod
    def of(cls, action: ActionInfo, route: Route, *, pending_ttl_s: float, dispatch_window_s: float) -> "Timing":
        """The action's own times (catalog) over approvals' defaults, and the route's reminder times."""
        return cls(pending_ttl_s=action.pending_ttl or pending_ttl_s, remind_after_s=route.remind_after,
                   escalate_after_s=route.escalate_after if route.escalation_group() else None,
                   dispatch_window_s=action.dispatch_window or dispatch_window_s)


def _stage_started(state: Tracked, at: datetime, timing: Timing) -> Tracked:
    """A stage starts waiting at `at`: its reminder and escalation are counted from then."""
    return replace(state, remind_at=at + timedelta(seconds=timing.remind_after_s),
                   escalate_at=(at + timedelta(seconds=timing.escalate_after_s)
                                if timing.escalate_after_s is not None else None))


def _left_pending(state: Tracked, status: ApprovalStatus) -> Tracked:
    return replace(state, status=status, remind_at=None, escalate_at=None)


def new_tracked(event: ApprovalEvent) -> Tracked:
    """What is known of an approval before any of its events was applied (an event may overtake another)."""
    return Tracked(approval_id=event.approval_id, tenant_id=event.tenant_id, action_id=event.action_id,
                   status=event.from_status or event.to_status, requester=None, created_at=None, expires_at=None,
                   stage_index=0, stage_votes=0, decided_by=(), last_note=None, updated_at=event.occurred_at,
                   remind_at=None, escalate_at=None, plan_hash=event.plan_hash)


def apply_event(state: Tracked | None, event: ApprovalEvent, action: ActionInfo, *,
                timing: Timing) -> tuple[Tracked, list[Notice]]:
    """The approval after `event`, and the notices it calls for."""
    current = state or new_tracked(event)
    if event.plan_hash and current.plan_hash != event.plan_hash:
        current = replace(current, plan_hash=event.plan_hash)
    if event.type == "approval.created":
        return _created(current, event, timing)
    if event.type == "approval.decided":
        return _decided(current, event, action, timing=timing)
    return _moved(current, event, timing=timing)


def _created(state: Tracked, event: ApprovalEvent, timing: Timing) -> tuple[Tracked, list[Notice]]:
    created = replace(state, requester=event.actor, created_at=event.occurred_at,
                      expires_at=event.occurred_at + timedelta(seconds=timing.pending_ttl_s))
    if state.updated_at > event.occurred_at:  # a later event got here first: it knows the status better
        return created, []
    created = replace(created, status=event.to_status, updated_at=event.occurred_at)
    if event.to_status is not ApprovalStatus.PENDING:  # a launch-tier action: nobody decides it
        return created, []
    return _stage_started(created, event.occurred_at, timing), [Notice(NoticeKind.PENDING, 0)]


def _decided(state: Tracked, event: ApprovalEvent, action: ActionInfo, *,
             timing: Timing) -> tuple[Tracked, list[Notice]]:
    decided = replace(state, decided_by=(*state.decided_by, event.actor or "?"), last_note=event.note)
    if event.to_status is ApprovalStatus.PENDING:
        # One approval of the current stage, with more stages or approvals to come.
        votes = state.stage_votes + 1
        stage = state.stage(action)
        if stage is None or votes < stage.approvals_required:
            return replace(decided, stage_votes=votes), []
        advanced = replace(decided, stage_index=state.stage_index + 1, stage_votes=0)
        if state.status is not ApprovalStatus.PENDING:
            return advanced, []
        return _stage_started(advanced, event.occurred_at, timing), [Notice(NoticeKind.PENDING, advanced.stage_index)]
    return _moved(decided, event, timing=timing)


def _moved(state: Tracked, event: ApprovalEvent, *, timing: Timing) -> tuple[Tracked, list[Notice]]:
    if state.updated_at > event.occurred_at:
        return state, []
    moved = _left_pending(replace(state, updated_at=event.occurred_at), event.to_status)
    if event.type == "approval.decided" and event.to_status is ApprovalStatus.APPROVED:
        # Approval opens the dispatch window: from now on the approval expires at its end.
        moved = replace(moved, expires_at=event.occurred_at + timedelta(seconds=timing.dispatch_window_s))
    if event.to_status is ApprovalStatus.PENDING:  # not an edge of the state machine today; keep the stage
        return replace(moved, remind_at=state.remind_at, escalate_at=state.escalate_at), []
    notice = OUTCOME_NOTICE.get(event.to_status)
    return moved, [Notice(notice, state.stage_index)] if notice is not None else []


def due_nudges(state: Tracked, now: datetime) -> list[Notice]:
    """The reminder and escalation of the current stage that are due (once each, only while pending)."""
    if state.status is not ApprovalStatus.PENDING:
        return []
    due = []
    if state.remind_at is not None and state.remind_at <= now:
        due.append(Notice(NoticeKind.REMINDER, state.stage_index))
    if state.escalate_at is not None and state.escalate_at <= now:
        due.append(Notice(NoticeKind.ESCALATION, state.stage_index))
    return due


def is_quiet(quiet: QuietHours | None, now: datetime) -> bool:
    """True inside the tenant's quiet hours (a span may cross midnight: 22:00 to 07:00)."""
    if quiet is None:
        return False
    local = now.astimezone(ZoneInfo(quiet.timezone)).time().replace(tzinfo=None)
    if quiet.start <= quiet.end:
        return quiet.start <= local < quiet.end
    return local >= quiet.start or local < quiet.end
