"""The Slack connector against a local fake of Slack's Web API (tests/support/slack_api.py)."""

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from pj_common.messages import DispatchOrder, PlanStep, StepReport
from pj_dispatcher.connectors.base import ConnectorError, StepContext
from pj_dispatcher.connectors.slack import SlackConnector
from pj_dispatcher.runner import PlanRunner
from pj_dispatcher.settings import DispatcherSettings
from tests.support.slack_api import SlackState, start_slack_api, stop_slack_api

TOKEN = "xoxb-1111-2222-test-secret-token"
OPS = "C0OPS00001"


@pytest.fixture
def slack() -> Iterator[SlackState]:
    server, state = start_slack_api(TOKEN)
    state.add_channel(OPS, "ops")
    try:
        yield state
    finally:
        stop_slack_api(server, state)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as http:
        yield http


def connector(client: httpx.AsyncClient, slack: SlackState, token: str | None = TOKEN) -> SlackConnector:
    return SlackConnector(client, api_url=slack.url, token=SecretStr(token) if token is not None else None)


def context(params: dict[str, Any], *, operation: str = "post_message", approval_id: str = "apr_1",
            step_id: str = "announce") -> StepContext:
    return StepContext(approval_id, "tenant-a", "environment.create",
                       PlanStep(step_id=step_id, connector="slack", operation=operation, params=params))


async def failure(slack_connector: SlackConnector, ctx: StepContext) -> ConnectorError:
    with pytest.raises(ConnectorError) as caught:
        await slack_connector.run(ctx)
    return caught.value


# ---------------------------------------------------------------- configuration


def test_missing_settings_names_the_token(client: httpx.AsyncClient, slack: SlackState) -> None:
    assert connector(client, slack, token=None).missing_settings() == ["SLACK_BOT_TOKEN"]
    assert connector(client, slack, token="").missing_settings() == ["SLACK_BOT_TOKEN"]
    assert connector(client, slack).missing_settings() == []
    assert connector(client, slack).name == "slack"


# ---------------------------------------------------------------- success and the requests Slack saw


async def test_post_message_looks_up_then_posts_with_metadata(client: httpx.AsyncClient, slack: SlackState) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*env-a* created"}}]
    output = await connector(client, slack).run(context({"channel": OPS, "text": "env-a created", "blocks": blocks}))

    [message] = slack.posted(OPS)
    assert output.result == {"channel": OPS, "ts": message["ts"], "created": True}
    assert output.http_status == 200

    lookup, post = slack.requests
    assert (lookup.method, lookup.path) == ("GET", "/api/conversations.history")
    assert lookup.query == {"channel": OPS, "limit": "100", "include_all_metadata": "true"}
    assert lookup.headers["authorization"] == f"Bearer {TOKEN}"

    assert (post.method, post.path) == ("POST", "/api/chat.postMessage")
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    assert post.headers["content-type"] == "application/json; charset=utf-8"
    assert post.body == {
        "channel": OPS, "text": "env-a created", "blocks": blocks,
        "metadata": {"event_type": "pj_step",
                     "event_payload": {"key": "apr_1:announce", "tenant": "tenant-a", "approvalId": "apr_1",
                                       "stepId": "announce"}},
    }
    assert message["text"] == "env-a created"
    assert message["metadata"]["event_payload"]["key"] == "apr_1:announce"


async def test_messages_of_other_steps_do_not_count_as_an_earlier_attempt(client: httpx.AsyncClient,
                                                                         slack: SlackState) -> None:
    slack_connector = connector(client, slack)
    first = await slack_connector.run(context({"channel": OPS, "text": "one"}, step_id="one"))
    other = await slack_connector.run(context({"channel": OPS, "text": "one"}, approval_id="apr_2", step_id="one"))
    assert first.result["created"] is True and other.result["created"] is True
    assert first.result["ts"] != other.result["ts"]
    assert len(slack.posted(OPS)) == 2



