"""Consumes dispatch orders and runs their steps, reporting each outcome to the approvals service.

The dispatcher never changes an approval's status: it reports, approvals decides. The order is
acked only after the plan's final report is confirmed by the broker.
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage

from pj_common.messages import DispatchOrder, ErrorBody, PlanStatus, PlanStep, StepReport, StepResult

from .connectors.base import Connector, ConnectorError, StepContext, redact
from .metrics import DispatcherMetrics
from .settings import DispatcherSettings

log = logging.getLogger("pj.dispatcher")

PublishReport = Callable[[StepReport], Awaitable[None]]
# The approved steps and those already done under the order's claim; None when the order is stale.
FetchPlan = Callable[[DispatchOrder], Awaitable[tuple[list[PlanStep], list[StepResult]] | None]]


def backoff_s(attempt: int, base: float, cap: float, hint: float | None) -> float:
    """Exponential back-off with full jitter; a server's own Retry-After wins when it gives one."""
    if hint is not None:
        return min(hint, cap)
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


class Worker:
    def __init__(self, settings: DispatcherSettings, connectors: dict[str, Connector],
                 publish_report: PublishReport, fetch_plan: FetchPlan,
                 metrics: DispatcherMetrics | None = None) -> None:
        self._settings = settings
        self._connectors = connectors
        self._publish_report = publish_report
        self._fetch_plan = fetch_plan
        self._secrets = settings.secret_values()
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._metrics = metrics or DispatcherMetrics()

    async def drain(self, timeout: float) -> bool:
        """Wait until no order is running (after consuming stopped); False if `timeout` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def on_order(self, message: AbstractIncomingMessage) -> None:
        self._running += 1
        self._idle.clear()
        try:
            await self._confirm_and_run(message)
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def _confirm_and_run(self, message: AbstractIncomingMessage) -> None:
        """Confirm the order's claim with approvals, then run the plan approvals returns.

        Nothing runs on the message's word alone: a forged, stale or superseded order is dropped,
        and a redelivered one (its worker died mid-plan) resumes after the steps already done.
        """
        order = DispatchOrder.model_validate_json(message.body)
        confirmed = await self._fetch_plan(order)
        if confirmed is None:
            self._metrics.stale.inc()
            log.warning("stale dispatch order dropped", extra={
                "scope": "dispatcher.stale_order", "approvalId": order.approval_id,
                "redelivered": message.redelivered})
            return
        steps, done = confirmed
        order = order.model_copy(update={"steps": steps, "completed": done})
        if done:
            log.info("order resumes after finished steps", extra={
                "scope": "dispatcher.resumed", "approvalId": order.approval_id,
                "done": [c.step_id for c in done]})
        with self._metrics.in_flight.track_inprogress():
            await self.run_order(order)

    async def run_order(self, order: DispatchOrder) -> None:
        """Run the order's steps in sequence, skipping those already done; stop at the first failure."""
        done = {c.step_id: c for c in order.completed}
        results: list[StepResult] = []
        started = time.monotonic()
        for index, step in enumerate(order.steps):
            if step.step_id in done:
                results.append(done[step.step_id])
                continue
            outcome = await self._run_step(order, StepContext(order.approval_id, order.tenant_id,
                                                              order.action_id, step))
            results.append(outcome)
            failed = outcome.status != "succeeded"
            last = index == len(order.steps) - 1
            if failed or last:
                status: PlanStatus = "dispatch_failed" if failed else "dispatched"
                results += [StepResult(step_id=s.step_id, connector=s.connector, operation=s.operation,
                                       status="not_run") for s in order.steps[index + 1:]]
                await self._report(order, outcome, status, results)
                log.info("plan finished", extra={"scope": "dispatcher.plan_finished", "approvalId": order.approval_id,
                                                 "status": status, "seconds": round(time.monotonic() - started, 3)})
                return
            await self._report(order, outcome, "running", [])
        # Every step was already done (a re-dispatch after a failure that is now past): report the end.
        final = results[-1]
        await self._report(order, final, "dispatched", results)

    async def _report(self, order: DispatchOrder, step: StepResult, status: PlanStatus,
                      results: list[StepResult]) -> None:
        await self._publish_report(StepReport(
            approval_id=order.approval_id, tenant_id=order.tenant_id, claim_token=order.claim_token,
            step=step, plan_status=status, results=results, notify=order.notify if status != "running" else None))

    async def _run_step(self, order: DispatchOrder, ctx: StepContext) -> StepResult:
        step = ctx.step
        started_at = datetime.now(UTC)
        t0 = time.monotonic()

        def outcome(status: str, attempts: int, *, result: dict | None = None, error: ConnectorError | None = None,
                    code: str | None = None, message: str | None = None, http_status: int | None = None
                    ) -> StepResult:
            err = None
            # Connectors redact their own secrets; this catches any that slips through (a crash message).
            if error is not None:
                err = ErrorBody(code=error.code, message=redact(error.message, *self._secrets))
                http_status = error.http_status
            elif code is not None:
                err = ErrorBody(code=code, message=redact(message or code, *self._secrets))
            elapsed = time.monotonic() - t0
            self._metrics.steps.labels(step.connector, status).inc()
            self._metrics.step_seconds.labels(step.connector).observe(elapsed)
            return StepResult(step_id=step.step_id, connector=step.connector, operation=step.operation,
                              status=status,  # type: ignore[arg-type]
                              attempts=attempts, started_at=started_at, finished_at=datetime.now(UTC),
                              http_status=http_status, duration_ms=round(elapsed * 1000, 3),
                              result=result, error=err)

        log.info("step started", extra={"scope": "dispatcher.step_started", "approvalId": order.approval_id,
                                         "stepId": step.step_id, "connector": step.connector})
        connector = self._connectors.get(step.connector)
        if connector is None:
            return outcome("failed", 0, code="unknown_connector",
                           message=f"no connector named {step.connector!r} in this dispatcher")
        missing = connector.missing_settings()
        if missing:
            return outcome("failed", 0, code="connector_not_configured",
                           message=f"connector {step.connector!r} is not configured: set {', '.join(missing)}")
        limit = self._settings.connector_attempts.get(step.connector, self._settings.max_attempts)
        attempt = 0
        while True:
            attempt += 1
            try:
                output = await connector.run(ctx)
            except ConnectorError as exc:
                if not exc.retryable or attempt >= limit:
                    log.warning("step failed: %s", exc.message, extra={
                        "scope": "dispatcher.step_failed", "approvalId": order.approval_id,
                        "stepId": step.step_id, "code": exc.code, "attempts": attempt})
                    return outcome("failed", attempt, error=exc)
                self._metrics.retries.labels(step.connector).inc()
                delay = backoff_s(attempt, self._settings.retry_base_s, self._settings.retry_max_s, exc.retry_after)
                log.info("step attempt failed, retrying in %.2fs", delay, extra={
                    "scope": "dispatcher.step_retry", "approvalId": order.approval_id, "stepId": step.step_id,
                    "code": exc.code, "attempt": attempt})
                await asyncio.sleep(delay)
                continue
            except Exception as exc:  # a bug in a connector fails the step, never the worker
                log.exception("connector crashed", extra={"scope": "dispatcher.connector_crashed",
                                                          "approvalId": order.approval_id, "stepId": step.step_id})
                return outcome("failed", attempt, code="connector_error", message=f"{type(exc).__name__}: {exc}")
            return outcome("succeeded", attempt, result=output.result, http_status=output.http_status)
