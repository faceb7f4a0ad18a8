"""Rate-limit waits through the plan runner, against a local API on 127.0.0.1 that refuses requests
(HTTP 429) until a moment it announces, by `Retry-After` or by `X-RateLimit-Reset`."""

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from pj_common.messages import DispatchOrder, PlanStep, StepReport
from pj_dispatcher.connectors.webhook import WebhookConnector
from pj_dispatcher.runner import PlanRunner
from pj_dispatcher.settings import DispatcherSettings
from tests.support.local_http import serving


@dataclass
class LimitedApi:
    url: str = ""
    accepts_at: float = 0.0  # time.time() from which requests are accepted
    announce: str = "retry-after"  # or "reset": X-RateLimit-Remaining 0 with X-RateLimit-Reset (epoch seconds)
    answers: list[int] = field(default_factory=list)

    def refuse_for(self, seconds: float, announce: str = "retry-after") -> None:
        self.accepts_at, self.announce = time.time() + seconds, announce


def handler(api: LimitedApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            wait = api.accepts_at - time.time()
            status = 429 if wait > 0 else 200
            api.answers.append(status)
            self.send_response(status)
            if status == 429 and api.announce == "retry-after":
                self.send_header("Retry-After", str(math.ceil(wait)))
            elif status == 429:
                self.send_header("X-RateLimit-Remaining", "0")
                self.send_header("X-RateLimit-Reset", str(math.ceil(api.accepts_at)))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def api() -> Iterator[LimitedApi]:
    state = LimitedApi()
    with serving(handler(state)) as base_url:
        state.url = f"{base_url}/hook"
        yield state


async def run_one_step(api: LimitedApi, *, max_wait_s: float) -> list[StepReport]:
    # The back-off cap is far below the server's wait: only the rate-limit rule can make it wait enough.
    settings = DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0.01, PJ_CONNECTOR_RETRY_MAX_S=0.1,
                                  PJ_RATE_LIMIT_MAX_WAIT_S=max_wait_s)
    reports: list[StepReport] = []

    async def publish(report: StepReport) -> None:
        reports.append(report)

    order = DispatchOrder(approval_id="apr-1", tenant_id="t", action_id="notify.webhook", claim_token="c",
                          steps=[PlanStep(step_id="notify", connector="webhook", operation="post")])
    async with httpx.AsyncClient() as client:
        hook = WebhookConnector(client, url=api.url, secret=SecretStr("s"), allow_private=True)
        await PlanRunner(settings, {"webhook": hook}, publish_report=publish).run_order(order)
    return reports


@pytest.mark.parametrize("announce", ["retry-after", "reset"])
async def test_a_wait_within_the_maximum_is_waited_out_and_the_step_succeeds(api: LimitedApi, announce: str) -> None:
    api.refuse_for(1.5, announce)
    started = time.monotonic()
    reports = await run_one_step(api, max_wait_s=5)
    assert time.monotonic() - started >= 1.0
    final = reports[-1]
    assert (final.plan_status, final.step.status, final.step.attempts) == ("dispatched", "succeeded", 2)
    assert api.answers == [429, 200]  # one wait, as long as the server asked, and no request in between
    # No progress report for the wait: the lease renewals keep the claim while the runner waits.
    assert [(r.plan_status, r.step.status) for r in reports] == [("dispatched", "succeeded")]


async def test_a_wait_past_the_maximum_fails_the_step_at_once_as_rate_limited(api: LimitedApi) -> None:
    api.refuse_for(10)
    started = time.monotonic()
    (final,) = await run_one_step(api, max_wait_s=1)
    assert time.monotonic() - started < 1.0  # no sleeping on a wait that would not be enough
    assert (final.plan_status, final.step.attempts, final.step.http_status) == ("dispatch_failed", 1, 429)
    error = final.step.error
    assert error is not None and error.code == "rate_limited"
    assert "accepts requests again in 10 s (at 20" in error.message
    assert "PJ_RATE_LIMIT_MAX_WAIT_S (1 s)" in error.message
    assert api.answers == [429]
