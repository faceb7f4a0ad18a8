"""The approval state machine and the decision rules: pure functions, no I/O, no clock."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pj_common.auth import Principal, Role
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import ApprovalStatus, StageState

S = ApprovalStatus


class Transition(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    # One more approval counted (or a stage passed) without finishing the rule: the approval stays
    # pending, but the decision is still a compare-and-set on the status, so the table names it.
    ADVANCE = "advance"
    EXPIRE = "expire"
    DISPATCH = "dispatch"
    COMPLETE = "complete"
    FAIL = "fail"
    # The reaper hands a dispatch whose lease ran out to a new claim (the next attempt): the approval
    # stays dispatching, but the claim token changes by compare-and-set, so the table names it.
    REISSUE = "reissue"


# (from status, transition) -> to status. Anything not listed is forbidden. Every compare-and-set in
# the store takes its `from` and `to` from here.
TRANSITIONS: dict[tuple[ApprovalStatus, Transition], ApprovalStatus] = {
    (S.PENDING, Transition.APPROVE): S.APPROVED,
    (S.PENDING, Transition.REJECT): S.REJECTED,
    (S.PENDING, Transition.ADVANCE): S.PENDING,
    (S.PENDING, Transition.EXPIRE): S.EXPIRED,
    (S.APPROVED, Transition.DISPATCH): S.DISPATCHING,
    (S.APPROVED, Transition.EXPIRE): S.EXPIRED,
    (S.DISPATCH_FAILED, Transition.DISPATCH): S.DISPATCHING,
    (S.DISPATCHING, Transition.COMPLETE): S.DISPATCHED,
    (S.DISPATCHING, Transition.FAIL): S.DISPATCH_FAILED,
    (S.DISPATCHING, Transition.REISSUE): S.DISPATCHING,
}

TERMINAL_STATUSES = frozenset({S.REJECTED, S.DISPATCHED, S.EXPIRED})

# The one status in which a claim token holds the dispatch (steps may be checkpointed, the plan read).
CLAIMED = TRANSITIONS[(S.APPROVED, Transition.DISPATCH)]


def next_status(current: str, transition: Transition) -> ApprovalStatus:
    """The status `transition` leads to from `current`; raises `invalid_state` if it is not allowed."""
    try:
        return TRANSITIONS[(ApprovalStatus(current), transition)]
    except (KeyError, ValueError):
        raise GateError(
            ErrorCode.INVALID_STATE, f"cannot {transition.value} an approval that is {current}"
        ) from None


def sources_of(transition: Transition) -> tuple[ApprovalStatus, ...]:
    """Every status from which `transition` is allowed (the WHERE clause of its compare-and-set)."""
    return tuple(sorted(src for (src, t) in TRANSITIONS if t is transition))


def target_of(transition: Transition) -> ApprovalStatus:
    """The one status `transition` leads to, whichever status it leaves."""
    (target,) = {to for (_, t), to in TRANSITIONS.items() if t is transition}
    return target


def edge(transition: Transition) -> tuple[ApprovalStatus, ApprovalStatus]:
    """(from, to) of a transition that leaves exactly one status: its compare-and-set's two ends."""
    (source,) = sources_of(transition)
    return source, TRANSITIONS[(source, transition)]


def check_may_request(principal: Principal, allowed: frozenset[Role]) -> None:
    if principal.role not in allowed:
        raise GateError(ErrorCode.FORBIDDEN, f"role {principal.role} may not request this action")


def check_may_dispatch(principal: Principal) -> None:
    if principal.role is not Role.ADMIN:
        raise GateError(ErrorCode.FORBIDDEN, "only an admin may dispatch")


