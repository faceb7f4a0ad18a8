"""The approval state machine and the decision rules (pj_approvals.domain)."""

import itertools
import json
from typing import Any

import pytest

from pj_approvals.domain import (
    CLAIMED,
    TERMINAL_STATUSES,
    TRANSITIONS,
    DecisionOutcome,
    Rule,
    Stage,
    Transition,
    chain_view,
    check_may_dispatch,
    check_may_request,
    edge,
    evaluate_decision,
    may_find,
    next_status,
    sources_of,
    target_of,
)
from pj_common.auth import Principal, Role
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import ApprovalStatus

# The state machine written out independently of the module, so a change to TRANSITIONS shows here.
EXPECTED_EDGES: dict[tuple[str, Transition], str] = {
    ("pending", Transition.APPROVE): "approved",
    ("pending", Transition.REJECT): "rejected",
    ("pending", Transition.ADVANCE): "pending",
    ("pending", Transition.EXPIRE): "expired",
    ("approved", Transition.DISPATCH): "dispatching",
    ("approved", Transition.EXPIRE): "expired",
    ("dispatch_failed", Transition.DISPATCH): "dispatching",
    ("dispatching", Transition.COMPLETE): "dispatched",
    ("dispatching", Transition.FAIL): "dispatch_failed",
    ("dispatching", Transition.REISSUE): "dispatching",
}

STATUSES = tuple(ApprovalStatus)
ALL_PAIRS = list(itertools.product(STATUSES, list(Transition)))
FORBIDDEN_PAIRS = [pair for pair in ALL_PAIRS if pair not in EXPECTED_EDGES]


def _pair_id(pair: tuple[str, Transition]) -> str:
    return f"{pair[0]}-{pair[1].value}"


def test_status_and_transition_universe() -> None:
    assert STATUSES == (
        "pending", "approved", "rejected", "dispatching", "dispatched", "dispatch_failed", "expired",
    )
    assert {t.value for t in Transition} == {"approve", "reject", "advance", "expire", "dispatch", "complete",
                                             "fail", "reissue"}
    # 7 statuses x 8 transitions, 10 allowed.
    assert len(ALL_PAIRS) == 56
    assert len(FORBIDDEN_PAIRS) == 46


def test_transition_table_is_exactly_the_expected_one() -> None:
    assert TRANSITIONS == EXPECTED_EDGES


def test_every_status_in_the_table_is_a_known_status() -> None:
    for (source, _), target in TRANSITIONS.items():
        assert source in STATUSES
        assert target in STATUSES


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
    assert frozenset({"rejected", "dispatched", "expired"}) == TERMINAL_STATUSES
    for status in TERMINAL_STATUSES:
        for transition in Transition:
            with pytest.raises(GateError) as info:
                next_status(status, transition)
            assert info.value.code is ErrorCode.INVALID_STATE


def test_every_non_terminal_status_has_a_way_out() -> None:
    for status in set(STATUSES) - TERMINAL_STATUSES:
        assert any((status, t) in TRANSITIONS for t in Transition), status


