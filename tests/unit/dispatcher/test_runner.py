"""The plan runner (pj_dispatcher.runner) with stand-in connectors: order of steps, resumption,
failures (each logged), retries and the servers' waits."""

import logging
import time
from typing import Any

import pytest

from pj_common.messages import DispatchOrder, PlanStep, StepReport, StepResult
from pj_dispatcher.connectors.base import ConnectorError, StepContext, StepOutput, permanent, retryable
from pj_dispatcher.runner import PlanRunner
from pj_dispatcher.settings import DispatcherSettings


class Scripted:
    """A connector that answers each call with the next item of `script` (an error is raised)."""

    def __init__(self, *script: ConnectorError | Exception | StepOutput, name: str = "fake",
                 missing: list[str] | None = None) -> None:
        self.name = name
        self.script = list(script)
        self.missing = missing or []
        self.calls: list[str] = []

    def missing_settings(self) -> list[str]:
        return self.missing

    async def run(self, ctx: StepContext) -> StepOutput:
        self.calls.append(ctx.step.step_id)
        item = self.script.pop(0) if self.script else StepOutput({"ok": True}, 200)
        if isinstance(item, Exception):
            raise item
        return item


def plan_step(step_id: str, connector: str = "fake") -> PlanStep:
    return PlanStep(step_id=step_id, connector=connector, operation="do")


def order(*steps: PlanStep, completed: list[StepResult] | None = None) -> DispatchOrder:
    return DispatchOrder(approval_id="apr-1", tenant_id="t", action_id="act", claim_token="claim",
                         steps=list(steps), completed=completed or [])


def settings(**env: Any) -> DispatcherSettings:
    return DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0, **env)


async def run(order_: DispatchOrder, *connectors: Scripted, config: DispatcherSettings | None = None
              ) -> list[StepReport]:
    reports: list[StepReport] = []

    async def publish(report: StepReport) -> None:
        reports.append(report)

    runner = PlanRunner(config or settings(), {c.name: c for c in connectors}, publish_report=publish)
    await runner.run_order(order_)
    return reports


