"""What the approvals service does, command by command. Handlers call it; it calls the store.

Every write is one compare-and-set statement whose `from` and `to` come from the domain's transition
table; what the service publishes it publishes after commit. Every answer is a contract model.
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, Protocol
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

from pj_common.auth import Principal
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import (
    ApprovalPage,
    ApprovalStatus,
    ApprovalView,
    AuditEntry,
    ChainStage,
    ChainView,
    ComponentHealth,
    DecideRequest,
    DispatchOrder,
    DispatchOutcome,
    DispatchPlan,
    DispatchRequest,
    DryRunPlan,
    ExecuteAccepted,
    ExecuteRequest,
    HealthReport,
    LeaseGrant,
    ListApprovals,
    MetricsText,
    PendingCount,
    PlanStep,
    ReplyAddress,
    StepReport,
    StepResult,
)

from . import catalog as cat
from . import store
from .domain import (
    CLAIMED,
    DecisionOutcome,
    Rule,
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
from .errors import not_found
from .metrics import ApprovalMetrics
from .settings import ApprovalsSettings

log = logging.getLogger("pj.approvals")

S = ApprovalStatus

# Who "approved" a launch-tier action: the catalog's policy, not a person.
LAUNCH_POLICY = "policy:launch"

# A decision that loses its compare-and-set to a concurrent one re-reads and tries again this often.
_DECIDE_ATTEMPTS = 5

# Called after a commit that queued a dispatch order: wakes this process's order relay at once.
OrderQueued = Callable[[], None]


def approval_view(row: store.ApprovalRow, *, summary: bool = False) -> ApprovalView:
    """An approval as clients see it, with the runbook's field names (and its audit trail when read);
    a `summary` (a list page's) leaves out the payload and the plan."""
    return ApprovalView(
        id=str(row.id), request_id=row.request_id, tenant_id=row.tenant_id, operator_id=row.operator_id,
        action_id=row.action_id, approval_status=row.approval_status, approver_id=row.approver_id,
        approval_note=row.approval_note, payload=None if summary else row.payload,
        plan=None if summary else [PlanStep.model_validate(s) for s in row.plan], plan_hash=row.plan_hash,
        dispatch_result=_step_results(row.dispatch_result), created_at=row.created_at,
        updated_at=row.updated_at, decided_at=row.decided_at, dispatched_at=row.dispatched_at,
        finished_at=row.finished_at, expires_at=row.expires_at,
        audit=None if row.audit is None else [AuditEntry.model_validate(e) for e in row.audit])


def _step_results(stored: list[dict[str, Any]] | None) -> list[StepResult] | None:
    return None if stored is None else [StepResult.model_validate(r) for r in stored]


def _parse_claim(claim_token: str) -> UUID:
    try:
        return UUID(claim_token)
    except ValueError:
        raise GateError(ErrorCode.VALIDATION_ERROR, "claimToken is not a UUID") from None


def _parse_id(approval_id: str) -> UUID:
    try:
        return UUID(approval_id)
    except ValueError:
        raise not_found(approval_id) from None


def _owner_filter(principal: Principal) -> str | None:
    return None if principal.sees_whole_tenant else principal.subject


class OrderSource(Protocol):
    """What a dispatch order is made of: the approval's identity and its approved plan."""

    @property
    def id(self) -> UUID: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def action_id(self) -> str: ...
    @property
    def plan(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class DispatchStarted:
    """The CAS to dispatching won and the order is on its way; the final outcome comes later."""

    data: ExecuteAccepted | DispatchOutcome


class ApprovalService:
    def __init__(self, pool: AsyncConnectionPool[Any], catalog: cat.Catalog, settings: ApprovalsSettings, *,
                 metrics: ApprovalMetrics, order_queue: str, on_order_queued: OrderQueued,
                 clock: Callable[[], datetime]) -> None:
        self._pool = pool
        self._catalog = catalog
        self._settings = settings
        self._metrics = metrics
        # The dispatch queue this process's orders go to, and the relay's wake-up.
        self._order_queue = order_queue
        self._order_queued = on_order_queued
        self._now = clock

    # ------------------------------------------------------------ execute

    def _plan(self, principal: Principal, req: ExecuteRequest) -> tuple[cat.Action, list[dict[str, Any]], str]:
        self._check_tenant(principal.tenant)
        action = self._catalog.action(req.action_id)
        check_may_request(principal, action.requesters)
        cat.check_payload(req.action_id, action, req.payload)
        plan = cat.plan_document(cat.build_plan(req.action_id, action, req.payload,
                                                tenant=self._tenant_settings(principal.tenant)))
        return action, plan, cat.plan_hash(plan)

    def _check_tenant(self, tenant_id: str) -> None:
        """A tenant the catalog does not list plans and runs nothing (unless the catalog allows it)."""
        self._catalog.check_tenant(tenant_id, case_insensitive=self._settings.identity_case_insensitive)

    def _tenant_settings(self, tenant_id: str) -> dict[str, Any]:
        return self._catalog.tenant_settings(tenant_id, case_insensitive=self._settings.identity_case_insensitive)

    async def execute(self, principal: Principal, req: ExecuteRequest, correlation_id: str, *,
                      notify: ReplyAddress | None = None, message_id: str | None = None
                      ) -> ExecuteAccepted | DryRunPlan | DispatchStarted:
        """Plan the request; in execute mode store it (idempotent on requestId): a governed action as a
        pending approval, a launch-tier action as approved by policy and dispatched at once.

        Without a requestId the command's message id stands in, so a redelivered command finds the
        approval its first delivery made instead of making a second one.
        """
        action, plan, plan_hash = self._plan(principal, req)
        if req.mode == "dry-run":
            return DryRunPlan(action_id=req.action_id, plan=[PlanStep.model_validate(s) for s in plan],
                              plan_hash=plan_hash)
        now = self._now()
        launch = action.tier == "launch"
        rule = action.rule(self._settings.dispatch_window_s)
        ttl = rule.dispatch_window_s if launch else action.pending_ttl or self._settings.pending_ttl_s
        row = store.ApprovalRow(
            id=uuid.uuid4(), tenant_id=principal.tenant, request_id=req.request_id or message_id or str(uuid.uuid4()),
            operator_id=principal.subject, action_id=req.action_id, payload=req.payload,
            request_hash=cat.request_hash(req.action_id, req.payload), approval_status=S.PENDING,
            approver_id=LAUNCH_POLICY if launch else None, approval_note=None, plan=plan, plan_hash=plan_hash,
            dispatch_result=None, claim_token=None, created_at=now, updated_at=now,
            decided_at=now if launch else None, dispatched_at=None, finished_at=None,
            expires_at=now + timedelta(seconds=ttl), approval_rule=rule.to_json())
        event = store.EventRecord(event_type="approval.created", at=now, actor=principal.subject,
                                  actor_role=principal.role, correlation_id=correlation_id)
        # A launch-tier action is approved by policy and claimed for dispatch in the insert itself.
        started = self._launch(row, now=now, notify=notify) if launch else None
        async with self._pool.connection() as conn:
            created = await store.insert_approval(conn, row, event, launch=started)
            if created is None:
                existing = await store.find_by_request(conn, principal.tenant, row.request_id)
        if created is None:
            return await self._existing(self._same_request(existing, row, correlation_id), principal,
                                        correlation_id=correlation_id, notify=notify)
        self._metrics.created.labels(req.action_id).inc()
        log.info("approval created", extra={
            "scope": "pj.execute.approval_created", "approvalId": str(created.id), "requestId": created.request_id,
            "actionId": created.action_id, "tenantId": created.tenant_id, "tier": action.tier,
            "correlationId": correlation_id})
        if started is None:
            return self._created_view(created, created=True)
        self._order_queued()
        self._dispatch_started(created, correlation_id)
        return DispatchStarted(self._created_view(created, created=True))

    def _launch(self, row: store.ApprovalRow, *, now: datetime, notify: ReplyAddress | None) -> store.Launch:
        """Make `row` a launch-tier approval claimed for dispatch: approved by policy, then dispatching
        under a fresh claim whose order goes into the outbox with it."""
        approved = next_status(S.PENDING, Transition.APPROVE)
        row.approval_status = next_status(approved, Transition.DISPATCH)
        row.dispatched_at = now
        order = self._queued_order(row, now=now, completed=[], notify=notify)
        row.claim_token = order.claim_token
        return store.Launch(approved_status=approved, order=order)

    async def _existing(self, existing: store.ApprovalRow, principal: Principal, *, correlation_id: str,
                        notify: ReplyAddress | None) -> ExecuteAccepted | DispatchStarted:
        """The answer to a retried execute. A launch-tier approval that an older version left approved
        (its process died between the insert and the claim) is dispatched now instead of waiting for good."""
        now = self._now()
        stranded = (existing.approver_id == LAUNCH_POLICY and existing.approval_status == S.APPROVED
                    and existing.expires_at > now)
        if not stranded:
            return self._created_view(existing, created=False)
        async with self._pool.connection() as conn:
            try:
                started = await self._start_dispatch(conn, existing, principal, completed=[], now=now,
                                                     correlation_id=correlation_id, notify=notify)
            except GateError:  # a concurrent retry dispatched it (or it just expired): answer what it is now
                again = await store.find_by_request(conn, existing.tenant_id, existing.request_id)
                return self._created_view(again or existing, created=False)
        return DispatchStarted(self._created_view(existing, created=False).model_copy(
            update={"approval_status": started.data.approval_status}))

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
    def _created_view(row: store.ApprovalRow, *, created: bool) -> ExecuteAccepted:
        return ExecuteAccepted(approval_id=str(row.id), approval_required=row.approver_id != LAUNCH_POLICY,
                               approval_status=row.approval_status, plan_hash=row.plan_hash,
                               request_id=row.request_id, created=created)

    # ------------------------------------------------------------ reads

    async def list_approvals(self, principal: Principal, req: ListApprovals) -> ApprovalPage:
        async with self._pool.connection() as conn:
            rows, total, pending = await store.list_approvals(
                conn, principal.tenant, _owner_filter(principal), status=req.status, limit=req.limit,
                offset=req.offset, now=self._now())
        return ApprovalPage(approvals=[approval_view(r, summary=not req.full) for r in rows], total=total,
                            pending_count=pending,
                            limit=req.limit, offset=req.offset)

    async def get_approval(self, principal: Principal, approval_id: str) -> ApprovalView:
        async with self._pool.connection() as conn:
            row = await store.get_approval(conn, _parse_id(approval_id), principal.tenant,
                                           operator_id=_owner_filter(principal))
        if row is None:
            raise not_found(approval_id)
        return approval_view(row)

    async def count_pending(self, principal: Principal) -> PendingCount:
        async with self._pool.connection() as conn:
            count = await store.count_pending(conn, principal.tenant, _owner_filter(principal), now=self._now())
        return PendingCount(pending_count=count)

    # ------------------------------------------------------------ decide

    async def decide(self, principal: Principal, req: DecideRequest, correlation_id: str) -> ApprovalView:
        """Record one decision under the approval's own rule: a stage needs its number of distinct
        approvals from its roles, the requester never decides, one rejection rejects."""
        approval_id = _parse_id(req.approval_id)
        for _ in range(_DECIDE_ATTEMPTS):
            now = self._now()
            decided = await self._try_decide(principal, req, approval_id, correlation_id=correlation_id, now=now)
            if decided is not None:
                break
            # Someone else decided (or it expired) between our read and our write: look again.
        else:
            raise GateError(ErrorCode.INVALID_STATE, "the approval kept changing; try again")
        row, outcome = decided
        if outcome.final:
            metric = self._metrics.approved if outcome.transition is Transition.APPROVE else self._metrics.rejected
            metric.labels(row.action_id).inc()
            self._metrics.approval_time.labels(outcome.status.value).observe((now - row.created_at).total_seconds())
        log.info("approval decided", extra={
            "scope": "approval.decided", "approvalId": str(row.id), "requestId": row.request_id,
            "decision": req.status, "status": row.approval_status.value, "stage": outcome.stage_name,
            "approverId": principal.subject, "correlationId": correlation_id})
        return approval_view(row)

    async def _try_decide(self, principal: Principal, req: DecideRequest, approval_id: UUID, *,
                          correlation_id: str, now: datetime) -> tuple[store.ApprovalRow, DecisionOutcome] | None:
        """One read-evaluate-CAS round of a decision; None if the CAS lost."""
        async with self._pool.connection() as conn:
            seen = await store.get_approval(conn, approval_id, principal.tenant, operator_id=None,
                                            with_audit=False, with_decisions=True)
            if seen is None:
                raise not_found(req.approval_id)
            rule = Rule.from_json(seen.approval_rule)
            if not may_find(principal, requester=seen.operator_id, rule=rule):
                raise not_found(req.approval_id)
            self._check_decidable(seen, now)
            outcome = evaluate_decision(rule, principal, req.status, stage_index=seen.stage_index,
                                        stage_approvals=seen.stage_approvals, requester=seen.operator_id,
                                        prior_deciders=(d["approverId"] for d in seen.decisions or []))
            from_status, to_status = edge(outcome.transition)
            decision = store.Decision(
                approver_id=principal.subject, approver_role=principal.role, decision=req.status, note=req.note,
                stage_name=outcome.stage_name, to_stage_index=outcome.stage_index,
                to_stage_approvals=outcome.stage_approvals, final=outcome.final,
                # Approval opens the dispatch window: the approval now expires at its end.
                dispatch_expires_at=(now + timedelta(seconds=rule.dispatch_window_s)
                                     if outcome.transition is Transition.APPROVE else None))
            event = store.EventRecord(event_type="approval.decided", at=now, actor=principal.subject,
                                      actor_role=principal.role, note=req.note, correlation_id=correlation_id)
            try:
                row = await store.record_decision(conn, seen, decision, from_status=from_status, to_status=to_status,
                                                  event=event)
            except psycopg.errors.UniqueViolation:
                raise GateError(ErrorCode.ALREADY_DECIDED,
                                "you already decided this approval; nobody counts twice") from None
        return None if row is None else (row, outcome)

    @staticmethod
    def _check_decidable(seen: store.ApprovalRow, now: datetime) -> None:
        decidable = seen.approval_status in sources_of(Transition.APPROVE)
        if decidable and seen.expires_at > now:
            return
        # Past its TTL it can no longer be decided, even before the sweeper marks it expired.
        state = target_of(Transition.EXPIRE) if decidable else seen.approval_status
        raise GateError(ErrorCode.INVALID_STATE, f"approval is {state}; only pending approvals can be decided")

    async def chain(self, principal: Principal, approval_id: str) -> ChainView:
        """The approval's stages: who may decide each, who did, when, with what note."""
        async with self._pool.connection() as conn:
            row = await store.get_approval(conn, _parse_id(approval_id), principal.tenant,
                                           operator_id=_owner_filter(principal), with_audit=False,
                                           with_decisions=True)
        if row is None:
            raise not_found(approval_id)
        rule = Rule.from_json(row.approval_rule)
        undecided = row.approval_status in sources_of(Transition.APPROVE)
        stages = chain_view(rule, row.approval_status, stage_index=row.stage_index, decisions=row.decisions or [])
        return ChainView(approval_id=str(row.id), approval_status=row.approval_status,
                         current_stage=rule.stages[row.stage_index].name if undecided else None,
                         stages=[ChainStage.model_validate(s) for s in stages])

    def reload_catalog(self, catalog: cat.Catalog) -> None:
        """Use a new catalog for new requests; approvals already created keep their plan and rule."""
        self._catalog = catalog

    # ------------------------------------------------------------ dispatch

    async def dispatch(self, principal: Principal, req: DispatchRequest, correlation_id: str, *,
                       notify: ReplyAddress | None = None) -> DispatchOutcome | DispatchStarted:
        """CAS approved|dispatch_failed -> dispatching after re-checking the plan, then send the order."""
        check_may_dispatch(principal)
        approval_id = _parse_id(req.approval_id)
        now = self._now()
        async with self._pool.connection() as conn:
            seen = await store.get_approval(conn, approval_id, principal.tenant, operator_id=None, with_audit=False)
            if seen is None:
                raise not_found(req.approval_id)
            if seen.approval_status in _CLAIMED_OR_DONE and not req.dry_run:
                self._conflict(req.approval_id, correlation_id)
            self._check_dispatchable(seen, now)
            self._check_plan(seen, correlation_id)
            # A failed dispatch runs again from where it stopped: the steps that succeeded are skipped.
            completed = ([StepResult.model_validate(s) for s in await store.completed_steps(conn, seen.id)]
                         if seen.approval_status == S.DISPATCH_FAILED else [])
            if req.dry_run:
                steps = [PlanStep.model_validate(s) for s in seen.plan]
                return DispatchOutcome(approval_id=str(seen.id), approval_status=seen.approval_status, dry_run=True,
                                       dispatch_result=self._simulate(steps, completed))
            return await self._start_dispatch(conn, seen, principal, completed=completed, now=now,
                                              correlation_id=correlation_id, notify=notify)

    async def _start_dispatch(self, conn: store.Conn, seen: store.ApprovalRow, principal: Principal, *,
                              completed: list[StepResult], now: datetime, correlation_id: str,
                              notify: ReplyAddress | None) -> DispatchStarted:
        """CAS the approval to dispatching under a fresh claim, its order queued in the outbox by the same
        statement. The answer does not wait for the broker: the order relay publishes the order after
        the commit, and an order the broker cannot take now waits in the outbox until it can."""
        order = self._queued_order(seen, now=now, completed=completed, notify=notify)
        event = store.EventRecord(event_type="approval.dispatch.started", at=now, actor=principal.subject,
                                  actor_role=principal.role, correlation_id=correlation_id)
        row = await store.claim_for_dispatch(
            conn, seen, from_status=seen.approval_status,
            to_status=next_status(seen.approval_status, Transition.DISPATCH), order=order, event=event)
        if row is None:
            self._conflict(str(seen.id), correlation_id)
        self._order_queued()
        self._dispatch_started(row, correlation_id)
        return DispatchStarted(DispatchOutcome(approval_id=str(row.id), approval_status=row.approval_status))

    def _queued_order(self, row: OrderSource, *, now: datetime, completed: list[StepResult],
                      notify: ReplyAddress | None, attempt: int = 1) -> store.QueuedOrder:
        """The first (or `attempt`-th) order of a dispatch of `row` under a fresh claim and lease."""
        claim = uuid.uuid4()
        lease = now + timedelta(seconds=self._settings.dispatch_lease_s)
        order = DispatchOrder(approval_id=str(row.id), tenant_id=row.tenant_id, action_id=row.action_id,
                              claim_token=str(claim), attempt=attempt, lease_expires_at=lease,
                              steps=[PlanStep.model_validate(s) for s in row.plan], completed=completed,
                              notify=notify)
        return store.QueuedOrder(claim_token=claim, attempt=attempt, lease_expires_at=lease,
                                 queue=self._order_queue, body=order.to_json())

    def _dispatch_started(self, row: store.ApprovalRow, correlation_id: str) -> None:
        self._metrics.consume_success.inc()
        log.info("dispatch started", extra={
            "scope": "approval.dispatch.started", "approvalId": str(row.id), "requestId": row.request_id,
            "correlationId": correlation_id})

    def _conflict(self, approval_id: str, correlation_id: str) -> NoReturn:
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
        # A tenant taken out of the catalog since the approval was made dispatches nothing more.
        self._check_tenant(row.tenant_id)
        if cat.plan_hash(row.plan) != row.plan_hash:
            reason = "the stored plan no longer matches its approved hash"
        else:
            try:
                action = self._catalog.action(row.action_id)
                replanned = cat.plan_document(cat.build_plan(row.action_id, action, row.payload,
                                                             tenant=self._tenant_settings(row.tenant_id)))
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
    def _simulate(steps: list[PlanStep], completed: list[StepResult]) -> list[StepResult]:
        done = {c.step_id for c in completed}
        return [StepResult(step_id=s.step_id, connector=s.connector, operation=s.operation,
                           status="skipped" if s.step_id in done else "simulated", result={"params": s.params})
                for s in steps]

    async def dispatch_plan(self, approval_id: str, claim_token: str, holder: str) -> DispatchPlan:
        """The plan a dispatch order's claim may run, the steps already done and the lease, or stale.

        The first `holder` (dispatcher process) to ask takes the claim; any other is answered stale."""
        claim = _parse_claim(claim_token)
        async with self._pool.connection() as conn:
            found = await store.claimed_plan(conn, _parse_id(approval_id), claim, holder=holder,
                                             held_status=CLAIMED)
        if found is None:
            return DispatchPlan(stale=True)
        return DispatchPlan(stale=False, steps=[PlanStep.model_validate(s) for s in found.plan],
                            completed=[StepResult.model_validate(c) for c in found.completed],
                            lease_expires_at=found.lease_expires_at)

    async def renew_lease(self, approval_id: str, claim_token: str, holder: str) -> LeaseGrant:
        """Keep a running dispatch's claim for another PJ_DISPATCH_LEASE_S; not granted once it is stale
        or when `holder` does not hold the claim."""
        claim = _parse_claim(claim_token)
        lease = self._now() + timedelta(seconds=self._settings.dispatch_lease_s)
        async with self._pool.connection() as conn:
            held = await store.renew_lease(conn, approval_id=_parse_id(approval_id), claim_token=claim,
                                           holder=holder, held_status=CLAIMED, lease_expires_at=lease)
        return LeaseGrant(granted=held is not None, lease_expires_at=held)

    async def record_report(self, report: StepReport) -> DispatchOutcome | None:
        """Checkpoint a step; on the plan's last report, CAS dispatching -> dispatched|dispatch_failed.

        Returns the finished dispatch when this report ended it, else None. A stale or duplicate report
        changes nothing (its claim no longer matches).
        """
        now = self._now()
        if report.plan_status == "running":
            await self._checkpoint(report, now)
            return None
        return await self._finish(report, now)

    async def _checkpoint(self, report: StepReport, now: datetime) -> None:
        async with self._pool.connection() as conn:
            recorded = await store.record_step(
                conn, approval_id=UUID(report.approval_id), claim_token=UUID(report.claim_token),
                held_status=CLAIMED, step=report.step, now=now,
                lease_expires_at=now + timedelta(seconds=self._settings.dispatch_lease_s))
        if not recorded:
            log.info("stale step report ignored", extra={
                "scope": "approval.dispatch.stale_report", "approvalId": report.approval_id})

    async def _finish(self, report: StepReport, now: datetime) -> DispatchOutcome | None:
        failed = report.plan_status == S.DISPATCH_FAILED.value
        from_status, to_status = edge(Transition.FAIL if failed else Transition.COMPLETE)
        event_type = "approval.dispatch.failed" if failed else "approval.dispatch.completed"
        results = [r.model_dump(by_alias=True, mode="json") for r in report.results]
        async with self._pool.connection() as conn:
            row = await store.finish_dispatch(
                conn, UUID(report.approval_id), UUID(report.claim_token), from_status=from_status,
                to_status=to_status, results=results, event=store.EventRecord(event_type=event_type, at=now))
        if row is None:
            log.info("stale final report ignored", extra={
                "scope": "approval.dispatch.stale_report", "approvalId": report.approval_id})
            return None
        latency = (now - row.dispatched_at).total_seconds() if row.dispatched_at else 0.0
        (self._metrics.dispatch_failure if failed else self._metrics.dispatch_success).labels(row.action_id).inc()
        self._metrics.dispatch_latency.labels("failure" if failed else "success").observe(latency)
        log.log(logging.WARNING if failed else logging.INFO, "dispatch finished", extra={
            "scope": event_type, "approvalId": str(row.id), "requestId": row.request_id,
            "status": row.approval_status.value, "failedStep": report.step.step_id if failed else None})
        return DispatchOutcome(approval_id=str(row.id), approval_status=row.approval_status,
                               dispatch_result=_step_results(row.dispatch_result))

    # ------------------------------------------------------------ expiry, health, metrics

    async def expire_due(self, batch: int = 500) -> int:
        """Expire pending approvals past their TTL and approved ones past their dispatch window."""
        total = 0
        while True:
            event = store.EventRecord(event_type="approval.expired", at=self._now())
            async with self._pool.connection() as conn:
                rows = await store.expire_due(conn, from_statuses=sources_of(Transition.EXPIRE),
                                              to_status=target_of(Transition.EXPIRE), batch=batch, event=event)
            for row in rows:
                # The row is already expired; a decision time says which status it expired from.
                expired_from = S.PENDING if row.decided_at is None else S.APPROVED
                self._metrics.expired.labels(expired_from.value).inc()
                log.info("approval expired", extra={"scope": "approval.expired", "approvalId": str(row.id),
                                                    "requestId": row.request_id})
            total += len(rows)
            if len(rows) < batch:
                return total

    async def reap_expired_leases(self, batch: int = 100) -> int:
        """Hand each dispatch whose lease ran out (its dispatcher died, its order was lost) to a new
        claim, the next attempt, whose order carries the steps already done; after the last of
        PJ_MAX_DISPATCH_ATTEMPTS attempts, fail it. A late report or renewal of the old claim is stale.
        Returns how many dispatches it re-issued or failed."""
        now = self._now()
        async with self._pool.connection() as conn, conn.transaction():
            lapsed = await store.lock_lapsed_dispatches(conn, held_status=CLAIMED, now=now, batch=batch)
            # Only a claim some dispatcher took counts as an attempt: an order that waited in the outbox or
            # the queue past its lease (broker down, dispatchers busy or gone) ran nothing, so it is
            # re-issued as the same attempt and never failed with an unknown outcome.
            last = [d for d in lapsed
                    if d.claim_holder is not None and d.dispatch_attempt >= self._settings.max_dispatch_attempts]
            reissued = [row for d in lapsed if d not in last
                        if (row := await self._reissue(conn, d, now=now)) is not None]
            failed = await self._fail_lapsed(conn, last, now=now) if last else []
        if reissued:
            self._order_queued()
        for row in reissued:
            log.warning("dispatch lease expired; re-issued to a new claim", extra={
                "scope": "approval.dispatch.reissued", "reason": "lease_expired", "approvalId": str(row.id),
                "requestId": row.request_id})
        for row in failed:
            self._metrics.dispatch_failure.labels(row.action_id).inc()
            log.warning("dispatch lease expired after its last attempt", extra={
                "scope": "approval.dispatch.failed", "reason": "lease_expired", "approvalId": str(row.id),
                "requestId": row.request_id})
        return len(reissued) + len(failed)

    async def _reissue(self, conn: store.Conn, lapsed: store.LapsedDispatch, *, now: datetime
                       ) -> store.ApprovalRow | None:
        attempt = lapsed.dispatch_attempt + 1 if lapsed.claim_holder is not None else lapsed.dispatch_attempt
        order = self._queued_order(lapsed, now=now, notify=None, attempt=attempt,
                                   completed=[StepResult.model_validate(c) for c in lapsed.completed])
        from_status, to_status = edge(Transition.REISSUE)
        why = "no lease renewal" if lapsed.claim_holder is not None else "no dispatcher took its order"
        note = (f"{why} within {self._settings.dispatch_lease_s:g}s; "
                f"re-issued as attempt {attempt} of {self._settings.max_dispatch_attempts}")
        return await store.reissue_dispatch(
            conn, lapsed, from_status=from_status, to_status=to_status, order=order,
            event=store.EventRecord(event_type="approval.dispatch.started", at=now, note=note))

    async def _fail_lapsed(self, conn: store.Conn, lapsed: list[store.LapsedDispatch], *, now: datetime
                           ) -> list[store.ApprovalRow]:
        from_status, to_status = edge(Transition.FAIL)
        attempts = self._settings.max_dispatch_attempts
        lease = f"{self._settings.dispatch_lease_s:g}s"
        outcome = store.LapsedOutcome(
            unknown_message=(f"the dispatch lost its lease ({lease}) on each of its {attempts} attempts while this "
                             "step may have been running: check its target before dispatching again"),
            not_run_message=f"not started: the dispatch lost its lease ({lease}) on each of its {attempts} attempts")
        return await store.fail_lapsed_dispatches(
            conn, lapsed, from_status=from_status, to_status=to_status, outcome=outcome,
            event=store.EventRecord(event_type="approval.dispatch.failed", at=now, note=outcome.not_run_message))

    async def health(self) -> HealthReport:
        try:
            async with self._pool.connection(timeout=2) as conn:
                await store.ping(conn)
        except Exception as exc:  # any failure here is the answer, not an error
            return HealthReport(database=ComponentHealth(status="error", detail=type(exc).__name__))
        return HealthReport(database=ComponentHealth(status="ok"))

    async def refresh_gauges(self) -> None:
        """Set the gauges read from the database: approval_pending_gauge (all tenants, unexpired) and
        the dispatch outbox's depth and oldest order's age."""
        async with self._pool.connection() as conn:
            self._metrics.pending.set(await store.count_pending(conn, None, None, now=self._now()))
            waiting, oldest_s = await store.outbox_backlog(conn)
        self._metrics.outbox_orders.set(waiting)
        self._metrics.outbox_oldest.set(oldest_s)

    async def metrics_text(self) -> str:
        await self.refresh_gauges()
        return self._metrics.render().decode()

    async def metrics(self) -> MetricsText:
        """The metrics in Prometheus text format, the database's gauges fresh."""
        return MetricsText(text=await self.metrics_text())


# A dispatch command finds these taken: another claim holds the approval, or it already ran.
_CLAIMED_OR_DONE = frozenset({CLAIMED, target_of(Transition.COMPLETE)})
