"""The approval state machine and the decision rules (pj_approvals.domain)."""

import itertools

import pytest
from pj_approvals.domain import (
    TERMINAL_STATUSES,
    TRANSITIONS,
    Transition,
    check_may_decide,
    check_may_dispatch,
    check_may_request,
    decision_transition,
    next_status,
    sources_of,
)
from pj_common.auth import Principal, Role
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import APPROVAL_STATUSES

# The state machine written out independently of the module, so a change to TRANSITIONS shows here.
EXPECTED_EDGES: dict[tuple[str, Transition], str] = {
    ("pending", Transition.APPROVE): "approved",
    ("pending", Transition.REJECT): "rejected",
    ("pending", Transition.EXPIRE): "expired",
    ("approved", Transition.DISPATCH): "dispatching",
    ("approved", Transition.EXPIRE): "expired",
    ("dispatch_failed", Transition.DISPATCH): "dispatching",
    ("dispatching", Transition.COMPLETE): "dispatched",
    ("dispatching", Transition.FAIL): "dispatch_failed",
}

ALL_PAIRS = list(itertools.product(APPROVAL_STATUSES, list(Transition)))
FORBIDDEN_PAIRS = [pair for pair in ALL_PAIRS if pair not in EXPECTED_EDGES]


def _pair_id(pair: tuple[str, Transition]) -> str:
    return f"{pair[0]}-{pair[1].value}"


def test_status_and_transition_universe() -> None:
    assert APPROVAL_STATUSES == (
        "pending", "approved", "rejected", "dispatching", "dispatched", "dispatch_failed", "expired",
    )
    assert {t.value for t in Transition} == {"approve", "reject", "expire", "dispatch", "complete", "fail"}
    # 7 statuses x 6 transitions, 8 allowed.
    assert len(ALL_PAIRS) == 42
    assert len(FORBIDDEN_PAIRS) == 34


def test_transition_table_is_exactly_the_expected_one() -> None:
    assert TRANSITIONS == EXPECTED_EDGES


def test_every_status_in_the_table_is_a_known_status() -> None:
    for (source, _), target in TRANSITIONS.items():
        assert source in APPROVAL_STATUSES
        assert target in APPROVAL_STATUSES


@pytest.mark.parametrize(("edge", "target"), list(EXPECTED_EDGES.items()),
                         ids=[_pair_id(e) for e in EXPECTED_EDGES])
def test_allowed_edge(edge: tuple[str, Transition], target: str) -> None:
    source, transition = edge
    assert next_status(source, transition) == target


@pytest.mark.parametrize("pair", FORBIDDEN_PAIRS, ids=[_pair_id(p) for p in FORBIDDEN_PAIRS])
def test_forbidden_pair_raises_invalid_state(pair: tuple[str, Transition]) -> None:
    source, transition = pair
    with pytest.raises(GateError) as info:
        next_status(source, transition)
    assert info.value.code is ErrorCode.INVALID_STATE
    assert info.value.message == f"cannot {transition.value} an approval that is {source}"
    assert str(info.value) == info.value.message


def test_unknown_status_is_invalid_state() -> None:
    with pytest.raises(GateError) as info:
        next_status("bogus", Transition.APPROVE)
    assert info.value.code is ErrorCode.INVALID_STATE


def test_terminal_statuses_have_no_way_out() -> None:
    assert TERMINAL_STATUSES == frozenset({"rejected", "dispatched", "expired"})
    for status in TERMINAL_STATUSES:
        for transition in Transition:
            with pytest.raises(GateError) as info:
                next_status(status, transition)
            assert info.value.code is ErrorCode.INVALID_STATE


def test_every_non_terminal_status_has_a_way_out() -> None:
    for status in set(APPROVAL_STATUSES) - TERMINAL_STATUSES:
        assert any((status, t) in TRANSITIONS for t in Transition), status


@pytest.mark.parametrize(
    ("transition", "sources"),
    [
        (Transition.APPROVE, ("pending",)),
        (Transition.REJECT, ("pending",)),
        (Transition.EXPIRE, ("approved", "pending")),
        (Transition.DISPATCH, ("approved", "dispatch_failed")),
        (Transition.COMPLETE, ("dispatching",)),
        (Transition.FAIL, ("dispatching",)),
    ],
)
def test_sources_of(transition: Transition, sources: tuple[str, ...]) -> None:
    result = sources_of(transition)
    assert isinstance(result, tuple)
    assert result == sources
    assert list(result) == sorted(result)


