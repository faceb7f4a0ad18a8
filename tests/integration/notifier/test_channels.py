"""Each channel against a local server speaking its protocol: what passes, what is retried, what is not."""

from collections.abc import AsyncIterator

import httpx
import pytest

from pj_notifier.channels import DeliveryFailed, SlackPost
from pj_notifier.channels.email import EmailSender
from pj_notifier.channels.slack import SlackClient
from pj_notifier.channels.webhook import WebhookSender
from pj_notifier.settings import NotifierSettings
from tests.integration.notifier.conftest import CHANNEL, SLACK_TOKEN, WEBHOOK_SECRET
from tests.support.slack_api import SlackState
from tests.support.smtp_server import start_smtp_server, stop_smtp_server
from tests.support.webhook_sink import SinkState


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


async def failure(call: object) -> DeliveryFailed:
    with pytest.raises(DeliveryFailed) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_slack_posts_updates_and_finds_users(http: httpx.AsyncClient, slack: SlackState) -> None:
    client = SlackClient(http, base_url=slack.url, token=SLACK_TOKEN)
    post = await client.post(CHANNEL, text="hello", key="e-1|#C", blocks=[
        {"type": "section", "text": {"type": "mrkdwn", "text": "hello"}}])
    await client.update(post, text="changed", blocks=[])
    assert slack.posted(CHANNEL)[0]["text"] == "changed"
    assert await client.find_post(CHANNEL, "e-1|#C") == post and await client.find_post(CHANNEL, "other") is None
    dm = await client.post("U0BOB", text="to bob", blocks=[], key="e-1|@bob")
    assert dm.channel == "DU0BOB", "a DM is updated by its own channel id"
    assert await client.user_id("bob@example.com") == "U0BOB"
    assert await client.user_id("bob@example.com") == "U0BOB" and len(slack.calls("users.lookupByEmail")) == 1


async def test_slack_failures_are_classified(http: httpx.AsyncClient, slack: SlackState) -> None:
    client = SlackClient(http, base_url=slack.url, token=SLACK_TOKEN)
    slack.rate_limit_next(retry_after="7")
    limited = await failure(client.post(CHANNEL, text="x", blocks=[], key="k"))
    assert not limited.permanent and limited.retry_after == 7
    slack.fail_next(status=502)
    assert not (await failure(client.post(CHANNEL, text="x", blocks=[], key="k"))).permanent
    assert (await failure(client.user_id("nobody@example.com"))).permanent  # users_not_found
    assert (await failure(client.update(SlackPost(CHANNEL, "1.000001"), text="x", blocks=[]))).permanent
    wrong = SlackClient(http, base_url=slack.url, token="xoxb-wrong")
    assert "invalid_auth" in (await failure(wrong.post(CHANNEL, text="x", blocks=[], key="k"))).reason
    assert (await failure(SlackClient(http, base_url=slack.url, token=None).post(CHANNEL, text="x",
                                                                                  blocks=[], key="k"))).permanent


async def test_email_logs_in_and_a_busy_server_is_retried() -> None:
    controller, smtp = start_smtp_server(login=("notifier", "s3cret"))
    try:
        settings = NotifierSettings(env="dev", smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_starttls=False,
                                    smtp_username="notifier", smtp_password="s3cret", smtp_from="gate@example.com")
        sender = EmailSender(settings)
        await sender.send("alice@example.com", subject="Hello", body="Body", message_id="m-1")
        [message] = smtp.to("alice@example.com")
        assert message["From"] == "gate@example.com" and message["Message-ID"] == "<m-1@pj-notifier>"
        assert smtp.logins == ["notifier"]
        smtp.refuse_next()
        busy = await failure(sender.send("alice@example.com", subject="Hello", body="Body", message_id="m-2"))
        assert not busy.permanent
    finally:
        controller.stop()
    assert (await failure(EmailSender(NotifierSettings(env="dev")).send(
        "a@example.com", subject="x", body="x", message_id="m-4"))).permanent, "PJ_SMTP_HOST unset"


async def test_webhooks_are_signed_and_their_failures_classified(http: httpx.AsyncClient, sink: SinkState) -> None:
    sender = WebhookSender(http, secret=WEBHOOK_SECRET)
    await sender.post(sink.url, {"notice": "pending"}, idempotency_key="e-1:hook")
    [delivery] = sink.deliveries
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    assert delivery.signature_ok and headers["idempotency-key"] == "e-1:hook"
    sink.fail_next = [503]
    assert not (await failure(sender.post(sink.url, {}, idempotency_key="k"))).permanent
    sink.fail_next = [400]
    assert (await failure(sender.post(sink.url, {}, idempotency_key="k"))).permanent
    assert (await failure(WebhookSender(http, secret=None).post(sink.url, {}, idempotency_key="k"))).permanent


async def test_email_upgrades_to_tls_with_starttls_and_checks_the_certificate() -> None:
    controller, smtp = start_smtp_server(starttls=True)  # MAIL is refused before STARTTLS
    try:
        assert smtp.ca_file is not None
        settings = NotifierSettings(env="dev", smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_ca_file=smtp.ca_file)
        await EmailSender(settings).send("alice@example.com", subject="Hello", body="Body", message_id="m-1")
        assert len(smtp.to("alice@example.com")) == 1
        untrusted = EmailSender(settings.model_copy(update={"smtp_ca_file": None}))
        refused = await failure(untrusted.send("alice@example.com", subject="x", body="x", message_id="m-2"))
        assert "certificate" in refused.reason.lower() or "ssl" in refused.reason.lower()
        plain = EmailSender(settings.model_copy(update={"smtp_starttls": False}))
        assert await failure(plain.send("alice@example.com", subject="x", body="x", message_id="m-3"))
        assert len(smtp.messages) == 1
    finally:
        stop_smtp_server(controller, smtp)