@pytest.mark.parametrize(
    ("transition", "sources"),
    [
        (Transition.APPROVE, ("pending",)),
        (Transition.REJECT, ("pending",)),
        (Transition.ADVANCE, ("pending",)),
        (Transition.EXPIRE, ("approved", "pending")),
        (Transition.DISPATCH, ("approved", "dispatch_failed")),
        (Transition.COMPLETE, ("dispatching",)),
        (Transition.FAIL, ("dispatching",)),
        (Transition.REISSUE, ("dispatching",)),
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
    for status in STATUSES:
        try:
            next_status(status, transition)
        except GateError:
            continue
        allowed.add(status)
    assert set(sources_of(transition)) == allowed


def test_edge_is_the_one_source_and_its_target() -> None:
    assert edge(Transition.APPROVE) == (ApprovalStatus.PENDING, ApprovalStatus.APPROVED)
    assert edge(Transition.REJECT) == (ApprovalStatus.PENDING, ApprovalStatus.REJECTED)
    assert edge(Transition.ADVANCE) == (ApprovalStatus.PENDING, ApprovalStatus.PENDING)
    assert edge(Transition.COMPLETE) == (ApprovalStatus.DISPATCHING, ApprovalStatus.DISPATCHED)
    assert edge(Transition.FAIL) == (ApprovalStatus.DISPATCHING, ApprovalStatus.DISPATCH_FAILED)
    assert edge(Transition.REISSUE) == (ApprovalStatus.DISPATCHING, ApprovalStatus.DISPATCHING)
    for several in (Transition.EXPIRE, Transition.DISPATCH):  # more than one source: no single edge
        with pytest.raises(ValueError):
            edge(several)


def test_target_of_is_the_same_from_every_source() -> None:
    assert {t: target_of(t) for t in Transition} == {
        Transition.APPROVE: "approved", Transition.REJECT: "rejected", Transition.ADVANCE: "pending",
        Transition.EXPIRE: "expired", Transition.DISPATCH: "dispatching", Transition.COMPLETE: "dispatched",
        Transition.FAIL: "dispatch_failed", Transition.REISSUE: "dispatching"}


def test_the_claim_holds_in_dispatching() -> None:
    assert CLAIMED is ApprovalStatus.DISPATCHING


def test_table_and_helpers_speak_the_status_enum() -> None:
    for (source, _), target in TRANSITIONS.items():
        assert type(source) is ApprovalStatus and type(target) is ApprovalStatus
    assert all(type(s) is ApprovalStatus for s in TERMINAL_STATUSES)
    assert type(next_status("pending", Transition.APPROVE)) is ApprovalStatus


# ---------------------------------------------------------------- who may do what

ALICE_APPROVER = Principal(subject="alice", tenant="acme", role=Role.APPROVER)
BOB_ADMIN = Principal(subject="bob", tenant="acme", role=Role.ADMIN)
APPROVERS = frozenset({Role.ADMIN, Role.APPROVER})


def _p(subject: str, role: Role) -> Principal:
    return Principal(subject=subject, tenant="acme", role=role)


# One stage, admins or approvers, one approval (the shape of the catalog shorthand).
ONE = Rule(stages=(Stage("approval", APPROVERS),), dispatch_window_s=3600.0)
# Two stages: one approver reviews, then two distinct admins sign off.
TWO = Rule(stages=(Stage("review", frozenset({Role.APPROVER})), Stage("signoff", frozenset({Role.ADMIN}), 2)),
           dispatch_window_s=60.0)
# Two stages whose roles overlap, so the same person could (wrongly) decide in both.
OVERLAP = Rule(stages=(Stage("first", APPROVERS), Stage("second", frozenset({Role.ADMIN}))), dispatch_window_s=60.0)


def _decide(rule: Rule, principal: Principal, decision: str = "approved", *, stage_index: int = 0,
            stage_approvals: int = 0, requester: str = "carol", prior: tuple[str, ...] = ()) -> DecisionOutcome:
    return evaluate_decision(rule, principal, decision, stage_index=stage_index, stage_approvals=stage_approvals,
                             requester=requester, prior_deciders=prior)


def _raises(code: ErrorCode, rule: Rule, principal: Principal, decision: str = "approved", **kw: Any) -> GateError:
    with pytest.raises(GateError) as info:
        _decide(rule, principal, decision, **kw)
    assert info.value.code is code, info.value
    return info.value


def test_stage_defaults_to_one_approval() -> None:
    assert Stage("s", frozenset({Role.ADMIN})).approvals_required == 1


def test_decision_outcome_final() -> None:
    assert DecisionOutcome(ApprovalStatus.PENDING, 0, 1, "s").final is False
    assert DecisionOutcome(ApprovalStatus.APPROVED, 0, 1, "s").final is True
    assert DecisionOutcome(ApprovalStatus.REJECTED, 0, 0, "s").final is True


def test_decision_outcome_names_its_edge_of_the_table() -> None:
    assert DecisionOutcome(ApprovalStatus.PENDING, 0, 1, "s").transition is Transition.ADVANCE
    assert DecisionOutcome(ApprovalStatus.APPROVED, 0, 1, "s").transition is Transition.APPROVE
    assert DecisionOutcome(ApprovalStatus.REJECTED, 0, 0, "s").transition is Transition.REJECT
    for outcome in (_decide(TWO, ALICE_APPROVER), _decide(ONE, BOB_ADMIN), _decide(ONE, BOB_ADMIN, "rejected")):
        assert next_status(ApprovalStatus.PENDING, outcome.transition) == outcome.status
        assert type(outcome.status) is ApprovalStatus


# -- evaluate_decision: a single stage (the equivalent of the old check_may_decide rules)


@pytest.mark.parametrize("principal", [ALICE_APPROVER, BOB_ADMIN], ids=["approver", "admin"])
def test_single_stage_one_approval_approves(principal: Principal) -> None:
    outcome = _decide(ONE, principal)
    assert outcome == DecisionOutcome(ApprovalStatus.APPROVED, 0, 1, "approval")
    assert outcome.final


@pytest.mark.parametrize("principal", [ALICE_APPROVER, BOB_ADMIN], ids=["approver", "admin"])
def test_single_stage_one_rejection_rejects(principal: Principal) -> None:
    outcome = _decide(ONE, principal, "rejected")
    assert outcome == DecisionOutcome(ApprovalStatus.REJECTED, 0, 0, "approval")
    assert outcome.final


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.VIEWER])
@pytest.mark.parametrize("decision", ["approved", "rejected"])
def test_roles_outside_the_stage_are_forbidden(role: Role, decision: str) -> None:
    err = _raises(ErrorCode.FORBIDDEN, ONE, _p("dave", role), decision)
    assert "'approval'" in err.message
    assert "admin, approver" in err.message


