"""The plan runner (pj_dispatcher.runner) with stand-in connectors: order of steps, resumption,
failures (each logged), retries and the servers' waits, the lease renewed while it runs and
re-checked before each attempt, the step deadline, and the bound on how long a delivery is held."""

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pj_common.messages import DispatchOrder, LeaseGrant, PlanStep, StepReport, StepResult
from pj_common.transport import Retryable
from pj_dispatcher.connectors.base import ConnectorError, StepContext, StepOutput, permanent, retryable
from pj_dispatcher.metrics import DispatcherMetrics
from pj_dispatcher.runner import PlanRunner
from pj_dispatcher.settings import DispatcherSettings


class Scripted:
    """A connector that answers each call with the next item of `script` (an error is raised)."""

    def __init__(self, *script: ConnectorError | Exception | StepOutput, name: str = "fake",
                 missing: list[str] | None = None, delay_s: float = 0.0) -> None:
        self.name = name
        self.script = list(script)
        self.missing = missing or []
        self.delay_s = delay_s
        self.calls: list[str] = []

    def missing_settings(self) -> list[str]:
        return self.missing

    async def run(self, ctx: StepContext) -> StepOutput:
        self.calls.append(ctx.step.step_id)
        await asyncio.sleep(self.delay_s)
        item = self.script.pop(0) if self.script else StepOutput({"ok": True}, 200)
        if isinstance(item, Exception):
            raise item
        return item


def plan_step(step_id: str, connector: str = "fake") -> PlanStep:
    return PlanStep(step_id=step_id, connector=connector, operation="do")


def order(*steps: PlanStep, completed: list[StepResult] | None = None, lease_s: float | None = None
          ) -> DispatchOrder:
    lease = None if lease_s is None else datetime.now(UTC) + timedelta(seconds=lease_s)
    return DispatchOrder(approval_id="apr-1", tenant_id="t", action_id="act", claim_token="claim",
                         steps=list(steps), completed=completed or [], lease_expires_at=lease)


def settings(**env: Any) -> DispatcherSettings:
    return DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0, **env)


class Approvals:
    """Stands in for approvals' renew_lease: answers each renewal with `grant` (or raises it)."""

    def __init__(self, grant: LeaseGrant | Exception) -> None:
        self.grant = grant
        self.renewals = 0

    async def renew_lease(self, order: DispatchOrder) -> LeaseGrant:
        assert order.claim_token == "claim"
        self.renewals += 1
        if isinstance(self.grant, Exception):
            raise self.grant
        return self.grant


def granted(seconds: float = 60) -> LeaseGrant:
    return LeaseGrant(granted=True, lease_expires_at=datetime.now(UTC) + timedelta(seconds=seconds))


async def run(order_: DispatchOrder, *connectors: Scripted, config: DispatcherSettings | None = None,
              approvals: Approvals | None = None, metrics: DispatcherMetrics | None = None,
              reports: list[StepReport] | None = None) -> list[StepReport]:
    sent: list[StepReport] = [] if reports is None else reports

    async def publish(report: StepReport) -> None:
        sent.append(report)

    runner = PlanRunner(config or settings(), {c.name: c for c in connectors}, publish_report=publish,
                        renew_lease=approvals.renew_lease if approvals else None, metrics=metrics)
    await runner.run_order(order_)
    return sent


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


async def test_a_wait_longer_than_the_back_off_cap_is_honoured_in_full_under_lease_renewals() -> None:
    fake = Scripted(retryable("rate_limited", "HTTP 429", retry_after=0.3, http_status=429))
    approvals = Approvals(granted())
    started = time.monotonic()
    reports = await run(order(plan_step("a"), lease_s=60), fake, approvals=approvals,
                        config=settings(PJ_CONNECTOR_RETRY_MAX_S=0.05, PJ_RATE_LIMIT_MAX_WAIT_S=5,
                                        PJ_LEASE_RENEW_S=0.05))
    assert time.monotonic() - started >= 0.3  # the server's wait, not the 0.05 s cap
    # The renewals keep the lease through the wait: no progress report is needed for it any more.
    assert approvals.renewals >= 3
    (final,) = reports
    assert (final.plan_status, final.step.attempts) == ("dispatched", 2)


