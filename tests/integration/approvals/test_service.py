"""The approvals service against the real PostgreSQL: CAS races, idempotency, rules, expiry."""

import asyncio
import logging
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pj_approvals import store
from pj_approvals.catalog import load_catalog
from pj_approvals.service import ApprovalService, DispatchStarted
from pj_approvals.settings import DEFAULT_CATALOG
from pj_common.auth import Principal, Role
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import (
    ApprovalView,
    AuditEntry,
    DecideRequest,
    DispatchPlan,
    DispatchRequest,
    DryRunPlan,
    ExecuteAccepted,
    ExecuteRequest,
    ListApprovals,
    StepReport,
    StepResult,
)


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def who(role: Role, tenant_id: str, sub: str | None = None) -> Principal:
    return Principal(subject=sub or f"{role}-{uuid.uuid4().hex[:6]}", tenant=tenant_id, role=role)


def webhook_request(request_id: str | None = None, payload: dict[str, Any] | None = None) -> ExecuteRequest:
    return ExecuteRequest(action_id="notify.webhook", request_id=request_id, payload=payload or {"n": 1})


async def create(svc: ApprovalService, principal: Principal, request: ExecuteRequest, correlation_id: str, *,
                 message_id: str | None = None) -> ExecuteAccepted:
    """Execute a governed request and return the stored approval's summary."""
    created = await svc.execute(principal, request, correlation_id, message_id=message_id)
    assert isinstance(created, ExecuteAccepted)
    return created


def audit_of(view: ApprovalView) -> list[AuditEntry]:
    assert view.audit is not None, "the audit trail was read"
    return view.audit


def results_of(view: ApprovalView) -> list[StepResult]:
    assert view.dispatch_result is not None, "the dispatch finished"
    return view.dispatch_result


def error_code(result: StepResult) -> str:
    assert result.error is not None, result
    return result.error.code


async def approved(svc: ApprovalService, request: ExecuteRequest) -> tuple[str, Principal, str]:
    """A new tenant, its admin, and an approval of `request` an operator asked for and the admin approved."""
    t = tenant()
    admin = who(Role.ADMIN, t)
    aid = (await create(svc, who(Role.OPERATOR, t), request, "c")).approval_id
    await svc.decide(admin, DecideRequest(approval_id=aid, status="approved"), "c")
    return t, admin, aid


async def outcome(coro: Any) -> Any:
    """The result, or the GateError code, of one concurrent call."""
    try:
        return await coro
    except GateError as exc:
        return exc.code


async def test_execute_stores_pending_approval_with_plan_and_audit(make_service: Any) -> None:
    svc: ApprovalService = make_service()
    t = tenant()
    op, admin = who(Role.OPERATOR, t), who(Role.ADMIN, t)
    created = await create(svc, op, webhook_request("r-1"), "cid-1")
    assert created.approval_status == "pending" and created.created is True
    view = await svc.get_approval(admin, created.approval_id)
    assert view.approval_status == "pending"
    assert view.plan_hash == created.plan_hash
    assert view.plan[0].connector == "webhook"
    assert [e.event for e in audit_of(view)] == ["approval.created"]
    assert audit_of(view)[0].correlation_id == "cid-1"


async def test_dry_run_stores_nothing(make_service: Any) -> None:
    svc: ApprovalService = make_service()
    t = tenant()
    op = who(Role.OPERATOR, t)
    plan = await svc.execute(op, ExecuteRequest(action_id="environment.create", mode="dry-run",
                                                payload={"name": "env-a"}), "c")
    assert isinstance(plan, DryRunPlan)
    assert plan.approval_required is False and len(plan.plan_hash) == 64
    listed = await svc.list_approvals(who(Role.ADMIN, t), ListApprovals())
    assert listed.total == 0


async def test_a_list_page_summarises_each_approval_unless_asked_in_full(make_service: Any) -> None:
    svc: ApprovalService = make_service()
    t = tenant()
    created = await create(svc, who(Role.OPERATOR, t), webhook_request("big", {"message": "x" * 10_000}), "c")
    admin = who(Role.ADMIN, t)
    (summary,) = (await svc.list_approvals(admin, ListApprovals())).approvals
    assert summary.id == created.approval_id and summary.payload is None and summary.plan is None
    assert summary.plan_hash == created.plan_hash  # what was decided on, still said
    (full,) = (await svc.list_approvals(admin, ListApprovals(full=True))).approvals
    assert full.payload == {"message": "x" * 10_000} and full.plan
    detail = await svc.get_approval(admin, created.approval_id)
    assert detail.payload == full.payload and detail.plan == full.plan