async def test_a_channel_shared_by_tenants_never_reports_anothers_message(client: httpx.AsyncClient,
                                                                         slack: SlackState) -> None:
    """Even a step of another tenant with the very same key (approval ids are UUIDs: it cannot happen
    unless an order is forged) posts its own message instead of reporting tenant-a's."""
    ours = await connector(client, slack).run(context({"channel": OPS, "text": "tenant-a's"}))
    theirs_ctx = StepContext("apr_1", "tenant-b", "environment.create",
                             PlanStep(step_id="announce", connector="slack", operation="post_message",
                                      params={"channel": OPS, "text": "tenant-b's"}))
    theirs = await connector(client, slack).run(theirs_ctx)
    assert theirs.result["created"] is True and theirs.result["ts"] != ours.result["ts"]
    assert [m["metadata"]["event_payload"]["tenant"] for m in slack.posted(OPS)] == ["tenant-a", "tenant-b"]
    again = await connector(client, slack).run(theirs_ctx)  # and each finds its own on redelivery
    assert again.result == {**theirs.result, "created": False}


# ---------------------------------------------------------------- idempotency


async def test_redelivery_after_a_crash_does_not_post_twice(client: httpx.AsyncClient, slack: SlackState) -> None:
    ctx = context({"channel": OPS, "text": "env-a created"})
    first = await connector(client, slack).run(ctx)
    # The dispatcher crashed before recording the step; the order is redelivered to a new connector.
    again = await connector(client, slack).run(ctx)

    assert len(slack.posted(OPS)) == 1
    assert len(slack.calls("chat.postMessage")) == 1
    assert again.result == {"channel": OPS, "ts": first.result["ts"], "created": False}


async def test_earlier_message_is_found_below_newer_ones(client: httpx.AsyncClient, slack: SlackState) -> None:
    ctx = context({"channel": OPS, "text": "env-a created"})
    first = await connector(client, slack).run(ctx)
    for n in range(20):
        await connector(client, slack).run(context({"channel": OPS, "text": f"later {n}"}, step_id=f"s{n}"))
    again = await connector(client, slack).run(ctx)
    assert again.result == {"channel": OPS, "ts": first.result["ts"], "created": False}
    assert len(slack.posted(OPS)) == 21


async def test_channel_name_is_refused_because_history_needs_the_id(client: httpx.AsyncClient,
                                                                    slack: SlackState) -> None:
    error = await failure(connector(client, slack), context({"channel": "#ops", "text": "hi"}))
    assert error.retryable is False
    assert error.code == "slack_channel_not_found"
    assert "only by channel ID" in error.message and "'#ops'" in error.message
    assert slack.calls("chat.postMessage") == []
    assert slack.posted(OPS) == []


# ---------------------------------------------------------------- permanent failures


@pytest.mark.parametrize(("params", "named"), [
    ({"text": "hi"}, "'channel'"),
    ({"channel": "  ", "text": "hi"}, "'channel'"),
    ({"channel": OPS}, "'text'"),
    ({"channel": OPS, "text": ""}, "'text'"),
    ({"channel": OPS, "text": "hi", "blocks": {"type": "section"}}, "'blocks'"),
])
async def test_invalid_params_fail_before_any_request(client: httpx.AsyncClient, slack: SlackState,
                                                      params: dict[str, Any], named: str) -> None:
    error = await failure(connector(client, slack), context(params))
    assert (error.code, error.retryable) == ("invalid_params", False)
    assert named in error.message
    assert slack.requests == []


async def test_unknown_operation_is_permanent(client: httpx.AsyncClient, slack: SlackState) -> None:
    error = await failure(connector(client, slack), context({"channel": OPS, "text": "hi"}, operation="delete"))
    assert (error.code, error.retryable) == ("unsupported_operation", False)
    assert slack.requests == []


async def test_unknown_channel_id_is_permanent(client: httpx.AsyncClient, slack: SlackState) -> None:
    error = await failure(connector(client, slack), context({"channel": "C0NOPE0001", "text": "hi"}))
    assert (error.code, error.retryable, error.http_status) == ("slack_channel_not_found", False, 200)
    assert slack.calls("chat.postMessage") == []


