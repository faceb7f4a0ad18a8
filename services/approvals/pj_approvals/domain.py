"""The approval state machine and the decision rules: pure functions, no I/O, no clock."""

from enum import StrEnum

from pj_common.auth import Principal, Role
from pj_common.errors import ErrorCode, GateError


class Transition(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    EXPIRE = "expire"
    DISPATCH = "dispatch"
    COMPLETE = "complete"
    FAIL = "fail"


# (from status, transition) -> to status. Anything not listed is forbidden.
TRANSITIONS: dict[tuple[str, Transition], str] = {
    ("pending", Transition.APPROVE): "approved",
    ("pending", Transition.REJECT): "rejected",
    ("pending", Transition.EXPIRE): "expired",
    ("approved", Transition.DISPATCH): "dispatching",
    ("approved", Transition.EXPIRE): "expired",
    ("dispatch_failed", Transition.DISPATCH): "dispatching",
    ("dispatching", Transition.COMPLETE): "dispatched",
    ("dispatching", Transition.FAIL): "dispatch_failed",
}

TERMINAL_STATUSES = frozenset({"rejected", "dispatched", "expired"})


def next_status(current: str, transition: Transition) -> str:
    """The status `transition` leads to from `current`; raises `invalid_state` if it is not allowed."""
    try:
        return TRANSITIONS[(current, transition)]
    except KeyError:
        raise GateError(
            ErrorCode.INVALID_STATE, f"cannot {transition.value} an approval that is {current}"
        ) from None


def sources_of(transition: Transition) -> tuple[str, ...]:
    """Every status from which `transition` is allowed (the WHERE clause of its compare-and-set)."""
    return tuple(sorted(src for (src, t) in TRANSITIONS if t is transition))


def decision_transition(status: str) -> Transition:
    return Transition.APPROVE if status == "approved" else Transition.REJECT


def check_may_request(principal: Principal, allowed: frozenset[Role]) -> None:
    if principal.role not in allowed:
        raise GateError(ErrorCode.FORBIDDEN, f"role {principal.role} may not request this action")


def check_may_decide(principal: Principal, requester: str, allowed: frozenset[Role]) -> None:
    """Only the rule's roles decide, and never on their own request (separation of duties)."""
    if principal.role not in allowed:
        raise GateError(ErrorCode.FORBIDDEN, f"role {principal.role} may not decide approvals")
    if principal.subject == requester:
        raise GateError(ErrorCode.SELF_APPROVAL_FORBIDDEN, "the requester may not decide their own request")


def check_may_dispatch(principal: Principal) -> None:
    if principal.role is not Role.ADMIN:
        raise GateError(ErrorCode.FORBIDDEN, "only an admin may dispatch")