def test_only_the_stage_roles_count() -> None:
    # An admin is not special when the stage names only approvers.
    rule = Rule(stages=(Stage("approval", frozenset({Role.APPROVER})),), dispatch_window_s=1.0)
    _raises(ErrorCode.FORBIDDEN, rule, BOB_ADMIN)
    _raises(ErrorCode.FORBIDDEN, rule, BOB_ADMIN, "rejected")
    assert _decide(rule, ALICE_APPROVER).status == "approved"


def test_a_stage_without_roles_forbids_everyone() -> None:
    rule = Rule(stages=(Stage("nobody", frozenset()),), dispatch_window_s=1.0)
    for role in Role:
        _raises(ErrorCode.FORBIDDEN, rule, _p("x", role))


@pytest.mark.parametrize("principal", [ALICE_APPROVER, BOB_ADMIN], ids=["approver", "admin"])
@pytest.mark.parametrize("decision", ["approved", "rejected"])
def test_the_requester_never_decides(principal: Principal, decision: str) -> None:
    err = _raises(ErrorCode.SELF_APPROVAL_FORBIDDEN, ONE, principal, decision, requester=principal.subject)
    assert "requester" in err.message


def test_the_requester_never_decides_in_a_later_stage() -> None:
    _raises(ErrorCode.SELF_APPROVAL_FORBIDDEN, TWO, BOB_ADMIN, stage_index=1, requester="bob", prior=("alice",))


def test_role_is_checked_before_self_approval() -> None:
    _raises(ErrorCode.FORBIDDEN, ONE, _p("olga", Role.OPERATOR), requester="olga")
    # An approver who requested is outside the signoff stage: forbidden, not self-approval.
    _raises(ErrorCode.FORBIDDEN, TWO, ALICE_APPROVER, stage_index=1, requester="alice")


