"""Every SQL statement of the system. Each lifecycle write is one statement (a CTE doing the
compare-and-set and its audit row together), so it runs atomically in autocommit mode with a
single round trip."""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pj_common.messages import ApprovalStatus, StepResult

Conn = psycopg.AsyncConnection[Any]


@dataclass(slots=True, kw_only=True)
class ApprovalRow:
    id: UUID
    tenant_id: str
    request_id: str
    operator_id: str
    action_id: str
    payload: dict[str, Any]
    request_hash: str
    approval_status: ApprovalStatus
    approver_id: str | None
    approval_note: str | None
    plan: list[dict[str, Any]]
    plan_hash: str
    dispatch_result: list[dict[str, Any]] | None
    claim_token: UUID | None
    created_at: datetime
    updated_at: datetime
    decided_at: datetime | None
    dispatched_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime
    approval_rule: dict[str, Any]
    stage_index: int = 0
    stage_approvals: int = 0
    audit: list[dict[str, Any]] | None = None
    decisions: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.approval_status = ApprovalStatus(self.approval_status)  # the column is text


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    """The audit row written beside a transition (its from and to are the transition's own), at the
    transition's time, which the approval's `updated_at` takes too."""

    event_type: str
    at: datetime
    actor: str | None = None
    actor_role: str | None = None
    note: str | None = None
    correlation_id: str | None = None


_COLUMNS = (
    "id, tenant_id, request_id, operator_id, action_id, payload, request_hash, approval_status, approver_id,"
    " approval_note, plan, plan_hash, dispatch_result, claim_token, created_at, updated_at, decided_at,"
    " dispatched_at, finished_at, expires_at, approval_rule, stage_index, stage_approvals"
)

# The audit trail as a JSON array, oldest first; `{src}` is the events relation to read.
_AUDIT_JSON = """coalesce((SELECT json_agg(json_build_object(
        'event', e.event_type, 'actor', e.actor, 'role', e.actor_role, 'from', e.from_status,
        'to', e.to_status, 'note', e.note, 'correlationId', e.correlation_id, 'at', e.occurred_at)
        ORDER BY e.occurred_at, e.id) FROM {src} e WHERE e.approval_id = a.id), '[]'::json)"""

# Every decision made on the approval, oldest first.
_DECISIONS_JSON = """coalesce((SELECT json_agg(json_build_object(
        'approverId', d.approver_id, 'role', d.approver_role, 'stageIndex', d.stage_index,
        'stage', d.stage_name, 'decision', d.decision, 'note', d.note, 'decidedAt', d.decided_at)
        ORDER BY d.decided_at, d.approver_id) FROM {src} d WHERE d.approval_id = a.id), '[]'::json)"""

# Inserts the audit row for every row of the CTE `changed` (its new status is the `to` status).
_EVENT_FROM_CHANGED = """INSERT INTO approval_events (approval_id, tenant_id, event_type, actor, actor_role,
        from_status, to_status, note, correlation_id, occurred_at)
    SELECT c.id, c.tenant_id, %(event_type)s, %(actor)s, %(actor_role)s, {from_status}, c.approval_status,
        %(note)s, %(correlation_id)s, %(now)s FROM changed c
    RETURNING *"""


def _event_params(event: EventRecord) -> dict[str, Any]:
    return {
        "event_type": event.event_type, "actor": event.actor, "actor_role": event.actor_role,
        "note": event.note, "correlation_id": event.correlation_id, "now": event.at,
    }


def _returning_with_audit(transitioned: bool) -> str:
    # A statement's sub-queries see the snapshot from before it, so the new event is added explicitly.
    src = "(SELECT * FROM approval_events UNION ALL SELECT * FROM ev)" if transitioned else "approval_events"
    return f"SELECT a.*, {_AUDIT_JSON.format(src=src)} AS audit FROM changed a"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedOrder:
    """A dispatch order and the claim it runs under, written to the outbox by the very statement that
    claims the dispatch: the order exists exactly when its claim committed."""

    claim_token: UUID
    attempt: int
    lease_expires_at: datetime
    queue: str
    body: bytes  # the exact bytes the relay publishes and signs


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """A launch-tier approval is inserted already claimed: approved by policy (its created event goes
    to `approved_status`) and dispatching under `order`'s claim (an `event_type` event), all in one
    statement, so no crash can leave it approved with nobody dispatching it."""

    approved_status: ApprovalStatus
    order: QueuedOrder
    event_type: str = "approval.dispatch.started"


# Queues the order of every row of the CTE `changed`.
_ORDER_FROM_CHANGED = """INSERT INTO dispatch_outbox (approval_id, queue, body, created_at)
    SELECT c.id, %(queue)s, %(body)s, %(now)s FROM changed c"""


def _order_params(order: QueuedOrder | None) -> dict[str, Any]:
    if order is None:  # nothing claimed: the claim columns stay empty and no order is queued
        return {"claim": None, "attempt": 0, "lease": None, "queue": None, "body": None}
    return {"claim": order.claim_token, "attempt": order.attempt, "lease": order.lease_expires_at,
            "queue": order.queue, "body": order.body}


