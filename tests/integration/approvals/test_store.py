"""Every statement of pj_approvals.store against the real PostgreSQL: each compare-and-set wins once
and answers None (or False) when it loses."""

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from pj_approvals import store
from pj_approvals.domain import CLAIMED, Transition, edge, next_status, sources_of, target_of
from pj_common.messages import ApprovalStatus, StepResult, StepStatus

S = ApprovalStatus
# The real time, give or take the session's length: the end-to-end system may share this database, and
# its event relay waits at a gap in event ids while the event after it is younger than the grace period,
# so an event stamped in the future would hold it up. Every sweep here runs at T0 as the real sweeper
# would (due rows of other tests may be swept too, which changes nothing they assert).
T0 = datetime.now(UTC)
PLAN = [{"stepId": "one", "connector": "webhook", "operation": "post", "params": {}},
        {"stepId": "two", "connector": "webhook", "operation": "post", "params": {}}]


@pytest.fixture
async def conn(pool: AsyncConnectionPool[Any]) -> AsyncIterator[store.Conn]:
    async with pool.connection() as c:
        yield c


def new_row(tenant: str, *, status: ApprovalStatus = S.PENDING, request_id: str | None = None,
            operator: str = "olga", expires_at: datetime = T0 + timedelta(hours=1)) -> store.ApprovalRow:
    return store.ApprovalRow(
        id=uuid.uuid4(), tenant_id=tenant, request_id=request_id or uuid.uuid4().hex, operator_id=operator,
        action_id="notify.webhook", payload={"n": 1}, request_hash="rh", approval_status=status, approver_id=None,
        approval_note=None, plan=PLAN, plan_hash="ph", dispatch_result=None, claim_token=None, created_at=T0,
        updated_at=T0, decided_at=None, dispatched_at=None, finished_at=None, expires_at=expires_at,
        approval_rule={"stages": [{"name": "approval", "roles": ["admin"], "approvalsRequired": 1}],
                       "dispatchWindowS": 3600})


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def created(at: datetime = T0) -> store.EventRecord:
    return store.EventRecord(event_type="approval.created", at=at, actor="olga", actor_role="operator",
                             correlation_id="cid")


async def insert(conn: store.Conn, row: store.ApprovalRow) -> store.ApprovalRow:
    inserted = await store.insert_approval(conn, row, created(row.created_at))
    assert inserted is not None
    return inserted


def decision(approver: str = "adam", *, final: bool = True, window: datetime | None = None) -> store.Decision:
    return store.Decision(approver_id=approver, approver_role="admin", decision="approved", note="ok",
                          stage_name="approval", to_stage_index=0, to_stage_approvals=1, final=final,
                          dispatch_expires_at=window)


async def approve(conn: store.Conn, row: store.ApprovalRow, at: datetime = T0) -> store.ApprovalRow:
    from_status, to_status = edge(Transition.APPROVE)
    approved = await store.record_decision(
        conn, row, decision(window=at + timedelta(hours=2)), from_status=from_status, to_status=to_status,
        event=store.EventRecord(event_type="approval.decided", at=at, actor="adam", actor_role="admin"))
    assert approved is not None
    return approved


async def claim(conn: store.Conn, row: store.ApprovalRow, *, at: datetime = T0,
                lease: timedelta = timedelta(minutes=15)) -> tuple[store.ApprovalRow | None, uuid.UUID]:
    token = uuid.uuid4()
    claimed = await store.claim_for_dispatch(
        conn, row, from_status=row.approval_status, to_status=next_status(row.approval_status, Transition.DISPATCH),
        order=order(token, at + lease),
        event=store.EventRecord(event_type="approval.dispatch.started", at=at, actor="adam", actor_role="admin"))
    return claimed, token


# No relay publishes this queue: the orders the tests here queue stay in the outbox to be looked at.
QUEUE = "pj-store-tests.dispatch"