def test_subjects_are_compared_exactly() -> None:
    # "Alice" is not "alice": no normalisation, so this is someone else's request and someone else's decision.
    assert _decide(ONE, ALICE_APPROVER, requester="Alice").status == "approved"
    assert _decide(ONE, ALICE_APPROVER, prior=("Alice", "alice ")).status == "approved"


def test_prior_deciders_may_be_any_iterable() -> None:
    # The service passes a generator over the stored decisions.
    with pytest.raises(GateError) as info:
        evaluate_decision(ONE, ALICE_APPROVER, "approved", stage_index=0, stage_approvals=0, requester="carol",
                          prior_deciders=(d for d in ["zed", "alice"]))
    assert info.value.code is ErrorCode.ALREADY_DECIDED
    assert evaluate_decision(ONE, ALICE_APPROVER, "approved", stage_index=0, stage_approvals=0, requester="carol",
                             prior_deciders=iter(["zed"])).status == "approved"


# -- evaluate_decision: several approvals and several stages


def test_a_stage_needs_its_number_of_approvals() -> None:
    rule = Rule(stages=(Stage("approval", APPROVERS, 3),), dispatch_window_s=1.0)
    assert _decide(rule, _p("a1", Role.ADMIN)) == DecisionOutcome(ApprovalStatus.PENDING, 0, 1, "approval")
    assert _decide(rule, _p("a2", Role.APPROVER), stage_approvals=1, prior=("a1",)) == DecisionOutcome(
        ApprovalStatus.PENDING, 0, 2, "approval")
    last = _decide(rule, _p("a3", Role.ADMIN), stage_approvals=2, prior=("a1", "a2"))
    assert last == DecisionOutcome(ApprovalStatus.APPROVED, 0, 3, "approval")
    assert last.final


def test_two_stages_walkthrough() -> None:
    # review: one approver.
    review = _decide(TWO, ALICE_APPROVER)
    # Moved on to the next stage; stage_name is the stage decided.
    assert review == DecisionOutcome(ApprovalStatus.PENDING, 1, 0, "review")
    assert not review.final
    # signoff: two distinct admins.
    first = _decide(TWO, BOB_ADMIN, stage_index=1, prior=("alice",))
    assert first == DecisionOutcome(ApprovalStatus.PENDING, 1, 1, "signoff")
    assert not first.final
    second = _decide(TWO, _p("dan", Role.ADMIN), stage_index=1, stage_approvals=1, prior=("alice", "bob"))
    assert second == DecisionOutcome(ApprovalStatus.APPROVED, 1, 2, "signoff")
    assert second.final


def test_three_stages_walkthrough() -> None:
    rule = Rule(stages=(Stage("a", frozenset({Role.APPROVER}), 2), Stage("b", frozenset({Role.ADMIN})),
                        Stage("c", APPROVERS, 2)), dispatch_window_s=1.0)
    steps = [("p1", Role.APPROVER), ("p2", Role.APPROVER), ("p3", Role.ADMIN), ("p4", Role.ADMIN),
             ("p5", Role.APPROVER)]
    expected = [("pending", 0, 1, "a"), ("pending", 1, 0, "a"), ("pending", 2, 0, "b"), ("pending", 2, 1, "c"),
                ("approved", 2, 2, "c")]
    index, count, prior = 0, 0, list[str]()
    for (subject, role), want in zip(steps, expected, strict=True):
        outcome = evaluate_decision(rule, _p(subject, role), "approved", stage_index=index, stage_approvals=count,
                                    requester="req", prior_deciders=prior)
        assert (outcome.status, outcome.stage_index, outcome.stage_approvals, outcome.stage_name) == want
        index, count = outcome.stage_index, outcome.stage_approvals
        prior.append(subject)


def test_approvals_must_be_distinct_people() -> None:
    # Bob already approved signoff once; a second approval from him does not count.
    err = _raises(ErrorCode.ALREADY_DECIDED, TWO, BOB_ADMIN, stage_index=1, stage_approvals=1,
                  prior=("alice", "bob"))
    assert "already decided" in err.message
    # Nor may he reject after approving.
    _raises(ErrorCode.ALREADY_DECIDED, TWO, BOB_ADMIN, "rejected", stage_index=1, stage_approvals=1,
            prior=("alice", "bob"))