async def insert_approval(conn: Conn, row: ApprovalRow, event: EventRecord, *,
                          launch: Launch | None = None) -> ApprovalRow | None:
    """Insert a new approval and its `approval.created` event; None if its requestId exists.

    A governed action is inserted pending. A launch-tier one (`launch`) is inserted dispatching, with
    its claim, lease, both events (created as approved by policy, then dispatch started) and its order
    in the outbox.
    """
    created_to = launch.approved_status if launch else row.approval_status
    types: list[str] = ["approval.created"]
    froms: list[ApprovalStatus | None] = [None]
    tos: list[ApprovalStatus] = [created_to]
    if launch is not None:
        types.append(launch.event_type)
        froms.append(launch.approved_status)
        tos.append(row.approval_status)
    params = {
        "id": row.id, "tenant_id": row.tenant_id, "request_id": row.request_id, "operator_id": row.operator_id,
        "action_id": row.action_id, "payload": Jsonb(row.payload), "request_hash": row.request_hash,
        "plan": Jsonb(row.plan), "plan_hash": row.plan_hash, "expires_at": row.expires_at,
        "approval_rule": Jsonb(row.approval_rule), "status": row.approval_status, "approver_id": row.approver_id,
        "decided_at": row.decided_at, "dispatched_at": row.dispatched_at, "types": types, "froms": froms,
        "tos": tos, **_event_params(event), **_order_params(launch.order if launch else None),
    }
    queued = f", queued AS ({_ORDER_FROM_CHANGED})" if launch else ""
    query = f"""
        WITH changed AS (
            INSERT INTO approvals (id, tenant_id, request_id, operator_id, action_id, payload, request_hash,
                approval_status, plan, plan_hash, created_at, updated_at, expires_at, approval_rule, approver_id,
                decided_at, dispatched_at, claim_token, lease_expires_at, dispatch_attempt)
            VALUES (%(id)s, %(tenant_id)s, %(request_id)s, %(operator_id)s, %(action_id)s, %(payload)s,
                %(request_hash)s, %(status)s, %(plan)s, %(plan_hash)s, %(now)s, %(now)s, %(expires_at)s,
                %(approval_rule)s, %(approver_id)s, %(decided_at)s, %(dispatched_at)s, %(claim)s, %(lease)s,
                %(attempt)s)
            ON CONFLICT (tenant_id, request_id) DO NOTHING
            RETURNING {_COLUMNS}),
        ev AS (
            INSERT INTO approval_events (approval_id, tenant_id, event_type, actor, actor_role, from_status,
                to_status, note, correlation_id, occurred_at)
            SELECT c.id, c.tenant_id, t.event_type, %(actor)s, %(actor_role)s, t.from_status, t.to_status,
                %(note)s, %(correlation_id)s, %(now)s
            FROM changed c, unnest(%(types)s::text[], %(froms)s::text[], %(tos)s::text[])
                WITH ORDINALITY t(event_type, from_status, to_status, n)
            ORDER BY t.n){queued}
        SELECT * FROM changed"""
    async with conn.cursor(row_factory=class_row(ApprovalRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


def _visibility(tenant_id: str, operator_id: str | None) -> tuple[str, dict[str, Any]]:
    """WHERE clause scoping rows to a tenant and, for callers who see only their own, to them."""
    clause = "a.tenant_id = %(tenant_id)s"
    params: dict[str, Any] = {"tenant_id": tenant_id}
    if operator_id is not None:
        clause += " AND a.operator_id = %(operator_id)s"
        params["operator_id"] = operator_id
    return clause, params


async def find_by_request(conn: Conn, tenant_id: str, request_id: str) -> ApprovalRow | None:
    async with conn.cursor(row_factory=class_row(ApprovalRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM approvals WHERE tenant_id = %s AND request_id = %s", (tenant_id, request_id)
        )
        return await cur.fetchone()


async def get_approval(conn: Conn, approval_id: UUID, tenant_id: str, *, operator_id: str | None,
                       with_audit: bool = True, with_decisions: bool = False) -> ApprovalRow | None:
    """One approval visible to the caller, with its audit trail and/or its decisions if asked."""
    extra = f", {_AUDIT_JSON.format(src='approval_events')} AS audit" if with_audit else ""
    if with_decisions:
        extra += f", {_DECISIONS_JSON.format(src='approval_decisions')} AS decisions"
    # By id alone, and the caller's visibility checked on the row: a condition on the tenant would let
    # the planner pick a tenant index over the primary key when it misjudges how many rows match.
    async with conn.cursor(row_factory=class_row(ApprovalRow)) as cur:
        await cur.execute(f"SELECT {_COLUMNS}{extra} FROM approvals a WHERE a.id = %(id)s", {"id": approval_id})
        row = await cur.fetchone()
    visible = row is not None and row.tenant_id == tenant_id and operator_id in (None, row.operator_id)
    return row if visible else None


async def list_approvals(conn: Conn, tenant_id: str, operator_id: str | None, *, status: ApprovalStatus | None,
                         limit: int, offset: int, now: datetime) -> tuple[list[ApprovalRow], int, int]:
    """A page of visible approvals (newest first), the number matching, and the number pending."""
    where, params = _visibility(tenant_id, operator_id)
    params.update(limit=limit, offset=offset, status=status, now=now, pending=ApprovalStatus.PENDING)
    status_clause = " AND a.approval_status = %(status)s" if status else ""
    async with conn.cursor(row_factory=class_row(ApprovalRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM approvals a WHERE {where}{status_clause}"
            " ORDER BY a.created_at DESC, a.id DESC LIMIT %(limit)s OFFSET %(offset)s", params)
        rows = await cur.fetchall()
    cur2 = await conn.execute(
        f"""SELECT count(*) FILTER (WHERE true{status_clause}),
                   count(*) FILTER (WHERE a.approval_status = %(pending)s AND a.expires_at > %(now)s)
            FROM approvals a WHERE {where}""", params)
    total, pending = await cur2.fetchone() or (0, 0)
    return rows, total, pending


async def count_pending(conn: Conn, tenant_id: str | None, operator_id: str | None, *, now: datetime) -> int:
    """Unexpired pending approvals: of one tenant (scoped like a list), or of all tenants (tenant None)."""
    params: dict[str, Any]
    if tenant_id is None:  # the sweeper's index holds every unexpired pending approval, with its status
        where, params = "a.expiry_due_at > %(now)s", {}
    else:  # the tenant's status index, with expires_at in it
        where, params = _visibility(tenant_id, operator_id)
        where += " AND a.expires_at > %(now)s"
    params.update(now=now, pending=ApprovalStatus.PENDING)
    cur = await conn.execute(f"SELECT count(*) FROM approvals a WHERE {where} AND a.approval_status = %(pending)s",
                             params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One person's decision and where it leaves the approval (from `domain.evaluate_decision`)."""

    approver_id: str
    approver_role: str
    decision: str
    note: str | None
    stage_name: str
    to_stage_index: int
    to_stage_approvals: int
    final: bool
    # Set when the decision approves: the approval then expires at the end of its dispatch window.
    dispatch_expires_at: datetime | None = None


async def record_decision(conn: Conn, seen: ApprovalRow, decision: Decision, *, from_status: ApprovalStatus,
                          to_status: ApprovalStatus, event: EventRecord) -> ApprovalRow | None:
    """CAS `from_status` (pending) at the stage and count it was seen at -> `to_status`, with the decision
    row and the event; the decision's `dispatch_expires_at` (if set) replaces the expiry. None if the CAS lost
    (someone decided in between, or it expired); a person deciding twice at once fails on the decisions'
    primary key."""
    params = {"id": seen.id, "seen_stage": seen.stage_index,
              "seen_count": seen.stage_approvals, "from_status": from_status, "to_status": to_status,
              "to_stage": decision.to_stage_index, "to_count": decision.to_stage_approvals,
              "final": decision.final, "approver_id": decision.approver_id, "approver_role": decision.approver_role,
              "decision": decision.decision, "approval_note": decision.note, "stage_name": decision.stage_name,
              "dispatch_expires_at": decision.dispatch_expires_at, **_event_params(event)}
    # `seen` was read as visible to the decider and an approval never changes tenant, so the CAS finds
    # the row by id alone: no tenant condition for the planner to match with a tenant's status index.
    query = f"""
        WITH changed AS (
            UPDATE approvals SET approval_status = %(to_status)s, stage_index = %(to_stage)s,
                stage_approvals = %(to_count)s, updated_at = %(now)s,
                approver_id = CASE WHEN %(final)s THEN %(approver_id)s ELSE approver_id END,
                approval_note = CASE WHEN %(final)s THEN %(approval_note)s ELSE approval_note END,
                decided_at = CASE WHEN %(final)s THEN %(now)s ELSE decided_at END,
                expires_at = coalesce(%(dispatch_expires_at)s, expires_at)
            WHERE id = %(id)s AND approval_status = %(from_status)s
              AND expires_at > %(now)s AND stage_index = %(seen_stage)s AND stage_approvals = %(seen_count)s
            RETURNING {_COLUMNS}),
        decided AS (
            INSERT INTO approval_decisions (approval_id, approver_id, approver_role, stage_index, stage_name,
                decision, note, correlation_id, decided_at)
            SELECT id, %(approver_id)s, %(approver_role)s, %(seen_stage)s, %(stage_name)s, %(decision)s,
                %(approval_note)s, %(correlation_id)s, %(now)s FROM changed),
        ev AS ({_EVENT_FROM_CHANGED.format(from_status="%(from_status)s")})
        {_returning_with_audit(True)}"""
    async with conn.cursor(row_factory=class_row(ApprovalRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def claim_for_dispatch(conn: Conn, seen: ApprovalRow, *, from_status: ApprovalStatus,
                             to_status: ApprovalStatus, order: QueuedOrder, event: EventRecord) -> ApprovalRow | None:
    """CAS `from_status` (approved or dispatch_failed, within the dispatch window) -> `to_status`
    (dispatching) under `order`'s fresh claim token and lease, only if the plan is still exactly the one
    checked, with the event and the order queued in the outbox; None if the CAS lost (and nothing is
    queued)."""
    params = {"id": seen.id, "tenant_id": seen.tenant_id, "from_status": from_status, "to_status": to_status,
              "plan": Jsonb(seen.plan), "plan_hash": seen.plan_hash, **_order_params(order),
              **_event_params(event)}
    query = f"""
        WITH changed AS (
            UPDATE approvals SET approval_status = %(to_status)s, claim_token = %(claim)s,
                dispatched_at = %(now)s, updated_at = %(now)s, finished_at = NULL, lease_expires_at = %(lease)s,
                dispatch_attempt = %(attempt)s, claim_holder = NULL
            WHERE id = %(id)s AND approval_status = %(from_status)s
              AND plan_hash = %(plan_hash)s AND plan = %(plan)s AND expires_at > %(now)s
            RETURNING {_COLUMNS}),
        ev AS ({_EVENT_FROM_CHANGED.format(from_status="%(from_status)s")}),
        queued AS ({_ORDER_FROM_CHANGED})
        SELECT * FROM changed"""
    async with conn.cursor(row_factory=class_row(ApprovalRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def completed_steps(conn: Conn, approval_id: UUID) -> list[dict[str, Any]]:
    """Outcomes of the steps that already succeeded (a re-dispatch skips them)."""
    cur = await conn.execute(
        "SELECT outcome FROM approval_steps WHERE approval_id = %s AND status = 'succeeded'", (approval_id,))
    return [row[0] for row in await cur.fetchall()]


@dataclass(frozen=True, slots=True)
class ClaimedPlan:
    """What a dispatch's claim holds: the approved plan, its succeeded steps' outcomes and the lease."""

    plan: list[dict[str, Any]]
    completed: list[dict[str, Any]]
    lease_expires_at: datetime | None


async def claimed_plan(conn: Conn, approval_id: UUID, claim_token: UUID, *, holder: str,
                       held_status: ApprovalStatus) -> ClaimedPlan | None:
    """Take the claim for `holder` (a dispatcher process) and return the approved plan, the outcomes of
    its succeeded steps and the lease; None when the order that asks is stale: `claim_token` no longer
    holds the dispatch (the approval left `held_status`, or the dispatch was claimed again), or another
    holder took the claim first. A compare-and-set: the claim is taken when it has no holder yet or
    already is `holder`'s, so of two processes confirming copies of one order only the first runs it."""
    cur = await conn.execute(
        """WITH taken AS (
               UPDATE approvals SET claim_holder = %(holder)s
               WHERE id = %(id)s AND claim_token = %(claim)s AND approval_status = %(held)s
                 AND (claim_holder IS NULL OR claim_holder = %(holder)s)
               RETURNING id, plan, lease_expires_at)
           SELECT t.plan, coalesce((SELECT json_agg(s.outcome) FROM approval_steps s
                                    WHERE s.approval_id = t.id AND s.status = 'succeeded'), '[]'::json),
                  t.lease_expires_at
           FROM taken t""",
        {"id": approval_id, "claim": claim_token, "held": held_status, "holder": holder})
    row = await cur.fetchone()
    return ClaimedPlan(plan=row[0], completed=row[1], lease_expires_at=row[2]) if row else None


async def renew_lease(conn: Conn, *, approval_id: UUID, claim_token: UUID, holder: str,
                      held_status: ApprovalStatus, lease_expires_at: datetime) -> datetime | None:
    """Extend the claim's lease to `lease_expires_at` (never shorten it) while the claim holds the
    approval in `held_status` and `holder` holds the claim; the lease now in force, or None if the
    claim is stale or another holder's."""
    cur = await conn.execute(
        """UPDATE approvals SET lease_expires_at = greatest(lease_expires_at, %(lease)s)
           WHERE id = %(id)s AND claim_token = %(claim)s AND approval_status = %(held)s
             AND claim_holder = %(holder)s
           RETURNING lease_expires_at""",
        {"id": approval_id, "claim": claim_token, "held": held_status, "holder": holder, "lease": lease_expires_at})
    row = await cur.fetchone()
    return row[0] if row else None


async def record_step(conn: Conn, *, approval_id: UUID, claim_token: UUID, held_status: ApprovalStatus,
                      step: StepResult, now: datetime, lease_expires_at: datetime) -> bool:
    """Checkpoint one step's outcome and renew the claim's lease (the plan is making progress) while
    the claim holds the approval in `held_status`; False if the claim is stale (the dispatch finished
    or another one owns the approval)."""
    cur = await conn.execute(
        """WITH held AS (
               UPDATE approvals SET lease_expires_at = %(lease)s
               WHERE id = %(id)s AND claim_token = %(claim)s AND approval_status = %(held)s RETURNING id)
           INSERT INTO approval_steps (approval_id, step_id, claim_token, status, outcome, recorded_at)
           SELECT id, %(step_id)s, %(claim)s, %(status)s, %(outcome)s, %(now)s FROM held
           ON CONFLICT (approval_id, step_id) DO UPDATE SET claim_token = EXCLUDED.claim_token,
               status = EXCLUDED.status, outcome = EXCLUDED.outcome, recorded_at = EXCLUDED.recorded_at
           RETURNING step_id""",
        {"id": approval_id, "claim": claim_token, "held": held_status, "step_id": step.step_id,
         "status": step.status, "outcome": Jsonb(step.model_dump(by_alias=True, mode="json")), "now": now,
         "lease": lease_expires_at})
    return await cur.fetchone() is not None


async def finish_dispatch(conn: Conn, approval_id: UUID, claim_token: UUID, *, from_status: ApprovalStatus,
                          to_status: ApprovalStatus, results: list[dict[str, Any]],
                          event: EventRecord) -> ApprovalRow | None:
    """CAS `from_status` (dispatching) -> `to_status` (dispatched|dispatch_failed) for this claim, with a
    checkpoint of every finished step, the whole result and the event; None if the claim is stale or the
    approval already finished."""
    params = {"id": approval_id, "claim": claim_token, "from_status": from_status, "to_status": to_status,
              "results": Jsonb(results),
              **_event_params(event)}
    query = f"""
        WITH changed AS (
            UPDATE approvals SET approval_status = %(to_status)s, dispatch_result = %(results)s,
                finished_at = %(now)s, updated_at = %(now)s
            WHERE id = %(id)s AND claim_token = %(claim)s AND approval_status = %(from_status)s
            RETURNING {_COLUMNS}),
        -- Every step this run finished is checkpointed here too, in case its own report was lost.
        step AS (
            INSERT INTO approval_steps (approval_id, step_id, claim_token, status, outcome, recorded_at)
            SELECT c.id, r.value->>'stepId', %(claim)s, r.value->>'status', r.value, %(now)s
            FROM changed c, jsonb_array_elements(%(results)s) r
            WHERE r.value->>'status' IN ('succeeded', 'failed')
            ON CONFLICT (approval_id, step_id) DO UPDATE SET claim_token = EXCLUDED.claim_token,
                status = EXCLUDED.status, outcome = EXCLUDED.outcome, recorded_at = EXCLUDED.recorded_at),
        ev AS ({_EVENT_FROM_CHANGED.format(from_status="%(from_status)s")})
        SELECT * FROM changed"""
    async with conn.cursor(row_factory=class_row(ApprovalRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def expire_due(conn: Conn, *, from_statuses: tuple[ApprovalStatus, ...], to_status: ApprovalStatus,
                     batch: int, event: EventRecord) -> list[ApprovalRow]:
    """CAS `from_statuses` -> `to_status` (expired) for rows past `expires_at`, with events; SKIP LOCKED
    keeps several approvals processes from fighting over the same rows."""
    params = {"batch": batch, "from_statuses": list(from_statuses), "to_status": to_status,
              **_event_params(event)}
    # expiry_due_at is expires_at while the approval is pending or approved (migration 0009), the
    # statuses the domain expires: the sweeper's own index, which no other statement can pick.
    query = f"""
        WITH due AS (
            SELECT id, approval_status FROM approvals
            WHERE expiry_due_at <= %(now)s AND approval_status = ANY(%(from_statuses)s)
            ORDER BY expiry_due_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED),
        changed AS (
            UPDATE approvals a SET approval_status = %(to_status)s, updated_at = %(now)s
            FROM due WHERE a.id = due.id AND a.approval_status = due.approval_status
            RETURNING {", ".join("a." + c.strip() for c in _COLUMNS.split(","))}, due.approval_status AS prior_status),
        ev AS ({_EVENT_FROM_CHANGED.format(from_status="c.prior_status")})
        SELECT {_COLUMNS} FROM changed"""
    async with conn.cursor(row_factory=class_row(ApprovalRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


@dataclass(frozen=True, slots=True, kw_only=True)
class LapsedDispatch:
    """A dispatch whose lease ran out, locked for the reaper: its claim, its attempt, and what a new
    order needs (the plan and the outcomes of the steps that succeeded)."""

    id: UUID
    tenant_id: str
    action_id: str
    request_id: str
    claim_token: UUID
    claim_holder: str | None  # None: no dispatcher took the claim's order, so none of its steps started
    dispatch_attempt: int
    plan: list[dict[str, Any]]
    completed: list[dict[str, Any]]


async def lock_lapsed_dispatches(conn: Conn, *, held_status: ApprovalStatus, now: datetime, batch: int
                                 ) -> list[LapsedDispatch]:
    """Dispatches in `held_status` whose lease ran out by `now`, locked until the caller's transaction
    ends (SKIP LOCKED: several approvals processes reap side by side without taking the same row)."""
    async with conn.cursor(row_factory=class_row(LapsedDispatch)) as cur:
        await cur.execute(
            """SELECT a.id, a.tenant_id, a.action_id, a.request_id, a.claim_token, a.claim_holder,
                      a.dispatch_attempt, a.plan,
                      coalesce((SELECT json_agg(s.outcome) FROM approval_steps s
                                WHERE s.approval_id = a.id AND s.status = 'succeeded'), '[]'::json) AS completed
               FROM approvals a
               WHERE a.approval_status = %(held)s AND a.lease_expires_at <= %(now)s
               ORDER BY a.lease_expires_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED""",
            {"held": held_status, "now": now, "batch": batch})
        return await cur.fetchall()


async def reissue_dispatch(conn: Conn, lapsed: LapsedDispatch, *, from_status: ApprovalStatus,
                           to_status: ApprovalStatus, order: QueuedOrder, event: EventRecord) -> ApprovalRow | None:
    """CAS `from_status` (dispatching) under the lapsed claim -> `to_status` (dispatching) under
    `order`'s new claim, attempt and lease (with no holder yet), with the event and the new order in the
    outbox; None if the lapsed claim no longer holds (it finished meanwhile). Reports of the old claim
    are stale from now."""
    params = {"id": lapsed.id, "old_claim": lapsed.claim_token, "from_status": from_status,
              "to_status": to_status, **_order_params(order), **_event_params(event)}
    query = f"""
        WITH changed AS (
            UPDATE approvals SET approval_status = %(to_status)s, claim_token = %(claim)s,
                dispatch_attempt = %(attempt)s, lease_expires_at = %(lease)s, updated_at = %(now)s,
                claim_holder = NULL
            WHERE id = %(id)s AND claim_token = %(old_claim)s AND approval_status = %(from_status)s
            RETURNING {_COLUMNS}),
        ev AS ({_EVENT_FROM_CHANGED.format(from_status="%(from_status)s")}),
        queued AS ({_ORDER_FROM_CHANGED})
        SELECT * FROM changed"""
    async with conn.cursor(row_factory=class_row(ApprovalRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


@dataclass(frozen=True, slots=True, kw_only=True)
class LapsedOutcome:
    """The error codes and messages the result of a dispatch failed at its lease gives its steps."""

    unknown_message: str  # the first step without a success: it may have started (outcome_unknown)
    not_run_message: str  # the steps after it never started (lease_expired)


async def fail_lapsed_dispatches(conn: Conn, lapsed: list[LapsedDispatch], *, from_status: ApprovalStatus,
                                 to_status: ApprovalStatus, outcome: LapsedOutcome, event: EventRecord
                                 ) -> list[ApprovalRow]:
    """CAS `from_status` (dispatching) under each lapsed claim -> `to_status` (dispatch_failed), with a
    result listing each step: its checkpoint if it succeeded; the first one that did not as failed with
    `outcome_unknown` (it may have started: check its target before dispatching again); the later ones
    not_run with `lease_expired`."""
    params = {"ids": [d.id for d in lapsed], "claims": [d.claim_token for d in lapsed], "from_status": from_status,
              "to_status": to_status, "unknown": outcome.unknown_message, "not_run": outcome.not_run_message,
              **_event_params(event)}
    query = f"""
        WITH due AS (SELECT * FROM unnest(%(ids)s::uuid[], %(claims)s::uuid[]) AS d(id, claim)),
        steps AS (
            SELECT a.id, p.ordinality AS n, p.value AS step, s.outcome
            FROM approvals a JOIN due ON a.id = due.id
            CROSS JOIN LATERAL jsonb_array_elements(a.plan) WITH ORDINALITY p
            LEFT JOIN approval_steps s ON s.approval_id = a.id AND s.step_id = p.value->>'stepId'
                                      AND s.status = 'succeeded'),
        first_open AS (SELECT id, min(n) AS n FROM steps WHERE outcome IS NULL GROUP BY id),
        results AS (
            SELECT st.id, jsonb_agg(coalesce(st.outcome, jsonb_build_object(
                'stepId', st.step->>'stepId', 'connector', st.step->>'connector',
                'operation', st.step->>'operation', 'attempts', 0,
                'status', CASE WHEN st.n = f.n THEN 'failed' ELSE 'not_run' END,
                'error', CASE WHEN st.n = f.n
                    THEN jsonb_build_object('code', 'outcome_unknown', 'message', %(unknown)s::text)
                    ELSE jsonb_build_object('code', 'lease_expired', 'message', %(not_run)s::text) END))
                ORDER BY st.n) AS result
            FROM steps st LEFT JOIN first_open f ON f.id = st.id GROUP BY st.id),
        changed AS (
            UPDATE approvals a SET approval_status = %(to_status)s, updated_at = %(now)s, finished_at = %(now)s,
                dispatch_result = r.result
            FROM due JOIN results r ON r.id = due.id
            WHERE a.id = due.id AND a.claim_token = due.claim AND a.approval_status = %(from_status)s
            RETURNING {", ".join("a." + c.strip() for c in _COLUMNS.split(","))}),
        ev AS ({_EVENT_FROM_CHANGED.format(from_status="%(from_status)s")})
        SELECT {_COLUMNS} FROM changed"""
    async with conn.cursor(row_factory=class_row(ApprovalRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


# ---------------------------------------------------------------- dispatch outbox

# The channel the outbox's trigger notifies at each commit that queued orders (migration 0007).
OUTBOX_CHANNEL = "pj_dispatch_outbox"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    approval_id: UUID
    body: bytes


async def take_outbox(conn: Conn, *, queue: str, batch: int, hold_s: float) -> list[OutboxRow]:
    """Claim up to `batch` unclaimed orders of `queue` (oldest first) for `hold_s` seconds, in one short
    statement: the relay publishes them after it returns, holding no transaction. SKIP LOCKED and the
    claim keep relays of several processes off each other's rows; rows whose claim ran out (their relay
    died mid-publish) are taken again. The database's clock judges claims, so hosts' clocks never matter."""
    cur = await conn.execute(
        """UPDATE dispatch_outbox o SET claimed_until = clock_timestamp() + make_interval(secs => %(hold)s)
           FROM (SELECT id FROM dispatch_outbox
                 WHERE queue = %(queue)s AND (claimed_until IS NULL OR claimed_until < clock_timestamp())
                 ORDER BY id LIMIT %(batch)s FOR UPDATE SKIP LOCKED) due
           WHERE o.id = due.id
           RETURNING o.id, o.approval_id, o.body""",
        {"queue": queue, "batch": batch, "hold": hold_s})
    return sorted((OutboxRow(*row) for row in await cur.fetchall()), key=lambda r: r.id)


async def delete_outbox(conn: Conn, ids: list[int]) -> None:
    """Forget orders the broker confirmed."""
    await conn.execute("DELETE FROM dispatch_outbox WHERE id = ANY(%s)", (ids,))


async def release_outbox(conn: Conn, ids: list[int]) -> None:
    """Hand back orders that could not be published, for the next pass of any relay."""
    await conn.execute("UPDATE dispatch_outbox SET claimed_until = NULL WHERE id = ANY(%s)", (ids,))


async def queued_orders(conn: Conn, approval_id: UUID) -> list[bytes]:
    """The order bodies still waiting in the outbox for one approval, oldest first."""
    cur = await conn.execute("SELECT body FROM dispatch_outbox WHERE approval_id = %s ORDER BY id", (approval_id,))
    return [bytes(row[0]) for row in await cur.fetchall()]


async def outbox_backlog(conn: Conn) -> tuple[int, float]:
    """How many orders wait in the outbox (committed, not yet confirmed by the broker), and the age in
    seconds of the oldest (0 when none), by the database's clock."""
    cur = await conn.execute(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0) FROM dispatch_outbox")
    row = await cur.fetchone()
    return (int(row[0]), max(0.0, float(row[1]))) if row else (0, 0.0)


async def listen_for_orders(conn: Conn) -> None:
    """Subscribe `conn` to the outbox's commit notices (read them with `conn.notifies()`)."""
    await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")


@dataclass(slots=True, kw_only=True)
class StoredEvent:
    """One row of approval_events with its approval's action, as the relay publishes it; `tx` is the
    transaction that wrote it (its commit-order key, with `id`)."""

    id: int
    tx: int
    approval_id: UUID
    tenant_id: str
    action_id: str
    plan_hash: str
    event_type: str
    actor: str | None
    from_status: ApprovalStatus | None
    to_status: ApprovalStatus
    note: str | None
    correlation_id: str | None
    occurred_at: datetime

    def __post_init__(self) -> None:  # the columns are text (tx is read as text: psycopg has no xid8 type)
        self.tx = int(self.tx)
        self.from_status = None if self.from_status is None else ApprovalStatus(self.from_status)
        self.to_status = ApprovalStatus(self.to_status)


@dataclass(frozen=True, slots=True, order=True)
class RelayPosition:
    """Where an event relay got to: the last published event's transaction and id."""

    tx: int
    id: int


async def start_relay_cursor(conn: Conn, name: str) -> None:
    """Create cursor `name`, if missing, after every event of the transactions that have finished."""
    await conn.execute(
        """INSERT INTO event_relay (name, last_tx, last_id)
           VALUES (%s, (pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text::xid8,
                   9223372036854775807)
           ON CONFLICT (name) DO NOTHING""", (name,))


async def take_relay_cursor(conn: Conn, name: str, *, holder: UUID, hold_s: float) -> RelayPosition | None:
    """Hold cursor `name` for `holder` for `hold_s` seconds (renewed by each pass; taken over by another
    holder only after it runs out) and return its position; None if another holder has it. One short
    statement: no lock outlives it, so nothing stays open while the broker confirms."""
    cur = await conn.execute(
        """UPDATE event_relay SET holder = %(holder)s,
               held_until = clock_timestamp() + make_interval(secs => %(hold)s)
           WHERE name = %(name)s AND (holder IS NULL OR holder = %(holder)s OR held_until < clock_timestamp())
           RETURNING last_tx::text, last_id""", {"name": name, "holder": holder, "hold": hold_s})
    row = await cur.fetchone()
    return RelayPosition(int(row[0]), int(row[1])) if row else None


async def committed_events_after(conn: Conn, after: RelayPosition, limit: int) -> list[StoredEvent]:
    """Events after `after` in commit order ((tx, id)), only of transactions older than the oldest one
    still running: all of those have finished, so no event will ever appear before the last one read."""
    async with conn.cursor(row_factory=class_row(StoredEvent)) as cur:
        await cur.execute(
            """SELECT e.id, e.tx::text AS tx, e.approval_id, e.tenant_id, a.action_id, a.plan_hash, e.event_type,
                      e.actor, e.from_status, e.to_status, e.note, e.correlation_id, e.occurred_at
               FROM approval_events e JOIN approvals a ON a.id = e.approval_id
               WHERE (e.tx, e.id) > (%(tx)s::text::xid8, %(id)s)
                 AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
               ORDER BY e.tx, e.id LIMIT %(limit)s""", {"tx": str(after.tx), "id": after.id, "limit": limit})
        return await cur.fetchall()


async def advance_relay_cursor(conn: Conn, name: str, *, holder: UUID, seen: RelayPosition,
                               to: RelayPosition) -> bool:
    """Move cursor `name` from `seen` to `to` if `holder` still holds it there (compare-and-set); False if
    another holder took it over meanwhile (then it publishes from `seen` again: duplicates, never a gap)."""
    cur = await conn.execute(
        """UPDATE event_relay SET last_tx = %(to_tx)s::text::xid8, last_id = %(to_id)s
           WHERE name = %(name)s AND holder = %(holder)s
             AND last_tx = %(seen_tx)s::text::xid8 AND last_id = %(seen_id)s
           RETURNING name""",
        {"name": name, "holder": holder, "seen_tx": str(seen.tx), "seen_id": seen.id, "to_tx": str(to.tx),
         "to_id": to.id})
    return await cur.fetchone() is not None


async def release_relay_cursor(conn: Conn, name: str, *, holder: UUID) -> None:
    """Let another process's relay take cursor `name` at once (this one is stopping)."""
    await conn.execute("UPDATE event_relay SET holder = NULL, held_until = NULL WHERE name = %s AND holder = %s",
                       (name, holder))


async def ping(conn: Conn) -> None:
    await conn.execute("SELECT 1")


# ---------------------------------------------------------------- plans


_COPIED = ("id", "tenant_id", "request_id", "operator_id", "action_id", "payload", "request_hash", "approval_status",
           "plan", "plan_hash", "created_at", "updated_at", "expires_at", "approval_rule")


async def copy_approvals(conn: Conn, rows: list[ApprovalRow]) -> None:
    """Bulk-load approvals as they are, without events: for tests and benchmarks that need a big table."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in _COPIED)
    async with conn.cursor() as cur, cur.copy(sql.SQL("COPY approvals ({}) FROM STDIN").format(columns)) as copy:
        for row in rows:
            await copy.write_row([Jsonb(v) if isinstance(v, dict | list) else v
                                  for v in (getattr(row, c) for c in _COPIED)])


async def analyze(conn: Conn) -> None:
    """Collect the approvals table's statistics now (autovacuum would, in its own time)."""
    await conn.execute("ANALYZE approvals")


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


def _numbered(query: str, params: Mapping[str, Any] | Sequence[Any]) -> tuple[str, list[Any]]:
    """`query` with psycopg's placeholders as PostgreSQL's $1, $2... (a name used twice is one
    parameter, as psycopg sends it) and the values in that order."""
    names: list[str] = []
    values: list[Any] = []
    positional = iter(params) if not isinstance(params, Mapping) else None

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if match.group(0) == "%%":
            return "%"
        if name is None:
            assert positional is not None, "a %s placeholder needs a sequence of parameters"
            values.append(next(positional))
            return f"${len(values)}"
        assert isinstance(params, Mapping), "a %(name)s placeholder needs a mapping of parameters"
        if name not in names:
            names.append(name)
            values.append(params[name])
        return f"${names.index(name) + 1}"

    return _PLACEHOLDER.sub(number, query), values


async def explain(conn: Conn, query: str, params: Mapping[str, Any] | Sequence[Any], *,
                  generic: bool = False) -> dict[str, Any]:
    """The plan (EXPLAIN, FORMAT JSON, not run) PostgreSQL picks for one of this module's statements:
    the custom plan for these values, or with `generic` the plan a prepared statement reuses for any
    values (psycopg prepares a statement from its 5th run, and PostgreSQL may then plan it generically)."""
    if not generic:
        cur = await conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + sql.SQL(query), params)
        row = await cur.fetchone()
        return dict(row[0][0]["Plan"]) if row else {}
    numbered, values = _numbered(query, params)
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(b"PREPARE pj_explained AS " + numbered.encode())
        try:
            cur = await conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE pj_explained ({})").format(
                sql.SQL(", ").join(sql.Literal(v) for v in values)))
            row = await cur.fetchone()
        finally:
            await conn.execute("DEALLOCATE pj_explained")
    return dict(row[0][0]["Plan"]) if row else {}


# ---------------------------------------------------------------- schema


_MIGRATION_LOCK = 0x504A_4D49  # any constant, the same in every approvals process


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of each numbered file in the migrations package, in order."""
    found = []
    for entry in resources.files("pj_approvals.migrations").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conninfo: str) -> list[str]:
    """Apply every migration not applied yet, each in its own transaction; returns those applied now.

    An advisory lock makes concurrent starts of several approvals processes safe.
    """
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for version, name, text in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(text.encode())
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                       (version, name))
                applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


async def ensure_database(conninfo: str) -> bool:
    """Create the database named in `conninfo` if missing; True if it was created."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    dbname = str(params.get("dbname") or "postgres")
    params["dbname"] = "postgres"
    async with await psycopg.AsyncConnection.connect(psycopg.conninfo.make_conninfo("", **params),
                                                     autocommit=True) as conn:
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        if await cur.fetchone():
            return False
        try:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        except psycopg.errors.DuplicateDatabase:
            return False  # created by a concurrent start
        return True


async def drop_database(conninfo: str, dbname: str) -> None:
    """Drop a database (tests clean up the one they made)."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))