def order(token: uuid.UUID, lease: datetime, attempt: int = 1) -> store.QueuedOrder:
    return store.QueuedOrder(claim_token=token, attempt=attempt, lease_expires_at=lease, queue=QUEUE,
                             body=f'{{"claimToken": "{token}"}}'.encode())


def step(step_id: str, status: StepStatus = "succeeded") -> StepResult:
    return StepResult(step_id=step_id, connector="webhook", operation="post", status=status, attempts=1)


async def finish(conn: store.Conn, row: store.ApprovalRow, token: uuid.UUID, transition: Transition,
                 results: list[StepResult]) -> store.ApprovalRow | None:
    from_status, to_status = edge(transition)
    return await store.finish_dispatch(
        conn, row.id, token, from_status=from_status, to_status=to_status,
        results=[r.model_dump(by_alias=True, mode="json") for r in results],
        event=store.EventRecord(event_type="approval.dispatch.completed", at=T0))


# ---------------------------------------------------------------- insert and reads


async def test_insert_once_per_request_id_with_its_created_event(conn: store.Conn) -> None:
    t = tenant()
    row = new_row(t, request_id="r-1")
    inserted = await insert(conn, row)
    assert inserted.approval_status is S.PENDING
    assert (inserted.id, inserted.plan, inserted.expires_at) == (row.id, PLAN, row.expires_at)
    assert await store.insert_approval(conn, new_row(t, request_id="r-1"), created()) is None
    found = await store.find_by_request(conn, t, "r-1")
    assert found is not None and found.id == row.id
    assert await store.find_by_request(conn, t, "r-2") is None
    read = await store.get_approval(conn, row.id, t, operator_id=None)
    assert read is not None and read.audit is not None
    assert [(e["event"], e["from"], e["to"], e["correlationId"]) for e in read.audit] == [
        ("approval.created", None, "pending", "cid")]


async def test_get_approval_is_scoped_to_tenant_and_owner(conn: store.Conn) -> None:
    t = tenant()
    row = await insert(conn, new_row(t, operator="bob"))
    assert await store.get_approval(conn, row.id, tenant(), operator_id=None) is None
    assert await store.get_approval(conn, row.id, t, operator_id="carol") is None
    mine = await store.get_approval(conn, row.id, t, operator_id="bob", with_audit=False, with_decisions=True)
    assert mine is not None and mine.audit is None and mine.decisions == []


async def test_list_and_count_pending(conn: store.Conn) -> None:
    t = tenant()
    rows = [await insert(conn, new_row(t, operator="bob" if i else "carol")) for i in range(3)]
    await insert(conn, new_row(t, expires_at=T0 - timedelta(seconds=1)))  # pending, but past its TTL
    await approve(conn, rows[0])
    page, total, pending = await store.list_approvals(conn, t, None, status=S.PENDING, limit=10, offset=0, now=T0)
    assert {r.id for r in page} >= {rows[1].id, rows[2].id} and total == 3 and pending == 2
    page, total, pending = await store.list_approvals(conn, t, "bob", status=None, limit=1, offset=0, now=T0)
    assert len(page) == 1 and total == 2 and pending == 2
    assert all(type(r.approval_status) is ApprovalStatus for r in page)
    assert await store.count_pending(conn, t, None, now=T0) == 2
    assert await store.count_pending(conn, t, "carol", now=T0) == 0
    assert await store.count_pending(conn, None, None, now=T0) >= 2


# ---------------------------------------------------------------- decide


async def test_record_decision_wins_once(conn: store.Conn) -> None:
    t = tenant()
    row = await insert(conn, new_row(t))
    approved = await approve(conn, row)
    assert approved.approval_status is S.APPROVED and approved.approver_id == "adam"
    assert approved.expires_at == T0 + timedelta(hours=2)  # the dispatch window replaced the TTL
    assert approved.audit is not None and approved.audit[-1]["from"] == "pending"
    from_status, to_status = edge(Transition.APPROVE)
    again = await store.record_decision(  # the same seen row: the approval is no longer pending
        conn, row, decision("alice"), from_status=from_status, to_status=to_status,
        event=store.EventRecord(event_type="approval.decided", at=T0))
    assert again is None


