"""The plan runner: runs a confirmed plan's steps in order through the connectors, retries what may
pass, and reports each outcome to the approvals service.

The runner never changes an approval's status: it reports, approvals decides. It stops at the first
failed step; the last report of a plan carries every step's result.
"""

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from pj_common.backoff import backoff_s
from pj_common.messages import DispatchOrder, ErrorBody, PlanStatus, PlanStep, StepReport, StepResult, StepStatus

from .connectors.base import Connector, ConnectorError, StepContext, StepOutput, redact
from .metrics import DispatcherMetrics
from .settings import DispatcherSettings

log = logging.getLogger("pj.dispatcher")

PublishReport = Callable[[StepReport], Awaitable[None]]


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

    def waiting(self, attempts: int, *, code: str, message: str) -> StepResult:
        """An interim result for a progress report: the step has not run yet and will be tried again."""
        return StepResult(step_id=self.step.step_id, connector=self.step.connector, operation=self.step.operation,
                          status="not_run", attempts=attempts, started_at=self._started_at,
                          error=ErrorBody(code=code, message=redact(message, *self._secrets)))

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


class PlanRunner:
    """Runs plans: each step through its connector, retried while it may pass, each outcome reported."""

    def __init__(self, settings: DispatcherSettings, connectors: dict[str, Connector], *,
                 publish_report: PublishReport, metrics: DispatcherMetrics | None = None) -> None:
        self._settings = settings
        self._connectors = connectors
        self._publish_report = publish_report
        self._secrets = settings.secret_values()
        self._metrics = metrics or DispatcherMetrics()

    async def run_order(self, order: DispatchOrder) -> None:
        """Run the order's steps in sequence, skipping those already done; stop at the first failure."""
        done = {c.step_id: c for c in order.completed}
        results: list[StepResult] = []
        started = time.monotonic()
        for index, step in enumerate(order.steps):
            if step.step_id in done:
                results.append(done[step.step_id])
                continue
            outcome = await self._run_step(order, step)
            results.append(outcome)
            failed = outcome.status != "succeeded"
            if failed or index == len(order.steps) - 1:
                status: PlanStatus = "dispatch_failed" if failed else "dispatched"
                results += [not_run(s) for s in order.steps[index + 1:]]
                await self._report(order, outcome, status=status, results=results)
                log.info("plan finished", extra={"scope": "dispatcher.plan_finished", "approvalId": order.approval_id,
                                                 "status": status, "seconds": round(time.monotonic() - started, 3)})
                return
            await self._report(order, outcome, status="running", results=[])
        # Every step was already done (a re-dispatch after a failure that is now past): report the end.
        await self._report(order, results[-1], status="dispatched", results=results)

    async def _report(self, order: DispatchOrder, step: StepResult, *, status: PlanStatus,
                      results: list[StepResult]) -> None:
        await self._publish_report(StepReport(
            approval_id=order.approval_id, tenant_id=order.tenant_id, claim_token=order.claim_token,
            step=step, plan_status=status, results=results, notify=order.notify if status != "running" else None))

    async def _run_step(self, order: DispatchOrder, step: PlanStep) -> StepResult:
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
        return await self._attempt(run, connector, ctx)

    async def _attempt(self, run: StepRun, connector: Connector, ctx: StepContext) -> StepResult:
        """Try the step until it succeeds, fails for good or runs out of attempts."""
        limit = self._settings.connector_attempts.get(run.step.connector, self._settings.max_attempts)
        attempt = 0
        while True:
            attempt += 1
            try:
                output = await connector.run(ctx)
            except ConnectorError as exc:
                failed = await self._wait_or_fail(run, exc, attempt=attempt, limit=limit)
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

    async def _wait_or_fail(self, run: StepRun, exc: ConnectorError, *, attempt: int, limit: int
                            ) -> StepResult | None:
        """Wait before the next attempt and return None, or return the failed result when there is none.

        A server's own wait (Retry-After, X-RateLimit-Reset) is honoured in full up to
        PJ_RATE_LIMIT_MAX_WAIT_S; past it the step fails at once as `rate_limited`, as waiting less
        would only be refused again. Without one, the back-off is jittered and capped at
        PJ_CONNECTOR_RETRY_MAX_S.
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
        self._metrics.retries.labels(run.step.connector).inc()
        log.info("step attempt failed, retrying in %.2fs", delay, extra={
            "scope": "dispatcher.step_retry", **run.log_fields, "code": exc.code, "attempt": attempt})
        if delay > self._settings.retry_max_s:
            # A long wait (a rate limit) reports progress, which renews the dispatch lease, so the
            # sweeper does not fail a dispatch that is only waiting for the server's permission.
            until = datetime.now(UTC) + timedelta(seconds=delay)
            await self._report(run.order, run.waiting(attempt, code=exc.code, message=(
                f"{exc.message}; waiting {delay:.0f} s, as the server asked, and trying again at "
                f"{until:%Y-%m-%dT%H:%M:%SZ}")), status="running", results=[])
        await asyncio.sleep(delay)
        return None
