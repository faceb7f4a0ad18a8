"""Every statement on a hot path reaches its approval by key, whatever the statistics say.

A database of its own holds thousands of pending approvals of one tenant (the shape that made the decide
compare-and-set scan the tenant's pending index). Each statement is taken from the store function that
runs it (a recording connection catches the SQL and its parameters) and EXPLAINed as a custom plan and
as the generic plan a prepared statement reuses, before any ANALYZE and after one.
"""

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg
import pytest

from pj_approvals import store
from pj_approvals.domain import CLAIMED, Transition, edge
from pj_common.messages import ApprovalStatus, StepResult
from tests.support.system import with_dbname

S = ApprovalStatus
T0 = datetime.now(UTC)
TENANT = "t-big"
PENDING = 8900
PLAN = [{"stepId": "one", "connector": "webhook", "operation": "post", "params": {"text": "hi"}},
        {"stepId": "two", "connector": "webhook", "operation": "post", "params": {"text": "bye"}}]
PKEY = "approvals_pkey"
REQUEST_KEY = "approvals_tenant_id_request_id_key"


def new_row(status: ApprovalStatus, *, tenant: str = TENANT, n: int = 0) -> store.ApprovalRow:
    return store.ApprovalRow(
        id=uuid.uuid4(), tenant_id=tenant, request_id=f"req-{uuid.uuid4().hex}", operator_id=f"op-{n % 50}",
        action_id="notify.webhook", payload={"n": n}, request_hash="rh", approval_status=status, approver_id=None,
        approval_note=None, plan=PLAN, plan_hash="ph", dispatch_result=None, claim_token=None, created_at=T0,
        updated_at=T0, decided_at=None, dispatched_at=None, finished_at=None,
        expires_at=T0 + timedelta(hours=48, seconds=n),
        approval_rule={"stages": [{"name": "approval", "roles": ["admin"], "approvalsRequired": 1}],
                       "dispatchWindowS": 3600})


class Recorder:
    """Stands in for a connection: records each statement and its parameters, runs nothing, finds no row."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def cursor(self, **_: Any) -> "Recorder":
        return self

    async def __aenter__(self) -> "Recorder":
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def execute(self, query: str, params: Any = None) -> "Recorder":
        self.statements.append((query, params))
        return self

    async def fetchone(self) -> None:
        return None

    async def fetchall(self) -> list[Any]:
        return []


async def statement(call: Any) -> tuple[str, Any]:
    """The one statement a store call (given a connection) runs."""
    recorder = Recorder()
    await call(cast(store.Conn, recorder))
    [recorded] = recorder.statements
    return recorded


@pytest.fixture(scope="module")
async def plans_db(pg_admin_url: str) -> AsyncIterator[str]:
    """A database of its own: its statistics are this module's to collect (or not)."""
    name = f"pj_plans_{uuid.uuid4().hex[:10]}"
    url = with_dbname(pg_admin_url, name)
    await store.ensure_database(url)
    await store.migrate(url)
    # None dispatching: statistics taken between dispatches make the dispatching rows look like none.
    others = [S.APPROVED] * 20 + [S.DISPATCHED] * 200 + [S.REJECTED] * 20 + [S.EXPIRED] * 20
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await store.copy_approvals(conn, [new_row(S.PENDING, n=n) for n in range(PENDING)]
                                   + [new_row(status, n=n) for n, status in enumerate(others)]
                                   + [new_row(S.PENDING, tenant=f"t-small-{n % 10}", n=n) for n in range(200)])
    yield url
    await store.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
