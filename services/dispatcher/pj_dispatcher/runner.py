"""The plan runner: runs a plan's steps in order through the connectors, retries what may pass, and
reports each outcome to the approvals service.

The runner never changes an approval's status: it reports, approvals decides. It stops at the first
failed step; the last report of a plan carries every step's result.

Every attempt at a step starts only while the order's claim holds (see `lease`) and is bounded by
PJ_STEP_DEADLINE_S as a whole. A refused lease renewal stops the plan before its next attempt, with
no further report; a lease that ran out while approvals did not answer, or a delivery held for
PJ_ORDER_HOLD_MAX_S (below RabbitMQ's consumer_timeout), hands the order back to the queue instead:
its redelivery is confirmed with approvals and resumes after the checkpointed steps.

A step's effect has happened once its connector answered, so its report is never given up while
the claim may still hold: a report that cannot be published (the broker connection is lost, its
confirm does not come) is tried again, with back-off, until it is confirmed, a renewal is refused,
or the delivery was held for PJ_ORDER_HOLD_MAX_S. The lease known here may run out meanwhile: the
renewals travel over the same broker, and approvals re-issues no lease before it has been connected
to the broker for a whole lease, so the claim outlives an outage that its dispatcher outlives.
The runner also remembers each outcome it got for a claim (bounded) until the plan's end: a
redelivery of the order to this process, handed back or redelivered after a lost connection,
reports those outcomes instead of running their steps again, even when approvals has not yet
recorded them (the report may still be queued).
"""

import asyncio
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from pj_common.backoff import backoff_s
from pj_common.messages import DispatchOrder, ErrorBody, PlanStatus, PlanStep, StepReport, StepResult, StepStatus
from pj_common.transport import Retryable

from .connectors.base import Connector, ConnectorError, StepContext, StepOutput, redact, retryable
from .lease import Lease, RenewLease
from .metrics import DispatcherMetrics
from .settings import DispatcherSettings

log = logging.getLogger("pj.dispatcher")

PublishReport = Callable[[StepReport], Awaitable[None]]
Claim = tuple[str, str]  # (approval id, claim token)

# How many claims' outcomes a process remembers (oldest forgotten first): a claim is forgotten at its
# plan's end, so this only bounds the orders handed back or interrupted and never seen again.
REMEMBERED_CLAIMS = 10_000
# Back-off between attempts at publishing a report: short, as the step's effect is already done.
REPORT_RETRY_BASE_S = 0.2
REPORT_RETRY_CAP_S = 2.0
# While a report waits, every this many attempts also asks for a lease renewal: the answer (once the
# broker is back) says whether the claim still holds.
REPORT_RENEW_EVERY = 5


class StepRun:
    """One step being run: when it started, and the result it ends with (counted, and logged when it failed)."""

    def __init__(self, order: DispatchOrder, step: PlanStep, *, metrics: DispatcherMetrics,
                 secrets: tuple[str, ...]) -> None:
        self.order = order
        self.step = step
        self._metrics = metrics
        self._secrets = secrets
        self._started_at = datetime.now(UTC)
        self._t0 = time.monotonic()

    @property
    def log_fields(self) -> dict[str, str]:
        return {"approvalId": self.order.approval_id, "stepId": self.step.step_id, "connector": self.step.connector}

    def succeeded(self, attempts: int, output: StepOutput) -> StepResult:
        """The step's result after `attempts` tries, the last of which worked."""
        return self._finish("succeeded", attempts, result=output.result, http_status=output.http_status)

    def failed(self, attempts: int, *, code: str, message: str, http_status: int | None = None) -> StepResult:
        """The step's failed result, logged as `dispatcher.step_failed` whatever the reason."""
        # Connectors scrub their own secrets; this catches any that slips through (a crash's message).
        message = redact(message, *self._secrets)
        log.warning("step failed: %s", message, extra={
            "scope": "dispatcher.step_failed", **self.log_fields, "code": code, "attempts": attempts})
        return self._finish("failed", attempts, error=ErrorBody(code=code, message=message), http_status=http_status)

    def _finish(self, status: StepStatus, attempts: int, *, result: dict[str, object] | None = None,
                error: ErrorBody | None = None, http_status: int | None = None) -> StepResult:
        elapsed = time.monotonic() - self._t0
        self._metrics.steps.labels(self.step.connector, status).inc()
        self._metrics.step_seconds.labels(self.step.connector).observe(elapsed)
        return StepResult(step_id=self.step.step_id, connector=self.step.connector, operation=self.step.operation,
                          status=status, attempts=attempts, started_at=self._started_at,
                          finished_at=datetime.now(UTC), http_status=http_status,
                          duration_ms=round(elapsed * 1000, 3), result=result, error=error)


