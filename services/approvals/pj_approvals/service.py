"""What the approvals service does, command by command. Handlers call it; it calls the store.

Every write is one compare-and-set statement; what the service publishes it publishes after commit.
"""

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

from pj_common.auth import Principal
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import (
    DecideRequest,
    DispatchOrder,
    DispatchRequest,
    ErrorBody,
    ExecuteRequest,
    ListApprovals,
    PlanStep,
    ReplyAddress,
    StepReport,
    StepResult,
)

from . import catalog as cat
from . import store
from .domain import (
    Rule,
    Transition,
    chain_view,
    check_may_dispatch,
    check_may_request,
    evaluate_decision,
    next_status,
    sources_of,
)
from .errors import not_found
from .metrics import ApprovalMetrics
from .settings import ApprovalsSettings

log = logging.getLogger("pj.approvals")

# Who "approved" a launch-tier action: the catalog's policy, not a person.
LAUNCH_POLICY = "policy:launch"

# A decision that loses its compare-and-set to a concurrent one re-reads and tries again this often.
_DECIDE_ATTEMPTS = 5

Publish = Callable[[DispatchOrder], Awaitable[None]]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def approval_view(row: store.ApprovalRow) -> dict[str, Any]:
    """An approval as clients see it, with the runbook's field names (and its audit trail when read)."""
    view = {
        "id": str(row.id),
        "request_id": row.request_id,
        "tenant_id": row.tenant_id,
        "operator_id": row.operator_id,
        "action_id": row.action_id,
        "approval_status": row.approval_status,
        "approver_id": row.approver_id,
        "approval_note": row.approval_note,
        "payload": row.payload,
        "plan": row.plan,
        "plan_hash": row.plan_hash,
        "dispatch_result": row.dispatch_result,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "decided_at": _iso(row.decided_at),
        "dispatched_at": _iso(row.dispatched_at),
        "finished_at": _iso(row.finished_at),
        "expires_at": _iso(row.expires_at),
    }
    if row.audit is not None:
        view["audit"] = row.audit
    return view


def _parse_id(approval_id: str) -> UUID:
    try:
        return UUID(approval_id)
    except ValueError:
        raise not_found(approval_id) from None


def _owner_filter(principal: Principal) -> str | None:
    return None if principal.sees_whole_tenant else principal.subject


@dataclass(frozen=True, slots=True)
class DispatchStarted:
    """The CAS to dispatching won and the order is on its way; the final outcome comes later."""

    data: dict[str, Any]