@pytest.mark.parametrize("transition", list(Transition))
def test_sources_of_agrees_with_next_status(transition: Transition) -> None:
    allowed = set()
    for status in APPROVAL_STATUSES:
        try:
            next_status(status, transition)
        except GateError:
            continue
        allowed.add(status)
    assert set(sources_of(transition)) == allowed


def test_decision_transition() -> None:
    assert decision_transition("approved") is Transition.APPROVE
    assert decision_transition("rejected") is Transition.REJECT


# ---------------------------------------------------------------- who may do what

ALICE_APPROVER = Principal(subject="alice", tenant="acme", role=Role.APPROVER)
BOB_ADMIN = Principal(subject="bob", tenant="acme", role=Role.ADMIN)
APPROVERS = frozenset({Role.ADMIN, Role.APPROVER})


def test_check_may_decide_allows_a_rule_role_on_someone_elses_request() -> None:
    assert check_may_decide(ALICE_APPROVER, "carol", APPROVERS) is None
    assert check_may_decide(BOB_ADMIN, "carol", APPROVERS) is None


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.VIEWER])
def test_check_may_decide_forbids_roles_outside_the_rule(role: Role) -> None:
    principal = Principal(subject="dave", tenant="acme", role=role)
    with pytest.raises(GateError) as info:
        check_may_decide(principal, "carol", APPROVERS)
    assert info.value.code is ErrorCode.FORBIDDEN
    assert role.value in info.value.message


def test_check_may_decide_only_the_rule_roles_count() -> None:
    # An admin is not special when the rule names only approvers.
    with pytest.raises(GateError) as info:
        check_may_decide(BOB_ADMIN, "carol", frozenset({Role.APPROVER}))
    assert info.value.code is ErrorCode.FORBIDDEN


def test_check_may_decide_empty_rule_forbids_everyone() -> None:
    for role in Role:
        with pytest.raises(GateError) as info:
            check_may_decide(Principal(subject="x", tenant="acme", role=role), "carol", frozenset())
        assert info.value.code is ErrorCode.FORBIDDEN


@pytest.mark.parametrize("principal", [ALICE_APPROVER, BOB_ADMIN], ids=["approver", "admin"])
def test_check_may_decide_forbids_deciding_own_request(principal: Principal) -> None:
    with pytest.raises(GateError) as info:
        check_may_decide(principal, principal.subject, APPROVERS)
    assert info.value.code is ErrorCode.SELF_APPROVAL_FORBIDDEN


def test_check_may_decide_role_is_checked_before_self_approval() -> None:
    operator = Principal(subject="olga", tenant="acme", role=Role.OPERATOR)
    with pytest.raises(GateError) as info:
        check_may_decide(operator, "olga", APPROVERS)
    assert info.value.code is ErrorCode.FORBIDDEN


def test_check_may_decide_compares_subjects_exactly() -> None:
    # "Alice" is not "alice": no normalisation is applied, so this is someone else's request.
    assert check_may_decide(ALICE_APPROVER, "Alice", APPROVERS) is None


def test_check_may_request() -> None:
    requesters = frozenset({Role.ADMIN, Role.OPERATOR})
    assert check_may_request(Principal("o", "acme", Role.OPERATOR), requesters) is None
    assert check_may_request(Principal("a", "acme", Role.ADMIN), requesters) is None
    for role in (Role.APPROVER, Role.VIEWER):
        with pytest.raises(GateError) as info:
            check_may_request(Principal("x", "acme", role), requesters)
        assert info.value.code is ErrorCode.FORBIDDEN
        assert role.value in info.value.message


def test_check_may_dispatch() -> None:
    assert check_may_dispatch(BOB_ADMIN) is None
    for role in (Role.APPROVER, Role.OPERATOR, Role.VIEWER):
        with pytest.raises(GateError) as info:
            check_may_dispatch(Principal("x", "acme", role))
        assert info.value.code is ErrorCode.FORBIDDEN