async def test_record_decision_loses_to_a_concurrent_stage_change_or_the_ttl(conn: store.Conn) -> None:
    t = tenant()
    row = await insert(conn, new_row(t))
    from_status, to_status = edge(Transition.ADVANCE)
    advanced = await store.record_decision(
        conn, row, store.Decision(approver_id="sam", approver_role="admin", decision="approved", note=None,
                                  stage_name="approval", to_stage_index=0, to_stage_approvals=1, final=False),
        from_status=from_status, to_status=to_status, event=store.EventRecord(event_type="approval.decided", at=T0))
    assert advanced is not None and advanced.approval_status is S.PENDING and advanced.stage_approvals == 1
    assert advanced.approver_id is None and advanced.expires_at == row.expires_at
    # `row` was seen at count 0; the approval is at 1 now.
    assert await approve_or_none(conn, row, T0) is None
    late = T0 + timedelta(hours=2)  # past the TTL
    assert await approve_or_none(conn, advanced, late) is None


async def approve_or_none(conn: store.Conn, seen: store.ApprovalRow, at: datetime) -> store.ApprovalRow | None:
    from_status, to_status = edge(Transition.APPROVE)
    return await store.record_decision(conn, seen, decision("zoe"), from_status=from_status, to_status=to_status,
                                       event=store.EventRecord(event_type="approval.decided", at=at))


async def test_one_person_deciding_twice_hits_the_primary_key(conn: store.Conn) -> None:
    row = await insert(conn, new_row(tenant()))
    from_status, to_status = edge(Transition.ADVANCE)
    advance = store.Decision(approver_id="sam", approver_role="admin", decision="approved", note=None,
                             stage_name="approval", to_stage_index=0, to_stage_approvals=1, final=False)
    seen = await store.record_decision(conn, row, advance, from_status=from_status, to_status=to_status,
                                       event=store.EventRecord(event_type="approval.decided", at=T0))
    assert seen is not None
    again = store.Decision(approver_id="sam", approver_role="admin", decision="approved", note=None,
                           stage_name="approval", to_stage_index=0, to_stage_approvals=2, final=False)
    with pytest.raises(psycopg.errors.UniqueViolation):
        await store.record_decision(conn, seen, again, from_status=from_status, to_status=to_status,
                                    event=store.EventRecord(event_type="approval.decided", at=T0))


# ---------------------------------------------------------------- dispatch


async def test_claim_for_dispatch_wins_once_with_its_one_order(conn: store.Conn) -> None:
    approved = await approve(conn, await insert(conn, new_row(tenant())))
    claimed, token = await claim(conn, approved)
    assert claimed is not None and claimed.approval_status is CLAIMED and claimed.claim_token == token
    lost, _ = await claim(conn, approved)  # `approved` still says approved; the row is dispatching
    assert lost is None
    # The order was queued by the winning statement, and by it alone.
    assert await store.queued_orders(conn, approved.id) == [f'{{"claimToken": "{token}"}}'.encode()]


async def test_insert_of_a_launch_tier_approval_claims_it_and_queues_its_order(conn: store.Conn) -> None:
    t = tenant()
    token = uuid.uuid4()
    row = dataclasses.replace(new_row(t, request_id="launch-1"), approval_status=CLAIMED, approver_id="policy",
                              decided_at=T0, dispatched_at=T0, claim_token=token)
    launch = store.Launch(approved_status=S.APPROVED, order=order(token, T0 + timedelta(minutes=1)))
    inserted = await store.insert_approval(conn, row, created(), launch=launch)
    assert inserted is not None and inserted.approval_status is CLAIMED and inserted.claim_token == token
    assert await store.queued_orders(conn, row.id) == [launch.order.body]
    plan = await store.claimed_plan(conn, row.id, token, holder="d-1", held_status=CLAIMED)
    assert plan is not None and plan.lease_expires_at == T0 + timedelta(minutes=1)
    again = dataclasses.replace(row, id=uuid.uuid4())  # the same requestId: nothing inserted, nothing queued
    assert await store.insert_approval(conn, again, created(), launch=launch) is None
    assert await store.queued_orders(conn, again.id) == []
    read = await store.get_approval(conn, row.id, t, operator_id=None)
    assert read is not None and read.audit is not None
    assert [(e["event"], e["from"], e["to"]) for e in read.audit] == [
        ("approval.created", None, "approved"), ("approval.dispatch.started", "approved", "dispatching")]