def failures(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [(r.code, r.attempts) for r in caplog.records  # type: ignore[attr-defined]
            if getattr(r, "scope", None) == "dispatcher.step_failed"]


# ---------------------------------------------------------------- the plan


async def test_steps_run_in_order_each_reported_and_the_last_report_carries_all() -> None:
    fake = Scripted()
    reports = await run(order(plan_step("a"), plan_step("b")), fake)
    assert fake.calls == ["a", "b"]
    assert [(r.plan_status, r.step.step_id) for r in reports] == [("running", "a"), ("dispatched", "b")]
    assert [(r.step_id, r.status) for r in reports[-1].results] == [("a", "succeeded"), ("b", "succeeded")]


async def test_the_first_failure_stops_the_plan_and_the_rest_is_not_run() -> None:
    fake = Scripted(permanent("invalid_params", "no"))
    reports = await run(order(plan_step("a"), plan_step("b")), fake)
    assert fake.calls == ["a"]
    (final,) = reports
    assert final.plan_status == "dispatch_failed"
    assert [(r.step_id, r.status) for r in final.results] == [("a", "failed"), ("b", "not_run")]


async def test_a_resumed_order_skips_the_checkpointed_steps() -> None:
    done = StepResult(step_id="a", connector="fake", operation="do", status="succeeded", attempts=1,
                      result={"from": "earlier"})
    fake = Scripted()
    reports = await run(order(plan_step("a"), plan_step("b"), completed=[done]), fake)
    assert fake.calls == ["b"]
    assert reports[-1].plan_status == "dispatched" and reports[-1].results[0] == done


async def test_an_order_whose_steps_are_all_done_reports_the_end() -> None:
    done = StepResult(step_id="a", connector="fake", operation="do", status="succeeded", attempts=1)
    fake = Scripted()
    (final,) = await run(order(plan_step("a"), completed=[done]), fake)
    assert fake.calls == [] and final.plan_status == "dispatched" and final.results == [done]


# ---------------------------------------------------------------- every failure is logged


async def test_unknown_connector_is_logged_as_a_failed_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    (final,) = await run(order(plan_step("a", connector="nowhere")), Scripted())
    assert final.step.error is not None and final.step.error.code == "unknown_connector"
    assert failures(caplog) == [("unknown_connector", 0)]


async def test_unconfigured_connector_is_logged_as_a_failed_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    (final,) = await run(order(plan_step("a")), Scripted(missing=["FAKE_TOKEN"]))
    assert final.step.error is not None and "FAKE_TOKEN" in final.step.error.message
    assert failures(caplog) == [("connector_not_configured", 0)]


async def test_crashing_connector_is_logged_as_a_failed_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    (final,) = await run(order(plan_step("a")), Scripted(KeyError("oops")))
    assert final.step.error is not None and final.step.error.code == "connector_error"
    assert failures(caplog) == [("connector_error", 1)]
    assert any(getattr(r, "scope", None) == "dispatcher.connector_crashed" for r in caplog.records)


async def test_connector_errors_are_logged_with_their_code_and_attempts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    fake = Scripted(retryable("network_error", "x"), retryable("network_error", "x"))
    await run(order(plan_step("a")), fake, config=settings(PJ_CONNECTOR_MAX_ATTEMPTS=2))
    assert failures(caplog) == [("network_error", 2)]


# ---------------------------------------------------------------- retries and the servers' waits


async def test_retryable_errors_are_retried_up_to_the_limit() -> None:
    fake = Scripted(retryable("http_retryable", "503"), retryable("http_retryable", "503"))
    (final,) = await run(order(plan_step("a")), fake)
    assert (final.step.status, final.step.attempts) == ("succeeded", 3)


async def test_a_wait_past_the_maximum_fails_at_once_as_rate_limited() -> None:
    fake = Scripted(retryable("http_retryable", "HTTP 429", retry_after=10.0, http_status=429))
    started = time.monotonic()
    (final,) = await run(order(plan_step("a")), fake, config=settings(PJ_RATE_LIMIT_MAX_WAIT_S=1))
    assert time.monotonic() - started < 0.5  # no sleeping on a wait it will not finish
    error = final.step.error
    assert final.step.status == "failed" and final.step.attempts == 1 and final.step.http_status == 429
    assert error is not None and error.code == "rate_limited"
    assert "accepts requests again in 10 s" in error.message and "PJ_RATE_LIMIT_MAX_WAIT_S (1 s)" in error.message


async def test_a_wait_longer_than_the_back_off_cap_is_honoured_in_full_and_reported() -> None:
    fake = Scripted(retryable("rate_limited", "HTTP 429", retry_after=0.3, http_status=429))
    started = time.monotonic()
    reports = await run(order(plan_step("a")), fake,
                        config=settings(PJ_CONNECTOR_RETRY_MAX_S=0.05, PJ_RATE_LIMIT_MAX_WAIT_S=5))
    assert time.monotonic() - started >= 0.3  # the server's wait, not the 0.05 s cap
    waiting, final = reports
    # The progress report renews the dispatch lease; the step stays not_run until it has run.
    assert (waiting.plan_status, waiting.step.status) == ("running", "not_run")
    assert waiting.step.error is not None and "waiting 0 s" in waiting.step.error.message
    assert (final.plan_status, final.step.attempts) == ("dispatched", 2)


async def test_a_short_wait_sends_no_progress_report() -> None:
    fake = Scripted(retryable("rate_limited", "HTTP 429", retry_after=0.01))
    reports = await run(order(plan_step("a")), fake, config=settings(PJ_CONNECTOR_RETRY_MAX_S=1))
    assert [r.plan_status for r in reports] == ["dispatched"]


async def test_secrets_never_leave_in_a_failed_result(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    fake = Scripted(RuntimeError("token s3cr3t-value leaked"))
    (final,) = await run(order(plan_step("a")), fake, config=settings(webhook_secret="s3cr3t-value"))
    assert final.step.error is not None and "s3cr3t-value" not in final.step.error.message
    assert caplog.records and all("s3cr3t-value" not in r.getMessage() for r in caplog.records)
    (crash,) = [r for r in caplog.records if getattr(r, "scope", None) == "dispatcher.connector_crashed"]
    trace = crash.exc  # type: ignore[attr-defined]
    assert "Traceback" in trace and "RuntimeError: token *** leaked" in trace and "s3cr3t-value" not in trace