async def test_invalid_token_is_permanent_and_never_echoed(client: httpx.AsyncClient, slack: SlackState) -> None:
    wrong = "xoxb-9999-wrong-token"
    error = await failure(connector(client, slack, token=wrong), context({"channel": OPS, "text": "hi"}))
    assert (error.code, error.retryable, error.http_status) == ("slack_invalid_auth", False, 200)
    assert "SLACK_BOT_TOKEN" in error.message and "chat:write" in error.message
    assert wrong not in error.message and wrong not in str(error)
    assert slack.requests[0].headers["authorization"] == f"Bearer {wrong}"  # it was sent, as a header only
    assert slack.posted(OPS) == []


async def test_bot_not_in_channel_says_to_invite_it(client: httpx.AsyncClient, slack: SlackState) -> None:
    slack.add_channel("C0PRIV0001", "private", bot_is_member=False)
    error = await failure(connector(client, slack), context({"channel": "C0PRIV0001", "text": "hi"}))
    assert (error.code, error.retryable) == ("slack_not_in_channel", False)
    assert "invite" in error.message


async def test_missing_history_scope_names_it(client: httpx.AsyncClient, slack: SlackState) -> None:
    slack.scopes = {"chat:write"}
    error = await failure(connector(client, slack), context({"channel": OPS, "text": "hi"}))
    assert (error.code, error.retryable) == ("slack_missing_scope", False)
    assert "channels:history" in error.message and "idempotency lookup" in error.message
    assert slack.calls("chat.postMessage") == []


async def test_missing_write_scope_names_it(client: httpx.AsyncClient, slack: SlackState) -> None:
    slack.scopes = {"channels:history"}
    error = await failure(connector(client, slack), context({"channel": OPS, "text": "hi"}))
    assert (error.code, error.retryable) == ("slack_missing_scope", False)
    assert "lacks chat:write" in error.message
    assert slack.posted(OPS) == []


async def test_message_too_long_is_permanent(client: httpx.AsyncClient, slack: SlackState) -> None:
    error = await failure(connector(client, slack), context({"channel": OPS, "text": "x" * 40_001}))
    assert (error.code, error.retryable) == ("slack_msg_too_long", False)
    assert slack.posted(OPS) == []


# ---------------------------------------------------------------- retryable failures


async def test_http_429_honours_retry_after_then_succeeds(client: httpx.AsyncClient, slack: SlackState) -> None:
    slack.rate_limit_next(1, retry_after="7")
    ctx = context({"channel": OPS, "text": "hi"})
    error = await failure(connector(client, slack), ctx)
    assert (error.code, error.retryable, error.retry_after, error.http_status) == ("slack_ratelimited", True, 7.0, 429)

    output = await connector(client, slack).run(ctx)
    assert output.result["created"] is True
    assert len(slack.posted(OPS)) == 1


async def test_ok_false_ratelimited_on_the_post_honours_retry_after(client: httpx.AsyncClient,
                                                                   slack: SlackState) -> None:
    ctx = context({"channel": OPS, "text": "hi"})
    slack_connector = connector(client, slack)
    slack.pass_next(1)  # the lookup passes; the post itself is rate limited in Slack's envelope
    slack.ratelimited_next(1, retry_after="3")
    error = await failure(slack_connector, ctx)
    assert (error.code, error.retryable, error.retry_after, error.http_status) == ("slack_ratelimited", True, 3.0, 200)
    assert [r.api_method for r in slack.requests[-2:]] == ["conversations.history", "chat.postMessage"]

    output = await slack_connector.run(ctx)
    assert output.result["created"] is True
    assert len(slack.posted(OPS)) == 1