async def test_outbox_rows_are_taken_by_one_relay_until_their_claim_runs_out(conn: store.Conn) -> None:
    queue = f"pj-take-{uuid.uuid4().hex[:8]}.dispatch"
    approved = await approve(conn, await insert(conn, new_row(tenant())))
    token = uuid.uuid4()
    queued_order = dataclasses.replace(order(token, T0 + timedelta(minutes=1)), queue=queue)
    assert await store.claim_for_dispatch(
        conn, approved, from_status=S.APPROVED, to_status=CLAIMED, order=queued_order,
        event=store.EventRecord(event_type="approval.dispatch.started", at=T0)) is not None
    [taken] = await store.take_outbox(conn, queue=queue, batch=10, hold_s=0.3)
    assert (taken.approval_id, taken.body) == (approved.id, queued_order.body)
    assert await store.take_outbox(conn, queue=queue, batch=10, hold_s=0.3) == []  # claimed
    await store.release_outbox(conn, [taken.id])  # the publish failed: free again at once
    assert [r.id for r in await store.take_outbox(conn, queue=queue, batch=10, hold_s=0.3)] == [taken.id]
    await store.delete_outbox(conn, [taken.id])  # the broker confirmed it
    assert await store.queued_orders(conn, approved.id) == []


async def test_claim_for_dispatch_loses_when_the_plan_changed_or_the_window_passed(conn: store.Conn) -> None:
    approved = await approve(conn, await insert(conn, new_row(tenant())))
    tampered = dataclasses.replace(approved, plan=PLAN[:1])
    assert (await claim(conn, tampered))[0] is None
    assert (await claim(conn, approved, at=T0 + timedelta(hours=3)))[0] is None  # the window ended at T0 + 2h
    assert (await claim(conn, approved))[0] is not None


async def test_steps_are_checkpointed_only_for_the_current_claim(conn: store.Conn) -> None:
    approved = await approve(conn, await insert(conn, new_row(tenant())))
    claimed, token = await claim(conn, approved)
    assert claimed is not None

    async def record(claim_token: uuid.UUID, result: StepResult) -> bool:
        return await store.record_step(conn, approval_id=approved.id, claim_token=claim_token, held_status=CLAIMED,
                                       step=result, now=T0, lease_expires_at=T0 + timedelta(minutes=30))

    assert await record(token, step("one")) is True
    assert await record(uuid.uuid4(), step("two")) is False  # a stale claim
    assert [s["stepId"] for s in await store.completed_steps(conn, approved.id)] == ["one"]
    plan = await store.claimed_plan(conn, approved.id, token, holder="d-1", held_status=CLAIMED)
    assert plan is not None and plan.plan == PLAN and [c["stepId"] for c in plan.completed] == ["one"]
    assert plan.lease_expires_at == T0 + timedelta(minutes=30)  # renewed by the checkpoint
    assert await store.claimed_plan(conn, approved.id, uuid.uuid4(), holder="d-1", held_status=CLAIMED) is None
    assert await store.claimed_plan(conn, approved.id, token, holder="d-1", held_status=S.APPROVED) is None