def not_run(step: PlanStep) -> StepResult:
    """The result of a step the plan never reached (an earlier one failed)."""
    return StepResult(step_id=step.step_id, connector=step.connector, operation=step.operation, status="not_run")


class LeaseLost(Exception):
    """A lease renewal was refused: the claim is stale, so the plan stops with no further report."""


class ClaimGuard:
    """What an attempt at a step must pass before it starts: the claim's lease still holds, and this
    delivery of the order has time left for it before PJ_ORDER_HOLD_MAX_S."""

    def __init__(self, order: DispatchOrder, lease: Lease, *, settings: DispatcherSettings,
                 metrics: DispatcherMetrics) -> None:
        self.lease = lease
        self._order = order
        self._metrics = metrics
        self._step_deadline_s = settings.step_deadline_s
        self._hold_until = time.monotonic() + settings.order_hold_max_s

    async def before_attempt(self) -> None:
        """Return when an attempt may start; raise `LeaseLost`, or `Retryable` to hand the order back."""
        self.before_wait(0.0)
        if await self.lease.may_start():
            return
        if self.lease.lost:
            raise LeaseLost
        raise self._hand_back("lease_expired", "the claim's lease ran out while approvals did not answer its "
                                               "renewals: the order goes back to the queue to be confirmed again")

    def before_wait(self, wait_s: float) -> None:
        """Raise `Retryable` (hand the order back) unless a wait of `wait_s` and then an attempt fit in
        what is left of this delivery."""
        if time.monotonic() + wait_s + self._step_deadline_s <= self._hold_until:
            return
        raise self._hand_back("handed_back", "the order was held for PJ_ORDER_HOLD_MAX_S: it goes back to the "
                                             "queue (below RabbitMQ's consumer_timeout) and resumes on redelivery")

    def _hand_back(self, reason: str, message: str) -> Retryable:
        self._metrics.plans_stopped.labels(reason).inc()
        log.warning("plan stopped: %s", message, extra={
            "scope": "dispatcher.plan_handed_back", "approvalId": self._order.approval_id, "reason": reason})
        return Retryable(message, retry_after=0)