async def test_secrets_never_leave_in_a_failed_result(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    fake = Scripted(RuntimeError("token s3cr3t-value leaked"))
    (final,) = await run(order(plan_step("a")), fake, config=settings(webhook_secret="s3cr3t-value"))
    assert final.step.error is not None and "s3cr3t-value" not in final.step.error.message
    assert caplog.records and all("s3cr3t-value" not in r.getMessage() for r in caplog.records)
    (crash,) = [r for r in caplog.records if getattr(r, "scope", None) == "dispatcher.connector_crashed"]
    trace = crash.exc  # type: ignore[attr-defined]
    assert "Traceback" in trace and "RuntimeError: token *** leaked" in trace and "s3cr3t-value" not in trace


# ---------------------------------------------------------------- the lease


def stopped(metrics: DispatcherMetrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value("dispatch_plans_stopped_total", {"reason": reason})


async def test_a_refused_renewal_stops_the_plan_before_its_next_step_with_no_report(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    fake, metrics = Scripted(delay_s=0.2), DispatcherMetrics()
    approvals = Approvals(LeaseGrant(granted=False))
    reports = await run(order(plan_step("a"), plan_step("b"), lease_s=60), fake, approvals=approvals,
                        metrics=metrics, config=settings(PJ_LEASE_RENEW_S=0.05))
    assert fake.calls == ["a"]  # step a was running when the claim went stale; b never starts
    assert reports == []  # its claim is stale: approvals would ignore any report of it
    assert approvals.renewals == 1  # a lost claim is not asked about again
    assert [r.levelno for r in caplog.records if getattr(r, "scope", None) == "dispatcher.lease_lost"] == [
        logging.WARNING]
    assert stopped(metrics, "lease_lost") == 1
    assert metrics.registry.get_sample_value("dispatch_lease_renewals_total", {"outcome": "refused"}) == 1


async def test_unanswered_renewals_let_the_plan_run_while_the_known_lease_holds(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    fake = Scripted(delay_s=0.05)
    approvals = Approvals(Retryable("no reply"))
    reports = await run(order(plan_step("a"), plan_step("b"), plan_step("c"), lease_s=30), fake,
                        approvals=approvals, config=settings(PJ_LEASE_RENEW_S=0.02))
    assert fake.calls == ["a", "b", "c"] and reports[-1].plan_status == "dispatched"
    assert approvals.renewals >= 2
    assert any(getattr(r, "scope", None) == "dispatcher.lease_unanswered" for r in caplog.records)


async def test_a_lease_run_out_unanswered_hands_the_order_back_before_the_next_step() -> None:
    fake, metrics = Scripted(delay_s=0.3), DispatcherMetrics()
    approvals = Approvals(Retryable("no reply"))
    reports: list[StepReport] = []
    with pytest.raises(Retryable, match="lease ran out"):
        await run(order(plan_step("a"), plan_step("b"), lease_s=0.35), fake, approvals=approvals, metrics=metrics,
                  reports=reports, config=settings(PJ_LEASE_RENEW_S=0.1, PJ_LEASE_MARGIN_S=0.1))
    assert fake.calls == ["a"]
    # Step a ran: its checkpoint is reported (approvals checks the claim); the redelivery resumes after it.
    assert [(r.step.step_id, r.plan_status) for r in reports] == [("a", "running")]
    assert stopped(metrics, "lease_expired") == 1


async def test_the_claim_is_re_checked_before_a_step_and_renewed_when_the_lease_is_short() -> None:
    fake = Scripted(delay_s=0.2)
    approvals = Approvals(granted())
    reports = await run(order(plan_step("a"), plan_step("b"), lease_s=0.25), fake, approvals=approvals,
                        config=settings(PJ_LEASE_RENEW_S=3600, PJ_LEASE_MARGIN_S=0.1))
    assert fake.calls == ["a", "b"] and reports[-1].plan_status == "dispatched"
    assert approvals.renewals == 1  # not the periodic renewal (an hour away): the re-check before step b


async def test_the_claim_re_check_before_a_step_stops_on_a_refusal() -> None:
    fake = Scripted(delay_s=0.2)
    approvals = Approvals(LeaseGrant(granted=False))
    reports = await run(order(plan_step("a"), plan_step("b"), lease_s=0.25), fake, approvals=approvals,
                        config=settings(PJ_LEASE_RENEW_S=3600, PJ_LEASE_MARGIN_S=0.1))
    assert fake.calls == ["a"] and [(r.step.step_id, r.plan_status) for r in reports] == [("a", "running")]


# ---------------------------------------------------------------- the step deadline and the delivery's hold


async def test_an_attempt_past_the_step_deadline_is_an_unknown_outcome_retried_then_failed(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pj.dispatcher")
    fake = Scripted(delay_s=5)
    started = time.monotonic()
    (final,) = await run(order(plan_step("a")), fake,
                         config=settings(PJ_STEP_DEADLINE_S=0.1, PJ_CONNECTOR_MAX_ATTEMPTS=2))
    assert time.monotonic() - started < 1
    assert fake.calls == ["a", "a"]  # retried: the connector looks for its earlier effect first
    error = final.step.error
    assert final.plan_status == "dispatch_failed" and error is not None and error.code == "step_timeout"
    assert "may have taken effect upstream" in error.message
    assert failures(caplog) == [("step_timeout", 2)]


async def test_a_connectors_own_timeout_error_is_not_the_deadline() -> None:
    (final,) = await run(order(plan_step("a")), Scripted(TimeoutError("its own")))
    assert final.step.error is not None and final.step.error.code == "connector_error"


async def test_a_delivery_held_too_long_is_handed_back_between_steps() -> None:
    fake, metrics = Scripted(delay_s=0.25), DispatcherMetrics()
    reports: list[StepReport] = []
    config = settings(PJ_ORDER_HOLD_MAX_S=1.0, PJ_STEP_DEADLINE_S=0.3, PJ_RATE_LIMIT_MAX_WAIT_S=0.5)
    with pytest.raises(Retryable, match="PJ_ORDER_HOLD_MAX_S") as raised:
        await run(order(*(plan_step(s) for s in "abcd")), fake, config=config, metrics=metrics, reports=reports)
    assert raised.value.retry_after == 0  # back to the queue at once, to resume on its redelivery
    # Step c would start at 0.5 s and may take 0.3 s more... then d would pass 1 s: two or three steps run.
    assert fake.calls in (["a", "b"], ["a", "b", "c"])
    assert [r.plan_status for r in reports] == ["running"] * len(fake.calls)
    assert stopped(metrics, "handed_back") == 1


async def test_a_wait_that_would_outlast_the_delivery_hands_it_back_instead() -> None:
    fake = Scripted(retryable("rate_limited", "HTTP 429", retry_after=0.45))
    config = settings(PJ_ORDER_HOLD_MAX_S=1.0, PJ_STEP_DEADLINE_S=0.4, PJ_RATE_LIMIT_MAX_WAIT_S=0.5,
                      PJ_CONNECTOR_RETRY_MAX_S=0.01)
    started = time.monotonic()
    with pytest.raises(Retryable, match="PJ_ORDER_HOLD_MAX_S"):
        # At 0.3 s step b is refused for 0.45 s, and an attempt after that wait could end past 1 s.
        await run(order(plan_step("a", "slow"), plan_step("b")), Scripted(delay_s=0.3, name="slow"), fake,
                  config=config)
    assert time.monotonic() - started < 0.6  # handed back at once, not after sleeping
    assert fake.calls == ["b"]


def test_a_delivery_must_have_room_for_the_longest_wait_and_an_attempt() -> None:
    with pytest.raises(ValueError, match="PJ_ORDER_HOLD_MAX_S"):
        settings(PJ_ORDER_HOLD_MAX_S=400, PJ_RATE_LIMIT_MAX_WAIT_S=300, PJ_STEP_DEADLINE_S=120)


# ---------------------------------------------------------------- reports that cannot be published


class FlakyBroker:
    """Stands in for the report channel: the first `failures` publishes raise, as on a lost connection."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[StepReport] = []
        self.tries = 0

    async def publish(self, report: StepReport) -> None:
        self.tries += 1
        if self.tries <= self.failures:
            raise ConnectionError("broker connection lost")
        self.sent.append(report)


def runner_for(broker: FlakyBroker, *connectors: Scripted, config: DispatcherSettings | None = None,
               metrics: DispatcherMetrics | None = None, approvals: Approvals | None = None) -> PlanRunner:
    return PlanRunner(config or settings(), {c.name: c for c in connectors}, publish_report=broker.publish,
                      renew_lease=approvals.renew_lease if approvals else None, metrics=metrics)


async def test_a_report_that_fails_to_publish_is_sent_again_and_its_step_is_not_run_again() -> None:
    fake, broker, metrics = Scripted(), FlakyBroker(failures=3), DispatcherMetrics()
    await runner_for(broker, fake, metrics=metrics).run_order(order(plan_step("a"), plan_step("b"), lease_s=60))
    assert fake.calls == ["a", "b"]
    assert [(r.plan_status, r.step.step_id) for r in broker.sent] == [("running", "a"), ("dispatched", "b")]
    assert metrics.report_retries._value.get() == 3  # type: ignore[attr-defined]


async def test_a_report_outlives_the_lease_known_here_while_renewals_go_unanswered() -> None:
    # The broker is away: renewals are not answered, the lease known here runs out, the report waits.
    fake, broker = Scripted(), FlakyBroker(failures=12)
    approvals = Approvals(ConnectionError("broker connection lost"))
    runner = runner_for(broker, fake, config=settings(PJ_LEASE_MARGIN_S=0), approvals=approvals)
    await runner.run_order(order(plan_step("a"), lease_s=0.5))
    assert fake.calls == ["a"]
    assert [r.plan_status for r in broker.sent] == ["dispatched"]
    assert approvals.renewals >= 2  # asked while the report waited


async def test_a_report_is_given_up_once_a_renewal_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    fake, broker = Scripted(), FlakyBroker(failures=10_000)
    approvals = Approvals(LeaseGrant(granted=False))
    caplog.set_level(logging.INFO, "pj.dispatcher")
    runner = runner_for(broker, fake, approvals=approvals)
    t0 = time.monotonic()
    await runner.run_order(order(plan_step("a"), plan_step("b"), lease_s=60))  # returns: the plan stopped
    assert time.monotonic() - t0 < 10
    assert fake.calls == ["a"] and broker.sent == []
    assert "dispatcher.report_lost" in [getattr(r, "scope", None) for r in caplog.records]


async def test_a_handed_back_order_reports_the_outcome_it_remembers_instead_of_running_the_step_again(
        caplog: pytest.LogCaptureFixture) -> None:
    # A delivery may be held only a little longer than one attempt: a report that keeps failing hands it back.
    config = settings(PJ_RATE_LIMIT_MAX_WAIT_S=0, PJ_STEP_DEADLINE_S=0.3, PJ_ORDER_HOLD_MAX_S=0.5)
    fake, broker = Scripted(), FlakyBroker(failures=10_000)
    runner = runner_for(broker, fake, config=config)
    the_order = order(plan_step("a"), plan_step("b"), lease_s=60)
    with pytest.raises(Retryable):
        await runner.run_order(the_order)
    assert fake.calls == ["a"] and broker.sent == []
    broker.failures = 0  # the connection is back; approvals has not seen a report for "a" yet
    caplog.set_level(logging.INFO, "pj.dispatcher")
    await runner.run_order(the_order)
    assert fake.calls == ["a", "b"]  # "a" was not run a second time
    assert [(r.plan_status, r.step.step_id) for r in broker.sent] == [("running", "a"), ("dispatched", "b")]
    assert "dispatcher.step_reported_again" in [getattr(r, "scope", None) for r in caplog.records]