def test_same_person_may_not_decide_in_two_stages() -> None:
    # Bob (admin) approved the first stage; he also has the second stage's role, but nobody counts twice.
    _raises(ErrorCode.ALREADY_DECIDED, OVERLAP, BOB_ADMIN, stage_index=1, prior=("bob",))
    _raises(ErrorCode.ALREADY_DECIDED, OVERLAP, BOB_ADMIN, "rejected", stage_index=1, prior=("bob",))
    # Another admin may.
    assert _decide(OVERLAP, _p("eve", Role.ADMIN), stage_index=1, prior=("bob",)).status == "approved"


@pytest.mark.parametrize(("stage_index", "stage_approvals", "principal", "stage_name"), [
    (0, 0, ALICE_APPROVER, "review"),
    (1, 0, BOB_ADMIN, "signoff"),
    (1, 1, BOB_ADMIN, "signoff"),
], ids=["first-stage", "second-stage-first-decision", "second-stage-after-an-approval"])
def test_one_rejection_rejects_in_any_stage(stage_index: int, stage_approvals: int, principal: Principal,
                                            stage_name: str) -> None:
    prior = ("zed",) * stage_index + ("yan",) * stage_approvals
    outcome = _decide(TWO, principal, "rejected", stage_index=stage_index, stage_approvals=stage_approvals,
                      prior=prior)
    assert outcome == DecisionOutcome(ApprovalStatus.REJECTED, stage_index, stage_approvals, stage_name)
    assert outcome.final


def test_roles_are_per_stage() -> None:
    # review is approvers only: an admin may not decide it, even though admins sign off later.
    err = _raises(ErrorCode.FORBIDDEN, TWO, BOB_ADMIN)
    assert "'review'" in err.message and "approver" in err.message
    # signoff is admins only: the approver who could review may not sign off.
    err = _raises(ErrorCode.FORBIDDEN, TWO, _p("amy", Role.APPROVER), stage_index=1, prior=("alice",))
    assert "'signoff'" in err.message and "admin" in err.message
    _raises(ErrorCode.FORBIDDEN, TWO, _p("amy", Role.APPROVER), "rejected", stage_index=1, prior=("alice",))


# ---------------------------------------------------------------- Rule JSON


def test_rule_to_json_document() -> None:
    rule = Rule(stages=(Stage("review", frozenset({Role.APPROVER, Role.ADMIN}), 2),
                        Stage("signoff", frozenset({Role.ADMIN}))), dispatch_window_s=7200.0)
    assert rule.to_json() == {
        "stages": [
            {"name": "review", "roles": ["admin", "approver"], "approvalsRequired": 2},
            {"name": "signoff", "roles": ["admin"], "approvalsRequired": 1},
        ],
        "dispatchWindowS": 7200.0,
    }


@pytest.mark.parametrize("rule", [ONE, TWO, OVERLAP,
                                  Rule(stages=(Stage("none", frozenset()),), dispatch_window_s=0.5)],
                         ids=["one", "two", "overlap", "no-roles"])
def test_rule_json_round_trip(rule: Rule) -> None:
    stored = json.loads(json.dumps(rule.to_json()))  # as it comes back from the database
    again = Rule.from_json(stored)
    assert again == rule
    assert again.to_json() == rule.to_json()
    for stage in again.stages:
        assert all(type(role) is Role for role in stage.roles)


def test_rule_from_json_coerces_numbers() -> None:
    rule = Rule.from_json({"stages": [{"name": "s", "roles": ["admin"], "approvalsRequired": 2}],
                           "dispatchWindowS": 60})
    assert rule == Rule(stages=(Stage("s", frozenset({Role.ADMIN}), 2),), dispatch_window_s=60.0)
    assert isinstance(rule.dispatch_window_s, float)