class ApprovalService:
    def __init__(self, pool: AsyncConnectionPool[Any], catalog: cat.Catalog, settings: ApprovalsSettings,
                 metrics: ApprovalMetrics, publish_order: Publish,
                 clock: Callable[[], datetime]) -> None:
        self._pool = pool
        self._catalog = catalog
        self._settings = settings
        self._metrics = metrics
        self._publish_order = publish_order
        self._now = clock

    # ------------------------------------------------------------ execute

    def _plan(self, principal: Principal, req: ExecuteRequest) -> tuple[cat.Action, list[dict[str, Any]], str]:
        action = self._catalog.action(req.action_id)
        check_may_request(principal, action.requesters)
        cat.check_payload(req.action_id, action, req.payload)
        plan = cat.plan_document(cat.build_plan(req.action_id, action, req.payload,
                                                self._catalog.tenant_settings(principal.tenant)))
        return action, plan, cat.plan_hash(plan)

    async def execute(self, principal: Principal, req: ExecuteRequest, correlation_id: str,
                      notify: ReplyAddress | None = None, message_id: str | None = None
                      ) -> dict[str, Any] | DispatchStarted:
        """Plan the request; in execute mode store it (idempotent on requestId): a governed action as a
        pending approval, a launch-tier action as approved by policy and dispatched at once.

        Without a requestId the command's message id stands in, so a redelivered command finds the
        approval its first delivery made instead of making a second one.
        """
        action, plan, plan_hash = self._plan(principal, req)
        if req.mode == "dry-run":
            return {"approvalRequired": False, "actionId": req.action_id, "plan": plan, "planHash": plan_hash}
        now = self._now()
        launch = action.tier == "launch"
        rule = action.rule(self._settings.dispatch_window_s)
        ttl = rule.dispatch_window_s if launch else action.pending_ttl or self._settings.pending_ttl_s
        row = store.ApprovalRow(
            id=uuid.uuid4(), tenant_id=principal.tenant, request_id=req.request_id or message_id or str(uuid.uuid4()),
            operator_id=principal.subject, action_id=req.action_id, payload=req.payload,
            request_hash=cat.request_hash(req.action_id, req.payload),
            approval_status="approved" if launch else "pending", approver_id=LAUNCH_POLICY if launch else None,
            approval_note=None, plan=plan, plan_hash=plan_hash, dispatch_result=None, claim_token=None,
            created_at=now, updated_at=now, decided_at=now if launch else None, dispatched_at=None,
            finished_at=None, expires_at=now + timedelta(seconds=ttl), approval_rule=rule.to_json())
        event = store.EventRecord("approval.created", principal.subject, principal.role, None, None, correlation_id)
        async with self._pool.connection() as conn:
            created = await store.insert_approval(conn, row, event)
            if created is None:
                existing = await store.find_by_request(conn, principal.tenant, row.request_id)
        if created is None:
            return self._created_view(self._same_request(existing, row, correlation_id), created=False)
        self._metrics.created.labels(req.action_id).inc()
        log.info("approval created", extra={
            "scope": "pj.execute.approval_created", "approvalId": str(created.id), "requestId": created.request_id,
            "actionId": created.action_id, "tenantId": created.tenant_id, "tier": action.tier,
            "correlationId": correlation_id})
        if not launch:
            return self._created_view(created, created=True)
        async with self._pool.connection() as conn:
            started = await self._start_dispatch(conn, created, principal, [], now, correlation_id, notify)
        return DispatchStarted({**self._created_view(created, created=True), **started.data})

    def _same_request(self, existing: store.ApprovalRow | None, row: store.ApprovalRow,
                      correlation_id: str) -> store.ApprovalRow:
        """The approval an earlier request with this requestId made, if it asked for the same thing."""
        if existing is None:  # the row that conflicted was deleted in between: nothing to return
            raise GateError(ErrorCode.INTERNAL_ERROR, "request id conflict could not be resolved; retry")
        if existing.request_hash != row.request_hash or existing.operator_id != row.operator_id:
            log.warning("request id reused for a different request", extra={
                "scope": "pj.execute.approval_create_failed", "requestId": row.request_id,
                "approvalId": str(existing.id), "correlationId": correlation_id})
            raise GateError(ErrorCode.IDEMPOTENCY_CONFLICT, f"requestId {row.request_id!r} was already used "
                            "for a different action or payload, or by another requester")
        return existing

    @staticmethod
    def _created_view(row: store.ApprovalRow, *, created: bool) -> dict[str, Any]:
        return {"approvalId": str(row.id), "approvalRequired": row.approver_id != LAUNCH_POLICY,
                "approvalStatus": row.approval_status, "planHash": row.plan_hash, "requestId": row.request_id,
                "created": created}

    # ------------------------------------------------------------ reads

    async def list_approvals(self, principal: Principal, req: ListApprovals) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            rows, total, pending = await store.list_approvals(
                conn, principal.tenant, _owner_filter(principal), req.status, req.limit, req.offset, self._now())
        return {"approvals": [approval_view(r) for r in rows], "total": total, "pendingCount": pending,
                "limit": req.limit, "offset": req.offset}

    async def get_approval(self, principal: Principal, approval_id: str) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            row = await store.get_approval(conn, _parse_id(approval_id), principal.tenant,
                                           _owner_filter(principal))
        if row is None:
            raise not_found(approval_id)
        return approval_view(row)

    async def count_pending(self, principal: Principal) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            count = await store.count_pending(conn, principal.tenant, _owner_filter(principal), self._now())
        return {"pendingCount": count}

    # ------------------------------------------------------------ decide

    async def decide(self, principal: Principal, req: DecideRequest, correlation_id: str) -> dict[str, Any]:
        """Record one decision under the approval's own rule: a stage needs its number of distinct
        approvals from its roles, the requester never decides, one rejection rejects."""
        approval_id = _parse_id(req.approval_id)
        for _ in range(_DECIDE_ATTEMPTS):
            now = self._now()
            async with self._pool.connection() as conn:
                seen = await store.get_approval(conn, approval_id, principal.tenant, None, with_audit=False,
                                                with_decisions=True)
                if seen is None:
                    raise not_found(req.approval_id)
                if seen.approval_status != "pending" or seen.expires_at <= now:
                    state = "expired" if seen.approval_status == "pending" else seen.approval_status
                    raise GateError(ErrorCode.INVALID_STATE,
                                    f"approval is {state}; only pending approvals can be decided")
                rule = Rule.from_json(seen.approval_rule)
                outcome = evaluate_decision(rule, seen.stage_index, seen.stage_approvals, seen.operator_id,
                                            (d["approverId"] for d in seen.decisions or []), principal, req.status)
                decision = store.Decision(principal.subject, principal.role, req.status, req.note, outcome.stage_name,
                                          outcome.status, outcome.stage_index, outcome.stage_approvals, outcome.final)
                event = store.EventRecord("approval.decided", principal.subject, principal.role, "pending",
                                          req.note, correlation_id)
                try:
                    row = await store.record_decision(conn, seen, decision,
                                                      now + timedelta(seconds=rule.dispatch_window_s), now, event)
                except psycopg.errors.UniqueViolation:
                    raise GateError(ErrorCode.ALREADY_DECIDED,
                                    "you already decided this approval; nobody counts twice") from None
            if row is not None:
                break
            # Someone else decided (or it expired) between our read and our write: look again.
        else:
            raise GateError(ErrorCode.INVALID_STATE, "the approval kept changing; try again")
        if outcome.final:
            metric = self._metrics.approved if outcome.status == "approved" else self._metrics.rejected
            metric.labels(row.action_id).inc()
            self._metrics.approval_time.labels(outcome.status).observe((now - row.created_at).total_seconds())
        log.info("approval decided", extra={
            "scope": "approval.decided", "approvalId": str(row.id), "requestId": row.request_id,
            "decision": req.status, "status": row.approval_status, "stage": outcome.stage_name,
            "approverId": principal.subject, "correlationId": correlation_id})
        return approval_view(row)

    async def chain(self, principal: Principal, approval_id: str) -> dict[str, Any]:
        """The approval's stages: who may decide each, who did, when, with what note."""
        async with self._pool.connection() as conn:
            row = await store.get_approval(conn, _parse_id(approval_id), principal.tenant, _owner_filter(principal),
                                           with_audit=False, with_decisions=True)
        if row is None:
            raise not_found(approval_id)
        rule = Rule.from_json(row.approval_rule)
        return {"approvalId": str(row.id), "approvalStatus": row.approval_status,
                "currentStage": rule.stages[row.stage_index].name if row.approval_status == "pending" else None,
                "stages": chain_view(rule, row.approval_status, row.stage_index, row.decisions or [])}

    def reload_catalog(self, catalog: cat.Catalog) -> None:
        """Use a new catalog for new requests; approvals already created keep their plan and rule."""
        self._catalog = catalog

    # ------------------------------------------------------------ dispatch

    async def dispatch(self, principal: Principal, req: DispatchRequest, correlation_id: str,
                       notify: ReplyAddress | None) -> dict[str, Any] | DispatchStarted:
        """CAS approved|dispatch_failed -> dispatching after re-checking the plan, then send the order."""
        check_may_dispatch(principal)
        approval_id = _parse_id(req.approval_id)
        now = self._now()
        async with self._pool.connection() as conn:
            seen = await store.get_approval(conn, approval_id, principal.tenant, None, with_audit=False)
            if seen is None:
                raise not_found(req.approval_id)
            if seen.approval_status in ("dispatching", "dispatched") and not req.dry_run:
                self._conflict(req.approval_id, correlation_id)
            self._check_dispatchable(seen, now)
            self._check_plan(seen, correlation_id)
            completed = ([StepResult.model_validate(s) for s in await store.completed_steps(conn, seen.id)]
                         if seen.approval_status == "dispatch_failed" else [])
            if req.dry_run:
                steps = [PlanStep.model_validate(s) for s in seen.plan]
                return {"approvalStatus": seen.approval_status, "dryRun": True,
                        "dispatchResult": self._simulate(steps, completed)}
            return await self._start_dispatch(conn, seen, principal, completed, now, correlation_id, notify)

    async def _start_dispatch(self, conn: store.Conn, seen: store.ApprovalRow, principal: Principal,
                              completed: list[StepResult], now: datetime, correlation_id: str,
                              notify: ReplyAddress | None) -> DispatchStarted:
        """CAS the approval to dispatching with a fresh claim token, then publish its dispatch order."""
        claim = uuid.uuid4()
        event = store.EventRecord("approval.dispatch.started", principal.subject, principal.role,
                                  seen.approval_status, None, correlation_id)
        lease = now + timedelta(seconds=self._settings.dispatch_lease_s)
        row = await store.claim_for_dispatch(conn, seen, claim, now, lease, event)
        if row is None:
            self._conflict(str(seen.id), correlation_id)
        self._metrics.consume_success.inc()
        log.info("dispatch started", extra={
            "scope": "approval.dispatch.started", "approvalId": str(row.id), "requestId": row.request_id,
            "correlationId": correlation_id})
        steps = [PlanStep.model_validate(s) for s in row.plan]
        order = DispatchOrder(approval_id=str(row.id), tenant_id=row.tenant_id, action_id=row.action_id,
                              claim_token=str(claim), steps=steps, completed=completed, notify=notify)
        try:
            await self._publish_order(order)
        except Exception as exc:
            await self._abandon_dispatch(conn, row, claim, steps, exc)
            raise
        return DispatchStarted({"approvalId": str(row.id), "approvalStatus": "dispatching"})

    async def _abandon_dispatch(self, conn: store.Conn, row: store.ApprovalRow, claim: UUID, steps: list[PlanStep],
                                exc: Exception) -> None:
        """The order never reached the broker: end the claim as dispatch_failed (nothing ran), so an
        admin can dispatch again instead of the approval waiting in dispatching for good."""
        error = ErrorBody(code="order_not_published", message=f"the dispatch order could not be published: {exc!r}")
        results = [StepResult(step_id=s.step_id, connector=s.connector, operation=s.operation, status="not_run",
                              error=error).model_dump(by_alias=True, mode="json") for s in steps]
        event = store.EventRecord("approval.dispatch.failed", None, None, "dispatching", error.message, None)
        abandoned = await store.finish_dispatch(conn, row.id, claim, next_status("dispatching", Transition.FAIL),
                                                results, self._now(), event)
        log.error("dispatch order not published; approval set to dispatch_failed", extra={
            "scope": "approval.dispatch.publish_failed", "approvalId": str(row.id),
            "recorded": abandoned is not None})

    def _conflict(self, approval_id: str, correlation_id: str) -> None:
        """Another dispatch holds (or finished) this approval: a double dispatch was prevented."""
        self._metrics.consume_conflict.inc()
        log.info("dispatch conflict: already claimed", extra={
            "scope": "consume_for_dispatch.conflict", "approvalId": approval_id, "correlationId": correlation_id})
        raise GateError(ErrorCode.INVALID_STATE, "approval is already being dispatched or was dispatched")

    @staticmethod
    def _check_dispatchable(row: store.ApprovalRow, now: datetime) -> None:
        next_status(row.approval_status, Transition.DISPATCH)  # approved, or dispatch_failed to retry
        if row.expires_at <= now:  # a failed dispatch may be retried only within the same window
            raise GateError(ErrorCode.INVALID_STATE, "the approval's dispatch window has passed")

    def _check_plan(self, row: store.ApprovalRow, correlation_id: str) -> None:
        """Refuse if the stored plan was altered, or if the current catalog would plan differently."""
        reason = None
        if cat.plan_hash(row.plan) != row.plan_hash:
            reason = "the stored plan no longer matches its approved hash"
        else:
            try:
                action = self._catalog.action(row.action_id)
                replanned = cat.plan_document(cat.build_plan(row.action_id, action, row.payload,
                                                             self._catalog.tenant_settings(row.tenant_id)))
                if cat.plan_hash(replanned) != row.plan_hash:
                    reason = "the catalog now plans this request differently than when it was approved"
            except GateError:
                reason = "the action is no longer in the catalog"
        if reason is not None:
            self._metrics.plan_changed.inc()
            log.warning("dispatch refused: %s", reason, extra={
                "scope": "approval.dispatch.plan_changed", "approvalId": str(row.id),
                "correlationId": correlation_id})
            raise GateError(ErrorCode.PLAN_CHANGED, reason)

    @staticmethod
    def _simulate(steps: list[PlanStep], completed: list[StepResult]) -> list[dict[str, Any]]:
        done = {c.step_id for c in completed}
        return [StepResult(step_id=s.step_id, connector=s.connector, operation=s.operation,
                           status="skipped" if s.step_id in done else "simulated",
                           result={"params": s.params}).model_dump(by_alias=True, mode="json")
                for s in steps]

    async def dispatch_plan(self, approval_id: str, claim_token: str) -> dict[str, Any]:
        """The plan a dispatch order's claim may run and the steps already done, or stale."""
        try:
            claim = UUID(claim_token)
        except ValueError:
            raise GateError(ErrorCode.VALIDATION_ERROR, "claimToken is not a UUID") from None
        async with self._pool.connection() as conn:
            found = await store.claimed_plan(conn, _parse_id(approval_id), claim)
        if found is None:
            return {"stale": True, "steps": [], "completed": []}
        return {"stale": False, "steps": found[0], "completed": found[1]}

    async def record_report(self, report: StepReport) -> store.ApprovalRow | None:
        """Checkpoint a step; on the plan's last report, CAS dispatching -> dispatched|dispatch_failed.

        Returns the finished approval when this report ended the dispatch, else None. A stale or
        duplicate report changes nothing (its claim no longer matches).
        """
        now = self._now()
        step = report.step.model_dump(by_alias=True, mode="json")
        approval_id, claim = UUID(report.approval_id), UUID(report.claim_token)
        async with self._pool.connection() as conn:
            if report.plan_status == "running":
                recorded = await store.record_step(conn, approval_id, claim, report.step.step_id,
                                                   report.step.status, step, now,
                                                   now + timedelta(seconds=self._settings.dispatch_lease_s))
                if not recorded:
                    log.info("stale step report ignored", extra={
                        "scope": "approval.dispatch.stale_report", "approvalId": report.approval_id})
                return None
            failed = report.plan_status == "dispatch_failed"
            to_status = next_status("dispatching", Transition.FAIL if failed else Transition.COMPLETE)
            event_type = "approval.dispatch.failed" if failed else "approval.dispatch.completed"
            event = store.EventRecord(event_type, None, None, "dispatching", None, None)
            results = [r.model_dump(by_alias=True, mode="json") for r in report.results]
            row = await store.finish_dispatch(conn, approval_id, claim, to_status, results, now, event)
        if row is None:
            log.info("stale final report ignored", extra={
                "scope": "approval.dispatch.stale_report", "approvalId": report.approval_id})
            return None
        latency = (now - row.dispatched_at).total_seconds() if row.dispatched_at else 0.0
        (self._metrics.dispatch_failure if failed else self._metrics.dispatch_success).labels(row.action_id).inc()
        self._metrics.dispatch_latency.labels("failure" if failed else "success").observe(latency)
        log.log(logging.WARNING if failed else logging.INFO, "dispatch finished", extra={
            "scope": event_type, "approvalId": str(row.id), "requestId": row.request_id,
            "status": row.approval_status, "failedStep": report.step.step_id if failed else None})
        return row

    # ------------------------------------------------------------ expiry, health, metrics

    async def expire_due(self, batch: int = 500) -> int:
        """Expire pending approvals past their TTL and approved ones past their dispatch window."""
        total = 0
        event = store.EventRecord("approval.expired", None, None, None, None, None)
        while True:
            async with self._pool.connection() as conn:
                rows = await store.expire_due(conn, sources_of(Transition.EXPIRE), self._now(), batch, event)
            for row in rows:
                self._metrics.expired.labels("pending" if row.decided_at is None else "approved").inc()
                log.info("approval expired", extra={"scope": "approval.expired", "approvalId": str(row.id),
                                                    "requestId": row.request_id})
            total += len(rows)
            if len(rows) < batch:
                return total

    async def fail_expired_leases(self, batch: int = 500) -> int:
        """Fail dispatches whose lease ran out (order lost, dispatchers gone): an admin may dispatch
        again and the steps already done are skipped; a late order or report for the old claim is stale."""
        to_status = next_status("dispatching", Transition.FAIL)
        message = f"no progress within the dispatch lease ({self._settings.dispatch_lease_s:g}s); dispatch again"
        event = store.EventRecord("approval.dispatch.failed", None, None, "dispatching", message, None)
        async with self._pool.connection() as conn:
            rows = await store.fail_expired_leases(conn, to_status, self._now(), batch, message, event)
        for row in rows:
            self._metrics.dispatch_failure.labels(row.action_id).inc()
            log.warning("dispatch lease expired", extra={"scope": "approval.dispatch.lease_expired",
                                                         "approvalId": str(row.id), "requestId": row.request_id})
        return len(rows)

    async def health(self) -> dict[str, Any]:
        try:
            async with self._pool.connection(timeout=2) as conn:
                await store.ping(conn)
        except Exception as exc:  # any failure here is the answer, not an error
            return {"database": {"status": "error", "detail": type(exc).__name__}}
        return {"database": {"status": "ok"}}

    async def refresh_pending_gauge(self) -> None:
        """Set approval_pending_gauge from the database (all tenants, unexpired)."""
        async with self._pool.connection() as conn:
            self._metrics.pending.set(await store.count_pending(conn, None, None, self._now()))

    async def metrics_text(self) -> str:
        await self.refresh_pending_gauge()
        return self._metrics.render().decode()
