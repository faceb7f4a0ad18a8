"""The signed webhook connector against a real HTTP receiver on 127.0.0.1."""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from pj_common.messages import DispatchOrder, PlanStep, StepReport
from pj_dispatcher.connectors.base import ConnectorError, StepContext
from pj_dispatcher.connectors.webhook import WebhookConnector, refuse_private_target
from pj_dispatcher.metrics import DispatcherMetrics
from pj_dispatcher.runner import PlanRunner
from pj_dispatcher.settings import DispatcherSettings
from tests.support.webhook_sink import SinkState, start_sink, verify

SECRET = "webhook-test-secret"


@pytest.fixture
def sink() -> Iterator[SinkState]:
    server, state = start_sink(SECRET)
    yield state
    server.shutdown()
    server.server_close()


def context(payload: Any = None, operation: str = "post") -> StepContext:
    step = PlanStep(step_id="notify", connector="webhook", operation=operation, params={"body": payload})
    return StepContext(approval_id="a-1", tenant_id="acme", action_id="notify.webhook", step=step)


def connector(client: httpx.AsyncClient, url: str, allow_private: bool = True) -> WebhookConnector:
    return WebhookConnector(client, url=url, secret=SecretStr(SECRET), allow_private=allow_private)


async def run_one_step(settings: DispatcherSettings, hook: Any, approval_id: str, body: str,
                       metrics: DispatcherMetrics | None = None) -> StepReport:
    """Run a one-step webhook plan through the runner (its retry loop) and return the final report."""
    reports: list[StepReport] = []

    async def publish(report: StepReport) -> None:
        reports.append(report)

    order = DispatchOrder(approval_id=approval_id, tenant_id="acme", action_id="notify.webhook", claim_token="c",
                          steps=[context(body).step])
    await PlanRunner(settings, {"webhook": hook}, publish_report=publish, metrics=metrics).run_order(order)
    (final,) = reports
    return final


async def test_posts_a_signed_body_with_the_idempotency_key(sink: SinkState) -> None:
    async with httpx.AsyncClient() as client:
        out = await connector(client, sink.url).run(context({"x": 1}))
    assert out.http_status == 200 and out.result == {"status": 200}
    (delivery,) = sink.deliveries
    assert delivery.signature_ok
    assert delivery.body == {"approvalId": "a-1", "actionId": "notify.webhook", "payload": {"x": 1}}
    assert delivery.headers["Idempotency-Key"] == "a-1:notify"
    assert abs(int(delivery.headers["X-PJ-Timestamp"]) - time.time()) < 5
    assert verify(SECRET, delivery.headers["X-PJ-Timestamp"], b'{"approvalId":"a-1","actionId":"notify.webhook",'
                  b'"payload":{"x":1}}', delivery.headers["X-PJ-Signature"])


async def test_redelivery_sends_the_same_idempotency_key(sink: SinkState) -> None:
    async with httpx.AsyncClient() as client:
        hook = connector(client, sink.url)
        await hook.run(context("once"))
        await hook.run(context("once"))
    keys = {d.headers["Idempotency-Key"] for d in sink.deliveries}
    assert keys == {"a-1:notify"}  # the receiver sees one effect, delivered twice


async def test_client_errors_are_permanent(sink: SinkState) -> None:
    sink.fail_next = [400]
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, sink.url).run(context())
    assert not err.value.retryable and err.value.http_status == 400


async def test_rate_limit_is_retryable_with_the_servers_delay(sink: SinkState) -> None:
    sink.fail_next, sink.retry_after = [429], "7"
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, sink.url).run(context())
    assert err.value.retryable and err.value.retry_after == 7.0 and err.value.http_status == 429


async def test_runner_retries_server_errors_then_succeeds(sink: SinkState) -> None:
    sink.fail_next, sink.retry_after = [503, 502], "0"
    settings = DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0.01)
    async with httpx.AsyncClient() as client:
        final = await run_one_step(settings, connector(client, sink.url), "a-2", "r")
    assert final.plan_status == "dispatched"
    assert final.step.attempts == 3 and final.step.status == "succeeded"
    assert sink.attempts == 3 and len(sink.deliveries) == 1


async def test_slow_receiver_times_out_as_retryable(sink: SinkState) -> None:
    sink.delay_s = 1.0
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.2)) as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, sink.url).run(context())
    assert err.value.retryable and err.value.code == "network_error"


async def test_redirects_are_refused_not_followed(sink: SinkState) -> None:
    sink.redirect_to = "http://127.0.0.1:9/elsewhere"
    async with httpx.AsyncClient(follow_redirects=False) as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, sink.url).run(context())
    assert err.value.code == "redirect_refused" and not err.value.retryable
    assert sink.deliveries == []


async def test_private_targets_are_refused_unless_allowed(sink: SinkState) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, sink.url, allow_private=False).run(context())
    assert err.value.code == "target_not_allowed" and sink.attempts == 0
    for url in ("http://10.1.2.3/x", "http://169.254.169.254/latest", "http://[::1]:8080/", "http://0.0.0.0/",
                "http://100.64.0.1/cgnat"):
        with pytest.raises(ConnectorError):
            await refuse_private_target(url)


async def test_missing_settings_are_named() -> None:
    async with httpx.AsyncClient() as client:
        unset = WebhookConnector(client, url=None, secret=None, allow_private=False)
        assert unset.missing_settings() == ["PJ_WEBHOOK_URL", "PJ_WEBHOOK_SECRET"]


async def test_a_crashing_connector_never_leaks_a_secret_into_the_result() -> None:
    class Leaky:
        name = "webhook"

        def missing_settings(self) -> list[str]:
            return []

        async def run(self, ctx: StepContext) -> Any:
            raise RuntimeError(f"boom with {SECRET} inside")

    settings = DispatcherSettings(env="dev", webhook_secret=SECRET)
    final = await run_one_step(settings, Leaky(), "a-3", "x")
    assert final.plan_status == "dispatch_failed" and final.step.error is not None
    assert final.step.error.code == "connector_error"
    assert SECRET not in final.step.error.message and "***" in final.step.error.message


async def test_per_connector_attempt_limit(sink: SinkState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_CONNECTOR_ATTEMPTS", '{"webhook": 2}')
    settings = DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0.01)
    sink.fail_next, sink.retry_after = [503, 503, 503], "0"
    async with httpx.AsyncClient() as client:
        final = await run_one_step(settings, connector(client, sink.url), "a-4", "r")
    assert final.plan_status == "dispatch_failed" and final.step.attempts == 2 and sink.attempts == 2


async def test_runner_counts_steps_retries_and_durations(sink: SinkState) -> None:
    sink.fail_next, sink.retry_after = [503], "0"
    metrics = DispatcherMetrics()
    settings = DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0.01)
    async with httpx.AsyncClient() as client:
        final = await run_one_step(settings, connector(client, sink.url), "a-5", "m", metrics)
    assert final.plan_status == "dispatched"
    sample = metrics.registry.get_sample_value
    assert sample("dispatch_steps_total", {"connector": "webhook", "status": "succeeded"}) == 1
    assert sample("dispatch_step_retries_total", {"connector": "webhook"}) == 1
    assert sample("dispatch_step_seconds_count", {"connector": "webhook"}) == 1