async def hot_path(plans_db: str) -> dict[str, tuple[str, tuple[str, Any]]]:
    """Statement name -> (the index it must reach approvals by, (SQL, parameters)), with realistic values."""
    async with await psycopg.AsyncConnection.connect(plans_db, autocommit=True) as conn:
        page, _, _ = await store.list_approvals(conn, TENANT, None, status=S.PENDING, limit=1, offset=PENDING // 2,
                                                now=T0)
        pending = await store.get_approval(conn, page[0].id, TENANT, operator_id=None, with_audit=False,
                                           with_decisions=True)
        approved, _, _ = await store.list_approvals(conn, TENANT, None, status=S.APPROVED, limit=1, offset=0, now=T0)
    assert pending is not None and approved
    token, now = uuid.uuid4(), T0 + timedelta(minutes=1)
    lease = now + timedelta(minutes=1)
    decide_from, decide_to = edge(Transition.APPROVE)
    decision = store.Decision(approver_id="adam", approver_role="admin", decision="approved", note="ok",
                              stage_name="approval", to_stage_index=0, to_stage_approvals=1, final=True,
                              dispatch_expires_at=now + timedelta(hours=1))
    done_from, done_to = edge(Transition.COMPLETE)
    step = StepResult(step_id="one", connector="webhook", operation="post", status="succeeded", attempts=1)
    event = store.EventRecord(event_type="approval.test", at=now, actor="adam", actor_role="admin")
    order = store.QueuedOrder(claim_token=token, attempt=1, lease_expires_at=lease, queue="pj.dispatch",
                              body=b'{"order": 1}')
    target = pending.id
    calls: dict[str, tuple[str, Any]] = {
        "get_approval (decide)": (PKEY, lambda c: store.get_approval(
            c, target, TENANT, operator_id=None, with_audit=False, with_decisions=True)),
        "get_approval (view, own)": (PKEY, lambda c: store.get_approval(c, target, TENANT, operator_id="op-7")),
        "record_decision": (PKEY, lambda c: store.record_decision(
            c, pending, decision, from_status=decide_from, to_status=decide_to, event=event)),
        "claim_for_dispatch": (PKEY, lambda c: store.claim_for_dispatch(
            c, approved[0], from_status=S.APPROVED, to_status=CLAIMED, order=order, event=event)),
        "claimed_plan": (PKEY, lambda c: store.claimed_plan(c, target, token, holder="d-1", held_status=CLAIMED)),
        "renew_lease": (PKEY, lambda c: store.renew_lease(
            c, approval_id=target, claim_token=token, holder="d-1", held_status=CLAIMED, lease_expires_at=lease)),
        "record_step": (PKEY, lambda c: store.record_step(
            c, approval_id=target, claim_token=token, held_status=CLAIMED, step=step, now=now,
            lease_expires_at=lease)),
        "finish_dispatch": (PKEY, lambda c: store.finish_dispatch(
            c, target, token, from_status=done_from, to_status=done_to,
            results=[step.model_dump(by_alias=True, mode="json")], event=event)),
        "find_by_request": (REQUEST_KEY, lambda c: store.find_by_request(c, TENANT, pending.request_id)),
    }
    return {name: (index, await statement(call)) for name, (index, call) in calls.items()}


def approvals_scans(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(node type, index) of every node of the plan that reads the approvals table."""
    found = []
    if plan.get("Relation Name") == "approvals" and plan["Node Type"] != "ModifyTable":
        found.append((plan["Node Type"], plan.get("Index Name")))
    for child in plan.get("Plans", []):
        found += approvals_scans(child)
    return found


async def wrong_plans(url: str, hot_path: dict[str, tuple[str, tuple[str, Any]]]) -> dict[str, Any]:
    """Each statement and plan kind whose reads of approvals are not one Index Scan of its key index."""
    wrong = {}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for name, (index, (query, params)) in hot_path.items():
            for generic in (False, True):
                scans = approvals_scans(await store.explain(conn, query, params, generic=generic))
                if not scans or any(scan != ("Index Scan", index) for scan in scans):
                    wrong[f"{name} ({'generic' if generic else 'custom'})"] = scans
    return wrong


async def test_hot_path_plans_use_the_key_before_any_statistics(
        plans_db: str, hot_path: dict[str, tuple[str, tuple[str, Any]]]) -> None:
    assert await wrong_plans(plans_db, hot_path) == {}


async def test_hot_path_plans_use_the_key_after_analyze(
        plans_db: str, hot_path: dict[str, tuple[str, tuple[str, Any]]]) -> None:
    async with await psycopg.AsyncConnection.connect(plans_db, autocommit=True) as conn:
        await store.analyze(conn)
    assert await wrong_plans(plans_db, hot_path) == {}