async def test_a_claim_is_taken_by_the_first_holder_that_confirms_it(conn: store.Conn) -> None:
    approved = await approve(conn, await insert(conn, new_row(tenant())))
    claimed, token = await claim(conn, approved)
    assert claimed is not None
    first = await store.claimed_plan(conn, approved.id, token, holder="d-1", held_status=CLAIMED)
    assert first is not None and first.plan == PLAN
    # A copy of the same order confirmed by another dispatcher process: stale, it runs nothing.
    assert await store.claimed_plan(conn, approved.id, token, holder="d-2", held_status=CLAIMED) is None
    # The holder asking again (its own order redelivered to it) still holds the claim.
    assert await store.claimed_plan(conn, approved.id, token, holder="d-1", held_status=CLAIMED) is not None


async def test_concurrent_confirmations_of_one_claim_give_it_to_one_holder(pool: AsyncConnectionPool[Any]) -> None:
    async with pool.connection() as setup:
        approved = await approve(setup, await insert(setup, new_row(tenant())))
        claimed, token = await claim(setup, approved)
        assert claimed is not None

    async def confirm(holder: str) -> bool:
        async with pool.connection() as c:
            return await store.claimed_plan(c, approved.id, token, holder=holder, held_status=CLAIMED) is not None

    taken = await asyncio.gather(*(confirm(f"d-{i}") for i in range(8)))
    assert sum(taken) == 1


async def test_renew_lease_extends_only_the_holding_claim_and_never_shortens(conn: store.Conn) -> None:
    approved = await approve(conn, await insert(conn, new_row(tenant())))
    claimed, token = await claim(conn, approved)
    assert claimed is not None

    async def renew(claim_token: uuid.UUID, until: datetime, *, holder: str = "d-1") -> datetime | None:
        return await store.renew_lease(conn, approval_id=approved.id, claim_token=claim_token, holder=holder,
                                       held_status=CLAIMED, lease_expires_at=until)

    later = T0 + timedelta(hours=2)
    assert await renew(token, later) is None  # nobody confirmed the claim yet: no holder to renew for
    assert await store.claimed_plan(conn, approved.id, token, holder="d-1", held_status=CLAIMED) is not None
    assert await renew(token, later, holder="d-2") is None  # not the holder
    assert await renew(token, later) == later
    assert await renew(token, T0) == later  # a late, shorter renewal does not cut the lease
    assert await renew(uuid.uuid4(), later + timedelta(hours=1)) is None  # a stale claim renews nothing


async def test_finish_dispatch_wins_once_and_checkpoints_every_finished_step(conn: store.Conn) -> None:
    approved = await approve(conn, await insert(conn, new_row(tenant())))
    claimed, token = await claim(conn, approved)
    assert claimed is not None
    results = [step("one"), step("two", "failed")]
    assert await finish(conn, claimed, uuid.uuid4(), Transition.FAIL, results) is None  # not this claim
    assert await store.claimed_plan(conn, approved.id, token, holder="d-1", held_status=CLAIMED) is not None
    failed = await finish(conn, claimed, token, Transition.FAIL, results)
    assert failed is not None and failed.approval_status is S.DISPATCH_FAILED
    assert failed.dispatch_result is not None and [r["status"] for r in failed.dispatch_result] == [
        "succeeded", "failed"]
    assert await finish(conn, claimed, token, Transition.COMPLETE, results) is None  # already finished
    assert [s["stepId"] for s in await store.completed_steps(conn, approved.id)] == ["one"]
    again, token2 = await claim(conn, failed)  # dispatch_failed may be dispatched again
    assert again is not None and token2 != token
    # by any dispatcher: the new claim has no holder yet
    assert await store.claimed_plan(conn, approved.id, token2, holder="d-2", held_status=CLAIMED) is not None


# ---------------------------------------------------------------- sweeps