def test_rule_from_json_refuses_unknown_roles() -> None:
    with pytest.raises(ValueError):
        Rule.from_json({"stages": [{"name": "s", "roles": ["root"], "approvalsRequired": 1}],
                        "dispatchWindowS": 1})


# ---------------------------------------------------------------- chain_view


def _d(approver: str, role: str, stage_index: int, stage: str, decision: str = "approved",
       note: str | None = None) -> dict[str, Any]:
    return {"approverId": approver, "role": role, "stageIndex": stage_index, "stage": stage,
            "decision": decision, "note": note, "decidedAt": f"2024-01-01T00:00:0{stage_index}Z"}


def _states(view: list[dict[str, Any]]) -> list[str]:
    return [s["state"] for s in view]


def test_chain_view_fresh_pending() -> None:
    view = chain_view(TWO, "pending", stage_index=0, decisions=[])
    assert view == [
        {"name": "review", "roles": ["approver"], "approvalsRequired": 1, "state": "current", "approvals": 0,
         "decisions": []},
        {"name": "signoff", "roles": ["admin"], "approvalsRequired": 2, "state": "waiting", "approvals": 0,
         "decisions": []},
    ]


def test_chain_view_pending_in_second_stage_groups_decisions_by_stage() -> None:
    review = _d("alice", "approver", 0, "review", note="fine")
    signoff = _d("bob", "admin", 1, "signoff")
    view = chain_view(TWO, "pending", stage_index=1, decisions=[review, signoff])
    assert _states(view) == ["approved", "current"]
    assert [s["approvals"] for s in view] == [1, 1]
    assert view[0]["decisions"] == [review]
    assert view[1]["decisions"] == [signoff]
    assert view[0]["decisions"][0]["note"] == "fine"


def test_chain_view_keeps_decision_order_within_a_stage() -> None:
    rule = Rule(stages=(Stage("s", APPROVERS, 3),), dispatch_window_s=1.0)
    ds = [_d("b", "admin", 0, "s"), _d("a", "approver", 0, "s")]
    view = chain_view(rule, "pending", stage_index=0, decisions=ds)
    assert [d["approverId"] for d in view[0]["decisions"]] == ["b", "a"]
    assert view[0]["approvals"] == 2
    assert view[0]["state"] == "current"


def test_chain_view_three_stages_pending_in_the_middle() -> None:
    rule = Rule(stages=(Stage("a", APPROVERS), Stage("b", APPROVERS), Stage("c", APPROVERS)), dispatch_window_s=1.0)
    view = chain_view(rule, "pending", stage_index=1, decisions=[_d("x", "admin", 0, "a")])
    assert _states(view) == ["approved", "current", "waiting"]


@pytest.mark.parametrize("status", ["approved", "dispatching", "dispatched", "dispatch_failed"])
def test_chain_view_after_approval_every_stage_is_approved(status: str) -> None:
    ds = [_d("alice", "approver", 0, "review"), _d("bob", "admin", 1, "signoff"), _d("dan", "admin", 1, "signoff")]
    view = chain_view(TWO, status, stage_index=1, decisions=ds)
    assert _states(view) == ["approved", "approved"]
    assert [s["approvals"] for s in view] == [1, 2]


def test_chain_view_rejected_in_first_stage() -> None:
    rejection = _d("alice", "approver", 0, "review", "rejected", "no")
    view = chain_view(TWO, "rejected", stage_index=0, decisions=[rejection])
    assert _states(view) == ["rejected", "not_reached"]
    assert view[0]["approvals"] == 0  # a rejection is not an approval
    assert view[0]["decisions"] == [rejection]
    assert view[1]["decisions"] == []


def test_chain_view_rejected_in_second_stage_after_an_approval() -> None:
    ds = [_d("alice", "approver", 0, "review"), _d("bob", "admin", 1, "signoff"),
          _d("dan", "admin", 1, "signoff", "rejected")]
    view = chain_view(TWO, "rejected", stage_index=1, decisions=ds)
    assert _states(view) == ["approved", "rejected"]
    assert [s["approvals"] for s in view] == [1, 1]
    assert [d["decision"] for d in view[1]["decisions"]] == ["approved", "rejected"]