class PlanRunner:
    """Runs plans: each step through its connector, retried while it may pass, each outcome reported,
    the order's lease renewed (`renew_lease`) while it runs."""

    def __init__(self, settings: DispatcherSettings, connectors: dict[str, Connector], *,
                 publish_report: PublishReport, renew_lease: RenewLease | None = None,
                 metrics: DispatcherMetrics | None = None) -> None:
        self._settings = settings
        self._connectors = connectors
        self._publish_report = publish_report
        self._renew_lease = renew_lease
        self._secrets = settings.secret_values()
        self._metrics = metrics or DispatcherMetrics()
        # The outcomes this process got for each claim whose plan has not ended (see the module).
        self._outcomes: OrderedDict[Claim, dict[str, StepResult]] = OrderedDict()

    async def run_order(self, order: DispatchOrder) -> None:
        """Run the order's steps in sequence, skipping those already done; stop at the first failure.

        Returns without a further report when the claim's lease was lost; raises `Retryable` when the
        order must go back to the queue (see `ClaimGuard`).
        """
        lease = Lease(order, renew=self._renew_lease, every_s=self._settings.lease_renew_s,
                      margin_s=self._settings.lease_margin_s, metrics=self._metrics)
        guard = ClaimGuard(order, lease, settings=self._settings, metrics=self._metrics)
        claim = (order.approval_id, order.claim_token)
        try:
            async with lease:
                await self._run_plan(order, guard)
            self._outcomes.pop(claim, None)
        except LeaseLost:
            self._outcomes.pop(claim, None)
            self._metrics.plans_stopped.labels("lease_lost").inc()
            log.warning("plan stopped: the claim's lease was lost", extra={
                "scope": "dispatcher.plan_stopped", "approvalId": order.approval_id, "reason": "lease_lost"})

    def _remembered(self, claim: Claim) -> dict[str, StepResult]:
        outcomes = self._outcomes.get(claim)
        if outcomes is None:
            outcomes = self._outcomes[claim] = {}
            while len(self._outcomes) > REMEMBERED_CLAIMS:
                self._outcomes.popitem(last=False)
        return outcomes

    async def _run_plan(self, order: DispatchOrder, guard: ClaimGuard) -> None:
        done = {c.step_id: c for c in order.completed}
        ran_here = self._remembered((order.approval_id, order.claim_token))
        results: list[StepResult] = []
        started = time.monotonic()
        for index, step in enumerate(order.steps):
            if step.step_id in done:
                results.append(done[step.step_id])
                continue
            outcome = ran_here.get(step.step_id)
            if outcome is None:
                outcome = ran_here[step.step_id] = await self._run_step(order, step, guard)
            else:
                log.info("step already run here: its outcome is reported again, the step is not run", extra={
                    "scope": "dispatcher.step_reported_again", "approvalId": order.approval_id,
                    "stepId": step.step_id})
            if guard.lease.lost:  # refused while the step ran: its claim is stale, approvals ignores it
                raise LeaseLost
            results.append(outcome)
            failed = outcome.status != "succeeded"
            if failed or index == len(order.steps) - 1:
                status: PlanStatus = "dispatch_failed" if failed else "dispatched"
                results += [not_run(s) for s in order.steps[index + 1:]]
                await self._report(order, outcome, status=status, results=results, guard=guard)
                log.info("plan finished", extra={"scope": "dispatcher.plan_finished", "approvalId": order.approval_id,
                                                 "status": status, "seconds": round(time.monotonic() - started, 3)})
                return
            await self._report(order, outcome, status="running", results=[], guard=guard)
        # Every step was already done (a re-dispatch after a failure that is now past): report the end.
        await self._report(order, results[-1], status="dispatched", results=results, guard=guard)

    async def _report(self, order: DispatchOrder, step: StepResult, *, status: PlanStatus,
                      results: list[StepResult], guard: ClaimGuard) -> None:
        """Publish the report, trying again while the claim may hold (see the module).

        Raises `LeaseLost` when a renewal was refused meanwhile (the dispatch was re-issued: the new
        claim's plan resumes after what approvals recorded), or `Retryable` when this delivery was
        held too long (a redelivery to this process reports the remembered outcome).
        """
        report = StepReport(
            approval_id=order.approval_id, tenant_id=order.tenant_id, claim_token=order.claim_token,
            step=step, plan_status=status, results=results, notify=order.notify if status != "running" else None)
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._publish_report(report)
                return
            except Exception as exc:  # the broker connection or its confirm; never the step's effect
                delay = backoff_s(attempt, base=REPORT_RETRY_BASE_S, cap=REPORT_RETRY_CAP_S)
                self._report_not_sent(report, exc, attempt=attempt, delay=delay, lease=guard.lease)
            guard.before_wait(delay)
            await asyncio.sleep(delay)
            if attempt % REPORT_RENEW_EVERY == 0:
                await guard.lease.renew()  # a refusal (the claim was re-issued) ends the retries

    def _report_not_sent(self, report: StepReport, exc: Exception, *, attempt: int, delay: float,
                         lease: Lease) -> None:
        """Count and log a report that was not published; raise `LeaseLost` once the claim was refused."""
        self._metrics.report_retries.inc()
        fields = {"approvalId": report.approval_id, "stepId": report.step.step_id, "attempt": attempt}
        if lease.lost:
            log.error("step report not published before the claim was refused: approvals re-issued the dispatch",
                      extra={"scope": "dispatcher.report_lost", **fields, "error": repr(exc)})
            raise LeaseLost from exc
        if attempt == 1 or attempt % 10 == 0:
            log.warning("step report not published, trying again: %r", exc, extra={
                "scope": "dispatcher.report_retry", **fields})

    async def _run_step(self, order: DispatchOrder, step: PlanStep, guard: ClaimGuard) -> StepResult:
        run = StepRun(order, step, metrics=self._metrics, secrets=self._secrets)
        log.info("step started", extra={"scope": "dispatcher.step_started", **run.log_fields})
        connector = self._connectors.get(step.connector)
        if connector is None:
            return run.failed(0, code="unknown_connector",
                              message=f"no connector named {step.connector!r} in this dispatcher")
        missing = connector.missing_settings()
        if missing:
            return run.failed(0, code="connector_not_configured",
                              message=f"connector {step.connector!r} is not configured: set {', '.join(missing)}")
        ctx = StepContext(approval_id=order.approval_id, tenant_id=order.tenant_id, action_id=order.action_id,
                          step=step)
        return await self._attempt(run, connector, ctx, guard=guard)

    async def _attempt(self, run: StepRun, connector: Connector, ctx: StepContext, *, guard: ClaimGuard
                       ) -> StepResult:
        """Try the step until it succeeds, fails for good or runs out of attempts."""
        limit = self._settings.connector_attempts.get(run.step.connector, self._settings.max_attempts)
        attempt = 0
        while True:
            attempt += 1
            await guard.before_attempt()
            try:
                output = await self._call(connector, ctx)
            except ConnectorError as exc:
                failed = await self._wait_or_fail(run, exc, attempt=attempt, limit=limit, guard=guard)
                if failed is not None:
                    return failed
                continue
            except Exception as exc:  # a bug in a connector fails the step, never the dispatcher
                # The traceback goes in `exc` as the log formatter writes it, but scrubbed of secrets first.
                trace = redact("".join(traceback.format_exception(exc)), *self._secrets)
                log.error("connector crashed", extra={"scope": "dispatcher.connector_crashed", **run.log_fields,
                                                      "exc": trace})
                return run.failed(attempt, code="connector_error", message=f"{type(exc).__name__}: {exc}")
            return run.succeeded(attempt, output)

    async def _call(self, connector: Connector, ctx: StepContext) -> StepOutput:
        """One attempt, bounded as a whole (request, waits for the answer, reading it) by PJ_STEP_DEADLINE_S.

        An attempt past its deadline may still have had its effect upstream: its outcome is unknown,
        so it is retryable like a timeout, and the next attempt looks for the earlier effect first.
        """
        deadline = self._settings.step_deadline_s
        timeout = asyncio.timeout(deadline)
        try:
            async with timeout:
                return await connector.run(ctx)
        except TimeoutError:
            if not timeout.expired():  # a connector's own TimeoutError is its bug, not our deadline
                raise
            raise retryable("step_timeout", f"{ctx.step.connector}: no complete answer within PJ_STEP_DEADLINE_S "
                                            f"({deadline:g} s); the request may have taken effect upstream, so the "
                                            "next attempt looks for that effect before acting again") from None

    async def _wait_or_fail(self, run: StepRun, exc: ConnectorError, *, attempt: int, limit: int,
                            guard: ClaimGuard) -> StepResult | None:
        """Wait before the next attempt and return None, or return the failed result when there is none.

        A server's own wait (Retry-After, X-RateLimit-Reset) is honoured in full up to
        PJ_RATE_LIMIT_MAX_WAIT_S; past it the step fails at once as `rate_limited`, as waiting less
        would only be refused again. Without one, the back-off is jittered and capped at
        PJ_CONNECTOR_RETRY_MAX_S. The lease renewals go on during the wait.
        """
        if not exc.retryable or attempt >= limit:
            return run.failed(attempt, code=exc.code, message=exc.message, http_status=exc.http_status)
        hint, max_wait = exc.retry_after, self._settings.rate_limit_max_wait_s
        if hint is not None and hint > max_wait:
            accepts_at = datetime.now(UTC) + timedelta(seconds=hint)
            return run.failed(attempt, code="rate_limited", http_status=exc.http_status, message=(
                f"{exc.message}; the server accepts requests again in {hint:.0f} s (at "
                f"{accepts_at:%Y-%m-%dT%H:%M:%SZ}), later than PJ_RATE_LIMIT_MAX_WAIT_S ({max_wait:g} s) allows "
                "a step to wait: dispatch again after that time"))
        delay = backoff_s(attempt, base=self._settings.retry_base_s,
                          cap=self._settings.retry_max_s if hint is None else max_wait, hint=hint)
        guard.before_wait(delay)
        self._metrics.retries.labels(run.step.connector).inc()
        log.info("step attempt failed, retrying in %.2fs", delay, extra={
            "scope": "dispatcher.step_retry", **run.log_fields, "code": exc.code, "attempt": attempt})
        await asyncio.sleep(delay)
        return None