async def test_expire_due_takes_only_the_given_statuses_past_their_expiry(conn: store.Conn) -> None:
    t = tenant()
    at = T0
    due = await insert(conn, new_row(t, expires_at=at - timedelta(minutes=1)))
    fresh = await insert(conn, new_row(t, expires_at=at + timedelta(hours=1)))

    async def sweep(statuses: tuple[ApprovalStatus, ...]) -> set[uuid.UUID]:
        rows = await store.expire_due(conn, from_statuses=statuses, to_status=target_of(Transition.EXPIRE),
                                      batch=100_000, event=store.EventRecord(event_type="approval.expired", at=at))
        return {r.id for r in rows}

    assert due.id not in await sweep((S.APPROVED,))
    expired = await sweep(sources_of(Transition.EXPIRE))
    assert due.id in expired and fresh.id not in expired
    assert due.id not in await sweep(sources_of(Transition.EXPIRE))  # already expired: the CAS does not repeat
    row = await store.get_approval(conn, due.id, t, operator_id=None)
    assert row is not None and row.approval_status is S.EXPIRED
    assert row.audit is not None and (row.audit[-1]["from"], row.audit[-1]["to"]) == ("pending", "expired")


async def lapsed_now(conn: store.Conn, *ids: uuid.UUID) -> dict[uuid.UUID, store.LapsedDispatch]:
    """Of `ids`, those past their lease at T0, as the reaper locks them (the transaction ends at once)."""
    async with conn.transaction():
        due = await store.lock_lapsed_dispatches(conn, held_status=CLAIMED, now=T0, batch=100_000)
    return {d.id: d for d in due if d.id in ids}


async def test_a_lapsed_dispatch_is_reissued_to_a_new_claim_once(conn: store.Conn) -> None:
    t = tenant()
    lapsed = await approve(conn, await insert(conn, new_row(t)))
    claimed, token = await claim(conn, lapsed)
    assert claimed is not None
    # The last step report set the lease; it ran out a minute ago.
    await store.record_step(conn, approval_id=lapsed.id, claim_token=token, held_status=CLAIMED, step=step("one"),
                            now=T0, lease_expires_at=T0 - timedelta(minutes=1))
    running = await approve(conn, await insert(conn, new_row(t)))
    assert (await claim(conn, running, lease=timedelta(hours=1)))[0] is not None
    due = await lapsed_now(conn, lapsed.id, running.id)
    assert list(due) == [lapsed.id]
    found = due[lapsed.id]
    assert (found.claim_token, found.dispatch_attempt, found.plan) == (token, 1, PLAN)
    assert [c["stepId"] for c in found.completed] == ["one"]
    new_token = uuid.uuid4()
    from_status, to_status = edge(Transition.REISSUE)

    async def reissue() -> store.ApprovalRow | None:
        return await store.reissue_dispatch(
            conn, found, from_status=from_status, to_status=to_status,
            order=order(new_token, T0 + timedelta(minutes=1), attempt=2),
            event=store.EventRecord(event_type="approval.dispatch.started", at=T0, note="re-issued"))

    reissued = await reissue()
    assert reissued is not None and reissued.claim_token == new_token and reissued.approval_status is CLAIMED
    assert await reissue() is None  # the lapsed claim no longer holds: no second order
    assert await store.queued_orders(conn, lapsed.id) == [order(token, T0).body, order(new_token, T0).body]
    # the old claim is stale, even for the holder that took it
    assert await store.claimed_plan(conn, lapsed.id, token, holder="d-1", held_status=CLAIMED) is None
    # the new claim has no holder yet: a new dispatcher takes it, and then no other
    assert await store.claimed_plan(conn, lapsed.id, new_token, holder="d-2", held_status=CLAIMED) is not None
    assert await store.claimed_plan(conn, lapsed.id, new_token, holder="d-1", held_status=CLAIMED) is None
    assert not await store.record_step(conn, approval_id=lapsed.id, claim_token=token, held_status=CLAIMED,
                                       step=step("two"), now=T0, lease_expires_at=T0 + timedelta(hours=1))
    assert lapsed.id not in await lapsed_now(conn, lapsed.id)  # its new lease holds
    row = await store.get_approval(conn, lapsed.id, t, operator_id=None)
    assert row is not None and row.audit is not None
    assert (row.audit[-1]["event"], row.audit[-1]["from"], row.audit[-1]["to"]) == (
        "approval.dispatch.started", "dispatching", "dispatching")