def test_chain_view_expired_while_pending() -> None:
    assert _states(chain_view(TWO, "expired", stage_index=0, decisions=[])) == ["expired", "not_reached"]
    view = chain_view(TWO, "expired", stage_index=1,
                      decisions=[_d("alice", "approver", 0, "review"), _d("bob", "admin", 1, "signoff")])
    assert _states(view) == ["approved", "expired"]
    assert [s["approvals"] for s in view] == [1, 1]


@pytest.mark.parametrize("rule", [ONE, TWO], ids=["one-stage", "two-stages"])
def test_chain_view_expired_after_approval_keeps_the_stages_approved(rule: Rule) -> None:
    # approved -> expired happens when the dispatch window lapses. stage_index stays on the last stage, and
    # that stage has all its approvals: it was approved, it did not expire waiting for a decision.
    ds = [_d("alice", "approver", 0, rule.stages[0].name)]
    if len(rule.stages) == 2:
        ds += [_d("bob", "admin", 1, "signoff"), _d("dan", "admin", 1, "signoff")]
    view = chain_view(rule, "expired", stage_index=len(rule.stages) - 1, decisions=ds)
    assert _states(view) == ["approved"] * len(rule.stages)


def test_chain_view_single_stage_states() -> None:
    assert _states(chain_view(ONE, "pending", stage_index=0, decisions=[])) == ["current"]
    rejected = chain_view(ONE, "rejected", stage_index=0, decisions=[_d("a", "admin", 0, "approval", "rejected")])
    assert _states(rejected) == ["rejected"]
    approved = chain_view(ONE, "approved", stage_index=0, decisions=[_d("a", "admin", 0, "approval")])
    assert _states(approved) == ["approved"]
    assert _states(chain_view(ONE, "expired", stage_index=0, decisions=[])) == ["expired"]


def test_check_may_request() -> None:
    requesters = frozenset({Role.ADMIN, Role.OPERATOR})
    check_may_request(Principal("o", "acme", Role.OPERATOR), requesters)  # allowed: no error
    check_may_request(Principal("a", "acme", Role.ADMIN), requesters)
    for role in (Role.APPROVER, Role.VIEWER):
        with pytest.raises(GateError) as info:
            check_may_request(Principal("x", "acme", role), requesters)
        assert info.value.code is ErrorCode.FORBIDDEN
        assert role.value in info.value.message


def test_check_may_dispatch() -> None:
    check_may_dispatch(BOB_ADMIN)  # allowed: no error
    for role in (Role.APPROVER, Role.OPERATOR, Role.VIEWER):
        with pytest.raises(GateError) as info:
            check_may_dispatch(Principal("x", "acme", role))
        assert info.value.code is ErrorCode.FORBIDDEN


# ---------------------------------------------------------------- who finds an approval


def test_an_approval_is_found_by_its_readers_its_requester_and_its_deciders() -> None:
    rule = Rule(stages=(Stage("review", frozenset({Role.APPROVER})),), dispatch_window_s=60)

    def finds(role: Role, subject: str) -> bool:
        return may_find(Principal(subject, "acme", role), requester="olga", rule=rule)

    assert finds(Role.ADMIN, "alice") and finds(Role.VIEWER, "vera") and finds(Role.APPROVER, "april")
    assert finds(Role.OPERATOR, "olga")  # the requester
    assert not finds(Role.OPERATOR, "oscar") and not finds(Role.SERVICE, "report-bot")
    deciding_operators = Rule(stages=(Stage("peer", frozenset({Role.OPERATOR})),), dispatch_window_s=60)
    assert may_find(Principal("oscar", "acme", Role.OPERATOR), requester="olga", rule=deciding_operators)