async def test_concurrent_duplicate_request_ids_create_one_approval(make_service: Any) -> None:
    svc: ApprovalService = make_service()
    t = tenant()
    op = who(Role.OPERATOR, t)
    results = await asyncio.gather(*(create(svc, op, webhook_request("same"), f"c{i}") for i in range(20)))
    assert len({r.approval_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    listed = await svc.list_approvals(who(Role.ADMIN, t), ListApprovals())
    assert listed.total == 1


async def test_reused_request_id_with_other_payload_conflicts(make_service: Any) -> None:
    svc: ApprovalService = make_service()
    op = who(Role.OPERATOR, tenant())
    await create(svc, op, webhook_request("r", {"a": 1}), "c")
    with pytest.raises(GateError) as err:
        await create(svc, op, webhook_request("r", {"a": 2}), "c")
    assert err.value.code == ErrorCode.IDEMPOTENCY_CONFLICT


async def test_fifty_concurrent_decisions_have_one_winner(make_service: Any) -> None:
    svc: ApprovalService = make_service()
    t = tenant()
    created = await create(svc, who(Role.OPERATOR, t), webhook_request(), "c")
    admins = [who(Role.ADMIN, t) for _ in range(50)]
    results = await asyncio.gather(*(outcome(svc.decide(a, DecideRequest(
        approval_id=created.approval_id, status="approved" if i % 2 else "rejected"), f"c{i}"))
        for i, a in enumerate(admins)))
    wins = [r for r in results if isinstance(r, ApprovalView)]
    assert len(wins) == 1
    assert Counter(r for r in results if not isinstance(r, ApprovalView)) == {ErrorCode.INVALID_STATE: 49}
    view = await svc.get_approval(admins[0], created.approval_id)
    assert view.approval_status == wins[0].approval_status
    assert [e.event for e in audit_of(view)] == ["approval.created", "approval.decided"]


async def test_fifty_concurrent_dispatches_have_one_winner(make_service: Any, outbox: Any) -> None:
    svc: ApprovalService = make_service()
    t = tenant()
    admin = who(Role.ADMIN, t)
    created = await create(svc, who(Role.OPERATOR, t), webhook_request(), "c")
    await svc.decide(admin, DecideRequest(approval_id=created.approval_id, status="approved"), "c")
    results = await asyncio.gather(*(outcome(svc.dispatch(admin, DispatchRequest(
        approval_id=created.approval_id), f"c{i}")) for i in range(50)))
    assert sum(isinstance(r, DispatchStarted) for r in results) == 1
    assert results.count(ErrorCode.INVALID_STATE) == 49
    assert len(await outbox.orders_of(created.approval_id)) == 1
    assert outbox.wakes == 1  # the relay was woken after the one commit that queued an order
    assert svc._metrics.consume_conflict._value.get() == 49  # the runbook's conflict counter


async def test_requester_cannot_decide_own_request_and_roles_are_enforced(make_service: Any) -> None:
    svc: ApprovalService = make_service()
    t = tenant()
    admin = who(Role.ADMIN, t)
    created = await create(svc, admin, webhook_request(), "c")  # an admin may request too
    with pytest.raises(GateError) as err:
        await svc.decide(admin, DecideRequest(approval_id=created.approval_id, status="approved"), "c")
    assert err.value.code == ErrorCode.SELF_APPROVAL_FORBIDDEN
    with pytest.raises(GateError) as err:
        await svc.decide(who(Role.VIEWER, t), DecideRequest(approval_id=created.approval_id,
                                                            status="approved"), "c")
    assert err.value.code == ErrorCode.FORBIDDEN
    with pytest.raises(GateError) as err:  # an operator cannot read another's request: not found, as on a read
        await svc.decide(who(Role.OPERATOR, t), DecideRequest(approval_id=created.approval_id,
                                                              status="approved"), "c")
    assert err.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(GateError) as err:
        await create(svc, who(Role.VIEWER, t), webhook_request(), "c")
    assert err.value.code == ErrorCode.FORBIDDEN


async def test_other_tenants_and_other_operators_see_404(make_service: Any) -> None:
    svc: ApprovalService = make_service()
    t = tenant()
    created = await create(svc, who(Role.OPERATOR, t, "bob"), webhook_request(), "c")
    aid = created.approval_id
    stranger = who(Role.ADMIN, tenant())
    for call in (svc.get_approval(stranger, aid),
                 svc.decide(stranger, DecideRequest(approval_id=aid, status="approved"), "c"),
                 svc.dispatch(stranger, DispatchRequest(approval_id=aid), "c"),
                 svc.get_approval(who(Role.OPERATOR, t, "carol"), aid)):
        assert await outcome(call) == ErrorCode.NOT_FOUND
    assert (await svc.get_approval(who(Role.VIEWER, t), aid)).id == aid
    assert (await svc.count_pending(stranger)).pending_count == 0
    assert (await svc.count_pending(who(Role.ADMIN, t))).pending_count == 1


async def test_list_is_newest_first_with_total_and_pending_count(make_service: Any, clock: Any) -> None:
    svc: ApprovalService = make_service()
    t = tenant()
    op = who(Role.OPERATOR, t)
    ids = []
    for i in range(5):
        clock.now += timedelta(seconds=1)
        ids.append((await create(svc, op, webhook_request(f"r{i}"), "c")).approval_id)
    admin = who(Role.ADMIN, t)
    await svc.decide(admin, DecideRequest(approval_id=ids[0], status="rejected"), "c")
    page = await svc.list_approvals(admin, ListApprovals(limit=2, offset=1))
    assert [a.id for a in page.approvals] == [ids[3], ids[2]]
    assert page.total == 5 and page.pending_count == 4
    pending = await svc.list_approvals(admin, ListApprovals(status="pending", limit=200))
    assert pending.total == 4 and ids[0] not in [a.id for a in pending.approvals]


async def test_sweeper_expires_stale_pending_and_undispatched_approvals(make_service: Any, clock: Any) -> None:
    svc: ApprovalService = make_service(pending_ttl_s=60, dispatch_window_s=120)
    t = tenant()
    op, admin = who(Role.OPERATOR, t), who(Role.ADMIN, t)
    stale = (await create(svc, op, webhook_request(), "c")).approval_id
    approved = (await create(svc, op, webhook_request(), "c")).approval_id
    await svc.decide(admin, DecideRequest(approval_id=approved, status="approved"), "c")
    clock.now += timedelta(seconds=61)
    fresh = (await create(svc, op, webhook_request(), "c")).approval_id
    # A pending approval past its TTL can no longer be decided, even before the sweeper runs.
    assert await outcome(svc.decide(admin, DecideRequest(approval_id=stale, status="approved"), "c")) \
        == ErrorCode.INVALID_STATE
    assert await svc.expire_due() >= 1
    assert (await svc.get_approval(admin, stale)).approval_status == "expired"
    assert (await svc.get_approval(admin, approved)).approval_status == "approved"
    assert (await svc.get_approval(admin, fresh)).approval_status == "pending"
    clock.now += timedelta(seconds=120)
    assert await svc.expire_due() >= 2
    assert (await svc.get_approval(admin, approved)).approval_status == "expired"
    view = await svc.get_approval(admin, fresh)
    assert view.approval_status == "expired"
    assert audit_of(view)[-1].event == "approval.expired"


async def test_step_reports_finish_the_dispatch_once(make_service: Any, outbox: Any) -> None:
    svc: ApprovalService = make_service()
    t, admin, aid = await approved(svc, webhook_request())
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    order = await outbox.last(aid)
    step = StepResult(step_id="post-webhook", connector="webhook", operation="post", status="succeeded",
                      attempts=1)
    stale = StepReport(approval_id=aid, tenant_id=t, claim_token=str(uuid.uuid4()), step=step,
                       plan_status="dispatched", results=[step])
    assert await svc.record_report(stale) is None
    final = StepReport(approval_id=aid, tenant_id=t, claim_token=order.claim_token, step=step,
                       plan_status="dispatched", results=[step])
    finished = await svc.record_report(final)
    assert finished is not None and finished.approval_status == "dispatched"
    assert await svc.record_report(final) is None  # a redelivered report changes nothing
    view = await svc.get_approval(admin, aid)
    assert results_of(view)[0].status == "succeeded"
    assert [e.event for e in audit_of(view)][-2:] == ["approval.dispatch.started",
                                                        "approval.dispatch.completed"]


async def test_failed_dispatch_can_be_redispatched_skipping_done_steps(make_service: Any, outbox: Any,
                                                                       pool: Any) -> None:
    svc: ApprovalService = make_service()
    t, admin, aid = await approved(svc, ExecuteRequest(action_id="environment.create",
                                                       payload={"name": "env-b"}))
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    order = await outbox.last(aid)
    ok = StepResult(step_id=order.steps[0].step_id, connector="github", operation="create_branch",
                    status="succeeded", attempts=1)
    bad = StepResult(step_id=order.steps[1].step_id, connector="github", operation="put_file",
                     status="failed", attempts=3)
    await svc.record_report(StepReport(approval_id=aid, tenant_id=t, claim_token=order.claim_token, step=ok,
                                       plan_status="running"))
    await svc.record_report(StepReport(approval_id=aid, tenant_id=t, claim_token=order.claim_token, step=bad,
                                       plan_status="dispatch_failed", results=[ok, bad]))
    assert (await svc.get_approval(admin, aid)).approval_status == "dispatch_failed"
    again = await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    assert isinstance(again, DispatchStarted)
    assert [c.step_id for c in (await outbox.last(aid)).completed] == [ok.step_id]


async def test_dispatch_refuses_a_plan_changed_since_approval(make_service: Any, pool: Any) -> None:
    svc: ApprovalService = make_service()
    _, admin, aid = await approved(svc, webhook_request())
    async with pool.connection() as conn:  # tamper with the stored plan behind the service's back
        await conn.execute("UPDATE approvals SET plan = jsonb_set(plan, '{0,params,body}', '\"evil\"')"
                           " WHERE id = %s", (uuid.UUID(aid),))
    assert await outcome(svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")) \
        == ErrorCode.PLAN_CHANGED
    assert (await svc.get_approval(admin, aid)).approval_status == "approved"
    async with pool.connection() as conn:
        assert await store.completed_steps(conn, uuid.UUID(aid)) == []


async def test_final_report_checkpoints_every_finished_step(make_service: Any, outbox: Any, pool: Any) -> None:
    """Even when a step's own running report was lost, the final report's results checkpoint it."""
    svc: ApprovalService = make_service()
    t, admin, aid = await approved(svc, ExecuteRequest(action_id="environment.create",
                                                       payload={"name": "env-c"}))
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    order = await outbox.last(aid)
    done = [StepResult(step_id=s.step_id, connector=s.connector, operation=s.operation, status="succeeded",
                       attempts=1) for s in order.steps[:2]]
    failed = StepResult(step_id=order.steps[2].step_id, connector="github", operation="open_pull_request",
                        status="failed", attempts=1)
    await svc.record_report(StepReport(approval_id=aid, tenant_id=t, claim_token=order.claim_token, step=failed,
                                       plan_status="dispatch_failed", results=[*done, failed]))
    async with pool.connection() as conn:
        checkpointed = await store.completed_steps(conn, uuid.UUID(aid))
    assert sorted(c["stepId"] for c in checkpointed) == sorted(d.step_id for d in done)


async def test_dispatch_answers_after_the_commit_with_its_order_in_the_outbox(
        make_service: Any, outbox: Any, clock: Any, pool: Any) -> None:
    """The order is written by the claim's own statement; the broker is not asked before the answer."""
    svc: ApprovalService = make_service(dispatch_lease_s=60)
    _, admin, aid = await approved(svc, webhook_request())
    wakes = outbox.wakes
    started = await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    assert isinstance(started, DispatchStarted) and started.data.approval_status == "dispatching"
    assert outbox.wakes == wakes + 1  # the relay is woken after the commit
    [order] = await outbox.orders_of(aid)
    async with pool.connection() as conn:
        row = await store.get_approval(conn, uuid.UUID(aid), order.tenant_id, operator_id=None, with_audit=False)
    assert row is not None and str(row.claim_token) == order.claim_token
    assert (order.attempt, order.lease_expires_at) == (1, clock.now + timedelta(seconds=60))
    assert [s.step_id for s in order.steps] == ["post-webhook"] and order.completed == []
    plan = await svc.dispatch_plan(aid, order.claim_token, "d-1")
    assert plan.lease_expires_at == order.lease_expires_at


def launch_service(make_service: Any, tmp_path: Path) -> ApprovalService:
    """A service whose catalog has a launch-tier action, `notify.now`."""
    data = yaml.safe_load(DEFAULT_CATALOG.read_text())
    data["actions"]["notify.now"] = {**data["actions"]["notify.webhook"], "tier": "launch"}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    svc: ApprovalService = make_service()
    svc.reload_catalog(load_catalog(path))
    return svc


async def test_launch_tier_execute_is_stored_claimed_with_its_order(
        make_service: Any, outbox: Any, tmp_path: Path) -> None:
    svc = launch_service(make_service, tmp_path)
    t = tenant()
    started = await svc.execute(who(Role.OPERATOR, t), ExecuteRequest(action_id="notify.now", request_id="l-1"), "c")
    assert isinstance(started, DispatchStarted) and isinstance(started.data, ExecuteAccepted)
    assert started.data.approval_status == "dispatching" and started.data.approval_required is False
    aid = started.data.approval_id
    order = await outbox.last(aid)
    assert (await svc.dispatch_plan(aid, order.claim_token, "d-1")).stale is False
    view = await svc.get_approval(who(Role.ADMIN, t), aid)
    assert [(e.event, e.from_status, e.to_status) for e in audit_of(view)] == [
        ("approval.created", None, "approved"), ("approval.dispatch.started", "approved", "dispatching")]
    assert view.approver_id == "policy:launch" and view.dispatched_at == view.created_at


async def test_launch_tier_execute_that_dies_after_its_insert_still_dispatches(
        make_service: Any, outbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies right after the insert commits: the approval must not stay approved with nobody
    dispatching it, and the retry with the same requestId finds it dispatching with its order queued."""
    svc = launch_service(make_service, tmp_path)
    real_insert = store.insert_approval

    async def insert_then_die(*args: Any, **kwargs: Any) -> Any:
        await real_insert(*args, **kwargs)
        raise ConnectionResetError("the approvals process died here")

    monkeypatch.setattr(store, "insert_approval", insert_then_die)
    op = who(Role.OPERATOR, tenant())
    request = ExecuteRequest(action_id="notify.now", request_id="launch-crash")
    with pytest.raises(ConnectionResetError):
        await svc.execute(op, request, "c")
    monkeypatch.setattr(store, "insert_approval", real_insert)
    retried = await svc.execute(op, request, "c")
    data = retried.data if isinstance(retried, DispatchStarted) else retried
    assert isinstance(data, ExecuteAccepted) and data.created is False
    assert data.approval_status == "dispatching"
    assert len(await outbox.orders_of(data.approval_id)) == 1


async def test_redelivered_execute_without_request_id_finds_its_approval(make_service: Any) -> None:
    svc: ApprovalService = make_service()
    op = who(Role.OPERATOR, tenant())
    first = await create(svc, op, webhook_request(), "c", message_id="message-1")
    again = await create(svc, op, webhook_request(), "c", message_id="message-1")
    other = await create(svc, op, webhook_request(), "c", message_id="message-2")
    assert first.approval_id == again.approval_id and again.created is False
    assert other.approval_id != first.approval_id


async def test_request_id_of_another_requester_conflicts(make_service: Any) -> None:
    svc: ApprovalService = make_service()
    t = tenant()
    await create(svc, who(Role.OPERATOR, t, "bob"), webhook_request("shared-id"), "c")
    with pytest.raises(GateError) as err:
        await create(svc, who(Role.OPERATOR, t, "carol"), webhook_request("shared-id"), "c")
    assert err.value.code == ErrorCode.IDEMPOTENCY_CONFLICT


async def test_failed_dispatch_cannot_be_retried_after_its_window(make_service: Any, outbox: Any,
                                                                  clock: Any) -> None:
    svc: ApprovalService = make_service(dispatch_window_s=60)
    t, admin, aid = await approved(svc, webhook_request())
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    step = StepResult(step_id="post-webhook", connector="webhook", operation="post", status="failed", attempts=4)
    await svc.record_report(StepReport(approval_id=aid, tenant_id=t, claim_token=(await outbox.last(aid)).claim_token,
                                       step=step, plan_status="dispatch_failed", results=[step]))
    clock.now += timedelta(seconds=61)
    assert await outcome(svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")) \
        == ErrorCode.INVALID_STATE
    assert (await svc.get_approval(admin, aid)).approval_status == "dispatch_failed"


async def test_dispatch_plan_is_given_only_for_the_current_claim(make_service: Any, outbox: Any) -> None:
    svc: ApprovalService = make_service()
    _, admin, aid = await approved(svc, webhook_request())
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    claim = (await outbox.last(aid)).claim_token
    plan = await svc.dispatch_plan(aid, claim, "d-1")
    assert plan.stale is False and [s.step_id for s in plan.steps] == ["post-webhook"]
    assert plan.completed == []
    forged = await svc.dispatch_plan(aid, str(uuid.uuid4()), "d-1")
    assert forged == DispatchPlan(stale=True, steps=[], completed=[])


async def test_a_claim_is_held_by_the_first_dispatcher_that_confirms_it(make_service: Any, outbox: Any) -> None:
    """Two dispatcher processes with copies of one order (the outbox publishes at least once): only the
    first to confirm it may run it, and only its lease renewals are granted."""
    svc: ApprovalService = make_service()
    _, admin, aid = await approved(svc, webhook_request())
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    claim = (await outbox.last(aid)).claim_token
    assert (await svc.dispatch_plan(aid, claim, "d-1")).stale is False
    assert (await svc.dispatch_plan(aid, claim, "d-2")) == DispatchPlan(stale=True)
    assert (await svc.renew_lease(aid, claim, "d-2")).granted is False
    assert (await svc.renew_lease(aid, claim, "d-1")).granted is True
    assert (await svc.dispatch_plan(aid, claim, "d-1")).stale is False  # its own copy, asked again


async def test_a_finished_dispatch_is_stale_for_its_holder_too(make_service: Any, outbox: Any) -> None:
    """A copy of the order delivered after the dispatch finished runs nothing, even at its holder."""
    svc: ApprovalService = make_service()
    t, admin, aid = await approved(svc, webhook_request())
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    claim = (await outbox.last(aid)).claim_token
    assert (await svc.dispatch_plan(aid, claim, "d-1")).stale is False
    step = StepResult(step_id="post-webhook", connector="webhook", operation="post", status="succeeded", attempts=1)
    await svc.record_report(StepReport(approval_id=aid, tenant_id=t, claim_token=claim, step=step,
                                       plan_status="dispatched", results=[step]))
    assert (await svc.get_approval(admin, aid)).approval_status == "dispatched"
    assert (await svc.dispatch_plan(aid, claim, "d-1")).stale is True
    assert (await svc.dispatch_plan(aid, claim, "d-2")).stale is True


async def test_a_dispatch_past_its_lease_is_reissued_with_its_checkpoints_then_failed_after_the_last_attempt(
        make_service: Any, outbox: Any, clock: Any) -> None:
    svc: ApprovalService = make_service(dispatch_lease_s=60, max_dispatch_attempts=3)
    t, admin, aid = await approved(svc, ExecuteRequest(action_id="environment.create",
                                                       payload={"name": "env-l"}))
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    first = await outbox.last(aid)
    assert (await svc.dispatch_plan(aid, first.claim_token, "d-1")).stale is False  # d-1 holds the first claim
    done = StepResult(step_id=first.steps[0].step_id, connector="github", operation="create_branch",
                      status="succeeded", attempts=1)
    clock.now += timedelta(seconds=50)
    await svc.record_report(StepReport(approval_id=aid, tenant_id=t, claim_token=first.claim_token, step=done,
                                       plan_status="running"))  # progress renews the lease
    clock.now += timedelta(seconds=50)
    await svc.reap_expired_leases()  # other tests' dispatches in this database may be past their lease
    assert await outbox.last(aid) == first  # its own lease still holds
    clock.now += timedelta(seconds=11)
    assert await svc.reap_expired_leases() >= 1
    second = await outbox.last(aid)
    assert (second.attempt, second.lease_expires_at) == (2, clock.now + timedelta(seconds=60))
    assert second.claim_token != first.claim_token and second.completed == [done]
    assert (await svc.dispatch_plan(aid, first.claim_token, "d-1")).stale is True  # the lapsed holder must stop
    assert (await svc.renew_lease(aid, first.claim_token, "d-1")).granted is False
    # the new claim has no holder yet: a new dispatcher takes it, and the old holder's copy of it is stale
    assert (await svc.dispatch_plan(aid, second.claim_token, "d-2")).stale is False
    assert (await svc.dispatch_plan(aid, second.claim_token, "d-1")).stale is True
    assert (await svc.renew_lease(aid, second.claim_token, "d-2")).granted is True
    view = await svc.get_approval(admin, aid)
    assert view.approval_status == "dispatching"
    assert (audit_of(view)[-1].event, audit_of(view)[-1].from_status) == ("approval.dispatch.started", "dispatching")
    clock.now += timedelta(seconds=61)
    await svc.reap_expired_leases()
    third = await outbox.last(aid)
    assert third.attempt == 3
    assert (await svc.dispatch_plan(aid, third.claim_token, "d-3")).stale is False  # d-3 takes the last attempt
    clock.now += timedelta(seconds=61)
    await svc.reap_expired_leases()  # the last attempt lapsed too
    view = await svc.get_approval(admin, aid)
    assert view.approval_status == "dispatch_failed"
    assert [(s.status, s.error.code if s.error else None) for s in results_of(view)] == [
        ("succeeded", None), ("failed", "outcome_unknown")] + [("not_run", "lease_expired")] * 3
    assert audit_of(view)[-1].event == "approval.dispatch.failed"
    assert len(await outbox.orders_of(aid)) == 3  # nothing more was queued
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")  # an admin may dispatch it again
    again = await outbox.last(aid)
    assert again.attempt == 1 and [c.step_id for c in again.completed] == [done.step_id]


async def test_an_order_no_dispatcher_took_is_reissued_as_the_same_attempt_and_never_failed(
        make_service: Any, outbox: Any, clock: Any) -> None:
    """A broker outage or a backlog longer than the attempts' leases: nothing ran, so nothing is failed."""
    svc: ApprovalService = make_service(dispatch_lease_s=60, max_dispatch_attempts=2)
    _, admin, aid = await approved(svc, webhook_request())
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    claims = {(await outbox.last(aid)).claim_token}
    for _ in range(4):  # twice the attempts, with no dispatcher taking any of the orders
        clock.now += timedelta(seconds=61)
        await svc.reap_expired_leases()
        order = await outbox.last(aid)
        assert order.attempt == 1
        claims.add(order.claim_token)
    assert len(claims) == 5  # re-issued each time (a lost order goes out again), under a new claim
    view = await svc.get_approval(admin, aid)
    assert view.approval_status == "dispatching"
    assert (await svc.dispatch_plan(aid, order.claim_token, "d-1")).stale is False  # and it still runs


async def test_reports_of_a_reissued_claim_and_repeated_reports_change_nothing(
        make_service: Any, outbox: Any, clock: Any, pool: Any) -> None:
    svc: ApprovalService = make_service(dispatch_lease_s=60)
    t, admin, aid = await approved(svc, webhook_request())
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    old = await outbox.last(aid)
    clock.now += timedelta(seconds=61)
    await svc.reap_expired_leases()
    new = await outbox.last(aid)
    assert new.claim_token != old.claim_token
    ok = StepResult(step_id="post-webhook", connector="webhook", operation="post", status="succeeded", attempts=1)

    def report(claim: str, plan_status: Any, step: StepResult = ok) -> StepReport:
        return StepReport(approval_id=aid, tenant_id=t, claim_token=claim, step=step, plan_status=plan_status,
                          results=[] if plan_status == "running" else [step])

    # The lapsed holder comes back late: neither its checkpoint nor its final report counts.
    assert await svc.record_report(report(old.claim_token, "running")) is None
    assert await svc.record_report(report(old.claim_token, "dispatched")) is None
    async with pool.connection() as conn:
        assert await store.completed_steps(conn, uuid.UUID(aid)) == []
    assert (await svc.get_approval(admin, aid)).approval_status == "dispatching"
    final = report(new.claim_token, "dispatched")
    finished = await svc.record_report(final)
    assert finished is not None and finished.approval_status == "dispatched"
    assert await svc.record_report(final) is None  # the same final report again
    failed = StepResult(step_id="post-webhook", connector="webhook", operation="post", status="failed", attempts=2)
    assert await svc.record_report(report(new.claim_token, "running", failed)) is None  # reordered after the final
    assert await svc.record_report(report(new.claim_token, "dispatch_failed", failed)) is None
    view = await svc.get_approval(admin, aid)
    assert view.approval_status == "dispatched" and results_of(view) == [ok]
    assert [e.event for e in audit_of(view)].count("approval.dispatch.completed") == 1
    async with pool.connection() as conn:
        assert [c["status"] for c in await store.completed_steps(conn, uuid.UUID(aid))] == ["succeeded"]


def _scoped(caplog: pytest.LogCaptureFixture, scope: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "scope", None) == scope]


async def test_dispatch_failed_at_its_lease_logs_the_runbook_scope(
        make_service: Any, outbox: Any, clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A lease expiry after the last attempt is a dispatch failure like any other: counted and logged as
    approval.dispatch.failed (a re-issue before it is logged as approval.dispatch.reissued)."""
    svc: ApprovalService = make_service(dispatch_lease_s=60, max_dispatch_attempts=2)
    _, admin, aid = await approved(svc, webhook_request())
    await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    assert (await svc.dispatch_plan(aid, (await outbox.last(aid)).claim_token, "d-1")).stale is False
    caplog.set_level(logging.INFO, logger="pj.approvals")
    clock.now += timedelta(seconds=61)
    assert await svc.reap_expired_leases() >= 1
    [reissued] = [r for r in _scoped(caplog, "approval.dispatch.reissued") if r.__dict__["approvalId"] == aid]
    assert reissued.levelno == logging.WARNING
    assert (await svc.dispatch_plan(aid, (await outbox.last(aid)).claim_token, "d-2")).stale is False
    clock.now += timedelta(seconds=61)
    assert await svc.reap_expired_leases() >= 1
    mine = [r for r in _scoped(caplog, "approval.dispatch.failed") if r.__dict__["approvalId"] == aid]
    assert [(r.levelno, r.__dict__["reason"]) for r in mine] == [(logging.WARNING, "lease_expired")]
    # Other tests' lapsed dispatches in this database may be failed (and counted) by the same pass.
    assert (svc._metrics.registry.get_sample_value("dispatch_failure_total", {"action_type": "notify.webhook"})
            or 0) >= 1


def listing_service(make_service: Any, tmp_path: Path, tenants: dict[str, Any]) -> ApprovalService:
    """A service whose catalog lists `tenants` and refuses every other one."""
    data = yaml.safe_load(DEFAULT_CATALOG.read_text())
    data["unlisted_tenants"] = "refuse"
    data["tenants"] = {"default": data["tenants"]["default"], **tenants}
    path = tmp_path / "listing.yaml"
    path.write_text(yaml.safe_dump(data))
    svc: ApprovalService = make_service()
    svc.reload_catalog(load_catalog(path))
    return svc


async def test_a_tenant_the_catalog_does_not_list_plans_nothing(make_service: Any, tmp_path: Path) -> None:
    listed, unlisted = tenant(), tenant()
    # The catalog's key in another spelling: tokens' tenants are canonical, so it is the same tenant.
    svc = listing_service(make_service, tmp_path, {listed.upper(): {}})
    await create(svc, who(Role.OPERATOR, listed), webhook_request(), "c")
    for mode in ("execute", "dry-run"):
        with pytest.raises(GateError) as err:
            await svc.execute(who(Role.ADMIN, unlisted), ExecuteRequest(action_id="notify.webhook", mode=mode), "c")
        assert err.value.code == ErrorCode.TENANT_NOT_CONFIGURED


async def test_a_tenant_taken_out_of_the_catalog_dispatches_nothing(make_service: Any, tmp_path: Path) -> None:
    _, admin, aid = await approved(make_service(), webhook_request())
    svc = listing_service(make_service, tmp_path, {"someone-else": {}})
    with pytest.raises(GateError) as err:
        await svc.dispatch(admin, DispatchRequest(approval_id=aid), "c")
    assert err.value.code == ErrorCode.TENANT_NOT_CONFIGURED
    assert (await svc.get_approval(admin, aid)).approval_status == "approved"
