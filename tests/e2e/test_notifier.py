"""The notifier in the running system: approvals' real events reach Slack and email, and the Slack message
follows the approval to its dispatch (updated in place)."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
import yaml

from pj_common.topology import Topology
from tests.e2e.conftest import approve, headers, request_approval
from tests.support.slack_api import SlackState, start_slack_api, stop_slack_api
from tests.support.smtp_server import SmtpState, start_smtp_server
from tests.support.system import System

pytestmark = pytest.mark.e2e

SLACK_TOKEN = "xoxb-e2e-notifier"
CHANNEL = "C0E2EAPPROVALS"


@pytest.fixture
def slack() -> Iterator[SlackState]:
    server, state = start_slack_api(SLACK_TOKEN)
    state.add_channel(CHANNEL, "approvals")
    state.add_user("U0ALICE", "alice@example.com")
    yield state
    stop_slack_api(server, state)


@pytest.fixture
def smtp() -> Iterator[SmtpState]:
    controller, state = start_smtp_server()
    yield state
    controller.stop()


@pytest.fixture
async def notifier(system: System, slack: SlackState, smtp: SmtpState, amqp_url: str,
                   tmp_path: Path) -> AsyncIterator[None]:
    """A notifier process in the system, reading the system's catalog plus notification settings for a tenant."""
    path = with_notifications(Path(system.env["PJ_CATALOG"]), tmp_path / "catalog.yaml")
    system.start("notifier", "pj_notifier", PJ_CATALOG=str(path), SLACK_BOT_TOKEN=SLACK_TOKEN,
                 PJ_SLACK_API_URL=slack.url, PJ_SMTP_HOST="127.0.0.1", PJ_SMTP_PORT=str(smtp.port),
                 PJ_SMTP_STARTTLS="false", PJ_CONSOLE_URL=system.base_url)
    queue = Topology(system.env["PJ_AMQP_PREFIX"]).notifier
    connection = await aio_pika.connect(amqp_url)
    try:
        await eventually(lambda: _consumers(connection, queue), "the notifier consumes its queue", timeout=30)
        yield
    finally:
        system.stop("notifier")
        channel = await connection.channel()
        await channel.queue_delete(queue)  # later tests' events must not pile up in it
        await connection.close()


def with_notifications(catalog_path: Path, to: Path) -> Path:
    """The system's catalog with notification settings for the tenant acme-notify, written to `to`."""
    catalog: dict[str, Any] = yaml.safe_load(catalog_path.read_text())
    catalog.setdefault("tenants", {})["acme-notify"] = {"notifications": {
        "channels": ["slack", "email"],
        "slack": {"channel": CHANNEL, "direct": True},
        "people": {"alice": {"email": "alice@example.com"}, "olga": {"email": "olga@example.com"}},
        "approvers": {"admin": ["alice"]},
    }}
    to.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return to


async def _consumers(connection: aio_pika.abc.AbstractConnection, queue: str) -> bool:
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return bool(declared.declaration_result.consumer_count)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


async def eventually(check: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.1)):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"not within {timeout}s: {what}")


async def test_a_request_is_announced_and_its_message_follows_the_dispatch(
        notifier: None, client: httpx.AsyncClient, slack: SlackState, smtp: SmtpState) -> None:
    tenant = "acme-notify"
    aid = await request_approval(client, tenant, sub="olga", request_id=f"notify-{uuid.uuid4().hex}")
    await eventually(lambda: slack.posted(CHANNEL) and slack.posted("DU0ALICE") and smtp.to("alice@example.com"),
                     "posted to the channel and alice, and emailed")
    [message] = slack.posted(CHANNEL)
    actions = next(b for b in message["blocks"] if b["type"] == "actions")["elements"]
    assert {e["action_id"]: e.get("value") for e in actions}.items() >= {"pj_approve": aid, "pj_reject": aid}.items()
    assert "olga" in message["text"]
    body = smtp.to("alice@example.com")[0].get_content()
    assert f"/console/approvals/{aid}" in body and "post-webhook (webhook.post)" in body

    await approve(client, tenant, aid, sub="alice")
    r = await client.post(f"/api/approvals/{aid}/dispatch", headers=headers("admin", "alice", tenant), json={})
    assert r.status_code == 200, r.text
    await eventually(lambda: "Dispatched" in slack.posted(CHANNEL)[0]["text"], "the message says dispatched")
    assert len(slack.posted(CHANNEL)) == 1 and slack.posted(CHANNEL)[0]["edits"] >= 2
    await eventually(lambda: any("Dispatched" in str(m["Subject"]) for m in smtp.to("olga@example.com")),
                     "the requester heard of the dispatch")