@pytest.mark.parametrize("slack_error", ["internal_error", "fatal_error", "service_unavailable", "request_timeout"])
async def test_slack_side_errors_are_retryable(client: httpx.AsyncClient, slack: SlackState, slack_error: str) -> None:
    slack.error_next(slack_error)
    ctx = context({"channel": OPS, "text": "hi"})
    error = await failure(connector(client, slack), ctx)
    assert (error.code, error.retryable, error.retry_after) == (f"slack_{slack_error}", True, None)
    assert (await connector(client, slack).run(ctx)).result["created"] is True


async def test_5xx_burst_is_retryable_then_succeeds(client: httpx.AsyncClient, slack: SlackState) -> None:
    slack.fail_next(2, status=503)
    ctx = context({"channel": OPS, "text": "hi"})
    for _ in range(2):
        error = await failure(connector(client, slack), ctx)
        assert (error.code, error.retryable, error.http_status) == ("http_retryable", True, 503)
    output = await connector(client, slack).run(ctx)
    assert output.result["created"] is True
    assert len(slack.posted(OPS)) == 1


async def test_token_echoed_by_a_failing_proxy_is_redacted(client: httpx.AsyncClient, slack: SlackState) -> None:
    slack.fail_next(1, status=502, text=f"bad gateway; request had Authorization: Bearer {TOKEN}")
    error = await failure(connector(client, slack), context({"channel": OPS, "text": "hi"}))
    assert (error.code, error.retryable, error.http_status) == ("http_retryable", True, 502)
    assert TOKEN not in error.message and TOKEN not in str(error)
    assert "Bearer ***" in error.message


async def test_slow_post_times_out_retryable_and_the_retry_finds_the_message(slack: SlackState) -> None:
    ctx = context({"channel": OPS, "text": "hi"})
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.3)) as short:
        slack.pass_next(1)  # the lookup
        slack.slow_next(1, delay_s=3.0)  # the post goes through, its answer comes too late
        error = await failure(connector(short, slack), ctx)
        assert (error.code, error.retryable) == ("network_error", True)
        assert "ReadTimeout" in error.message

        again = await connector(short, slack).run(ctx)
    [message] = slack.posted(OPS)
    assert again.result == {"channel": OPS, "ts": message["ts"], "created": False}


# ---------------------------------------------------------------- through the runner's retry loop


def _order(params: dict[str, Any]) -> DispatchOrder:
    return DispatchOrder(approval_id="apr_w", tenant_id="tenant-a", action_id="environment.create",
                         claim_token="claim-1",
                         steps=[PlanStep(step_id="announce", connector="slack", operation="post_message",
                                         params=params)])


async def _run_runner(slack_connector: SlackConnector, params: dict[str, Any]) -> StepReport:
    reports: list[StepReport] = []

    async def publish(report: StepReport) -> None:
        reports.append(report)

    settings = DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0, PJ_CONNECTOR_MAX_ATTEMPTS=4)
    await PlanRunner(settings, {"slack": slack_connector}, publish_report=publish).run_order(_order(params))
    [report] = reports
    return report


async def test_runner_retries_5xx_and_rate_limit_then_posts_once(client: httpx.AsyncClient,
                                                                slack: SlackState) -> None:
    slack.fail_next(2, status=502)
    slack.ratelimited_next(1, retry_after="1")
    started = time.monotonic()
    report = await _run_runner(connector(client, slack), {"channel": OPS, "text": "hi"})

    assert time.monotonic() - started >= 1.0  # the Retry-After was waited out
    assert report.plan_status == "dispatched"
    assert report.step.status == "succeeded" and report.step.attempts == 4
    [message] = slack.posted(OPS)
    assert report.step.result == {"channel": OPS, "ts": message["ts"], "created": True}


async def test_runner_fails_a_permanent_error_at_once(client: httpx.AsyncClient, slack: SlackState) -> None:
    report = await _run_runner(connector(client, slack, token="xoxb-wrong"), {"channel": OPS, "text": "hi"})
    assert report.plan_status == "dispatch_failed"
    assert report.step.status == "failed" and report.step.attempts == 1
    assert report.step.error is not None and report.step.error.code == "slack_invalid_auth"
    assert len(slack.requests) == 1