# ---------------------------------------------------------------- approval rules


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of an approval chain: who may decide, and how many distinct approvals it needs."""

    name: str
    roles: frozenset[Role]
    approvals_required: int = 1


@dataclass(frozen=True, slots=True)
class Rule:
    """An approval rule as stored with each approval: sequential stages and the dispatch window."""

    stages: tuple[Stage, ...]
    dispatch_window_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": [{"name": s.name, "roles": sorted(s.roles), "approvalsRequired": s.approvals_required}
                       for s in self.stages],
            "dispatchWindowS": self.dispatch_window_s,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Rule":
        return cls(
            stages=tuple(Stage(s["name"], frozenset(Role(r) for r in s["roles"]), int(s["approvalsRequired"]))
                         for s in data["stages"]),
            dispatch_window_s=float(data["dispatchWindowS"]))


@dataclass(frozen=True, slots=True)
class DecisionOutcome:
    """Where one decision leaves the approval."""

    status: ApprovalStatus  # pending (more approvals needed), approved or rejected
    stage_index: int
    stage_approvals: int
    stage_name: str

    @property
    def final(self) -> bool:
        return self.status != S.PENDING

    @property
    def transition(self) -> Transition:
        """The edge of the table this decision takes (its compare-and-set's from and to)."""
        return _DECISION_TRANSITIONS[ApprovalStatus(self.status)]


_DECISION_TRANSITIONS = {S.APPROVED: Transition.APPROVE, S.REJECTED: Transition.REJECT, S.PENDING: Transition.ADVANCE}


def evaluate_decision(rule: Rule, principal: Principal, decision: str, *, stage_index: int, stage_approvals: int,
                      requester: str, prior_deciders: Iterable[str]) -> DecisionOutcome:
    """Apply one decision to a pending approval: one rejection rejects; a stage is done after its
    required number of distinct approvals; the approval is approved after its last stage."""
    stage = rule.stages[stage_index]
    if principal.role not in stage.roles:
        allowed = ", ".join(sorted(stage.roles))
        raise GateError(ErrorCode.FORBIDDEN, f"stage {stage.name!r} is decided by: {allowed}")
    if principal.subject == requester:
        raise GateError(ErrorCode.SELF_APPROVAL_FORBIDDEN, "the requester may not decide their own request")
    if principal.subject in set(prior_deciders):
        raise GateError(ErrorCode.ALREADY_DECIDED, "you already decided this approval; nobody counts twice")
    if decision == S.REJECTED:
        return DecisionOutcome(next_status(S.PENDING, Transition.REJECT), stage_index, stage_approvals, stage.name)
    count = stage_approvals + 1
    if count < stage.approvals_required:
        return DecisionOutcome(next_status(S.PENDING, Transition.ADVANCE), stage_index, count, stage.name)
    if stage_index + 1 < len(rule.stages):
        return DecisionOutcome(next_status(S.PENDING, Transition.ADVANCE), stage_index + 1, 0, stage.name)
    return DecisionOutcome(next_status(S.PENDING, Transition.APPROVE), stage_index, count, stage.name)


# Statuses an approval reaches only after every stage approved it.
_PAST_APPROVAL = frozenset({S.APPROVED, S.DISPATCHING, S.DISPATCHED, S.DISPATCH_FAILED})


def chain_view(rule: Rule, status: str, *, stage_index: int, decisions: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """Each stage with its state (approved, current, waiting, rejected, expired) and its decisions.

    A stage's state is the contract's `StageState`, its own small vocabulary next to the approval's status.
    """
    stages = []
    for index, stage in enumerate(rule.stages):
        made = [d for d in decisions if d["stageIndex"] == index]
        approvals = sum(d["decision"] == S.APPROVED for d in made)
        state: StageState
        if any(d["decision"] == S.REJECTED for d in made):
            state = "rejected"
        elif index < stage_index or status in _PAST_APPROVAL or approvals >= stage.approvals_required:
            state = "approved"
        elif status == S.PENDING:
            state = "current" if index == stage_index else "waiting"
        else:
            state = "expired" if status == S.EXPIRED and index == stage_index else "not_reached"
        stages.append({"name": stage.name, "roles": sorted(stage.roles),
                       "approvalsRequired": stage.approvals_required, "state": state,
                       "approvals": approvals, "decisions": made})
    return stages


def may_find(principal: Principal, *, requester: str, rule: Rule) -> bool:
    """Whether an approval of the caller's tenant exists for the caller: it may read it (its whole
    tenant, or its own request) or decide one of its stages. For anyone else it is not found, on a
    decision as on a read, so a refused decision never tells who requested what."""
    return (principal.sees_whole_tenant or principal.subject == requester
            or any(principal.role in stage.roles for stage in rule.stages))