async def test_a_lapsed_dispatch_fails_with_outcome_unknown_on_the_step_that_may_have_started(
        conn: store.Conn) -> None:
    t = tenant()
    halfway = await approve(conn, await insert(conn, new_row(t)))
    _, token = await claim(conn, halfway)
    await store.record_step(conn, approval_id=halfway.id, claim_token=token, held_status=CLAIMED, step=step("one"),
                            now=T0, lease_expires_at=T0 - timedelta(minutes=1))
    untouched = await approve(conn, await insert(conn, new_row(t)))
    await claim(conn, untouched, lease=-timedelta(minutes=1))
    due = await lapsed_now(conn, halfway.id, untouched.id)
    from_status, to_status = edge(Transition.FAIL)

    async def fail() -> set[uuid.UUID]:
        rows = await store.fail_lapsed_dispatches(
            conn, list(due.values()), from_status=from_status, to_status=to_status,
            outcome=store.LapsedOutcome(unknown_message="may have run", not_run_message="never started"),
            event=store.EventRecord(event_type="approval.dispatch.failed", at=T0, note="no lease"))
        return {r.id for r in rows}

    assert await fail() == {halfway.id, untouched.id}
    assert await fail() == set()  # lost: they are dispatch_failed now

    async def result(approval_id: uuid.UUID) -> list[tuple[str, str, str | None]]:
        row = await store.get_approval(conn, approval_id, t, operator_id=None)
        assert row is not None and row.approval_status is S.DISPATCH_FAILED and row.dispatch_result is not None
        return [(r["stepId"], r["status"], (r.get("error") or {}).get("code")) for r in row.dispatch_result]

    assert await result(halfway.id) == [("one", "succeeded", None), ("two", "failed", "outcome_unknown")]
    assert await result(untouched.id) == [("one", "failed", "outcome_unknown"), ("two", "not_run", "lease_expired")]


# ---------------------------------------------------------------- event relay and schema


async def test_events_are_read_in_commit_order_with_typed_statuses(conn: store.Conn) -> None:
    approved = await approve(conn, await insert(conn, new_row(tenant())))
    events = [e for e in await store.committed_events_after(conn, store.RelayPosition(0, 0), 1_000_000)
              if e.approval_id == approved.id]
    assert [(e.event_type, e.from_status, e.to_status) for e in events] == [
        ("approval.created", None, S.PENDING), ("approval.decided", S.PENDING, S.APPROVED)]
    assert type(events[1].from_status) is ApprovalStatus and events[0].id < events[1].id
    assert 0 < events[0].tx < events[1].tx  # two statements, two transactions, in commit order


async def test_relay_cursor_is_held_by_one_relay_at_a_time(pool: AsyncConnectionPool[Any]) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    one, two = uuid.uuid4(), uuid.uuid4()
    async with pool.connection() as conn:
        await store.start_relay_cursor(conn, name)
        start = await store.take_relay_cursor(conn, name, holder=one, hold_s=0.3)
        assert start is not None
        assert await store.take_relay_cursor(conn, name, holder=two, hold_s=0.3) is None  # held by one
        assert await store.take_relay_cursor(conn, name, holder=one, hold_s=0.3) == start  # renewed
        moved = store.RelayPosition(start.tx + 1, 0)
        assert not await store.advance_relay_cursor(conn, name, holder=two, seen=start, to=moved)
        assert await store.advance_relay_cursor(conn, name, holder=one, seen=start, to=moved)
        assert not await store.advance_relay_cursor(conn, name, holder=one, seen=start, to=moved)  # not there now
        await asyncio.sleep(0.4)  # one died: its lease runs out
        assert await store.take_relay_cursor(conn, name, holder=two, hold_s=0.3) == moved
        await store.release_relay_cursor(conn, name, holder=two)
        assert await store.take_relay_cursor(conn, name, holder=one, hold_s=0.3) == moved


async def test_migrations_are_applied_once(database_url: str, conn: store.Conn) -> None:
    assert await store.migrate(database_url) == []
    await store.ping(conn)
