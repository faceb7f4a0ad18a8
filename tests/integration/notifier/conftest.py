"""A notifier against the session's database, the local Slack API, a local SMTP server and a webhook sink."""

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from pj_common.messages import ApprovalEvent, ApprovalStatus, new_id
from pj_notifier import store
from pj_notifier.catalog import load_catalog
from pj_notifier.channels.email import EmailSender
from pj_notifier.channels.slack import SlackClient
from pj_notifier.channels.webhook import WebhookSender
from pj_notifier.metrics import NotifierMetrics
from pj_notifier.service import Channels, Notifier
from pj_notifier.settings import NotifierSettings
from tests.support.slack_api import SlackState, start_slack_api, stop_slack_api
from tests.support.smtp_server import SmtpState, start_smtp_server
from tests.support.webhook_sink import SinkState, serving_sink

SLACK_TOKEN = "xoxb-notifier-test"
WEBHOOK_SECRET = "notifier-webhook-secret-0123456789abcdef"
CHANNEL = "C0APPROVALS"

CATALOG = """
version: 1
tenants:
  default:
    notifications:
      slack: {channel: C0APPROVALS, direct: true}
      webhooks: ["%(webhook)s"]
      people:
        alice: {email: alice@example.com, slack: U0ALICE}
        bob: {email: bob@example.com}
        erin: {email: erin@example.com, slack: U0ERIN}
        dave: {email: dave@example.com}
      approvers: {admin: [alice, bob]}
      groups: {leads: [dave]}
      escalate_to: leads
      actions:
        notify.quick: {remind_after: 1s, escalate_after: 2s}
actions:
  notify.webhook:
    description: Post a signed webhook.
    approval: {roles: [admin], approvals_required: 1}
    plan:
      - {stepId: post, connector: webhook, operation: post, params: {}}
  notify.quick:
    description: Waits briefly before reminding.
    plan:
      - {stepId: post, connector: webhook, operation: post, params: {}}
"""


@pytest.fixture
def slack() -> Iterator[SlackState]:
    server, state = start_slack_api(SLACK_TOKEN)
    state.add_channel(CHANNEL, "approvals")
    for user_id, email in (("U0ALICE", "alice@example.com"), ("U0BOB", "bob@example.com"),
                           ("U0ERIN", "erin@example.com"), ("U0DAVE", "dave@example.com")):
        state.add_user(user_id, email)
    yield state
    stop_slack_api(server, state)


@pytest.fixture
def smtp() -> Iterator[SmtpState]:
    controller, state = start_smtp_server()
    yield state
    controller.stop()


@pytest.fixture
def sink() -> Iterator[SinkState]:
    with serving_sink(WEBHOOK_SECRET) as state:
        yield state


@pytest.fixture
def catalog_path(tmp_path: Path, sink: SinkState) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG % {"webhook": sink.url})
    return path


@pytest.fixture
def settings_env(database_url: str, catalog_path: Path, slack: SlackState, smtp: SmtpState) -> dict[str, str]:
    """The notifier's settings as environment variables (for a process) or keyword arguments."""
    return {"PJ_ENV": "dev", "PJ_DATABASE_URL": database_url, "PJ_CATALOG": str(catalog_path),
            "SLACK_BOT_TOKEN": SLACK_TOKEN, "PJ_SLACK_API_URL": slack.url, "PJ_SMTP_HOST": "127.0.0.1",
            "PJ_SMTP_PORT": str(smtp.port), "PJ_SMTP_STARTTLS": "false",
            "PJ_NOTIFIER_WEBHOOK_SECRET": WEBHOOK_SECRET, "PJ_CONSOLE_URL": "https://gate.example",
            "PJ_REMINDER_SCAN_INTERVAL_S": "0.2"}


@pytest.fixture
def settings(settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> NotifierSettings:
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    return NotifierSettings()


@pytest.fixture
async def pool(settings: NotifierSettings) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(settings.database_url, min_size=1, max_size=8,
                                                      kwargs={"autocommit": True}, open=False)
    await p.open(wait=True)
    async with p.connection() as conn:
        await store.migrate(conn)
    yield p
    await p.close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def notifier(pool: AsyncConnectionPool[Any], settings: NotifierSettings) -> AsyncIterator[Notifier]:
    async with httpx.AsyncClient(timeout=5) as http:
        channels = Channels(slack=SlackClient(http, base_url=settings.slack_api_url, token=SLACK_TOKEN),
                            email=EmailSender(settings), webhook=WebhookSender(http, secret=WEBHOOK_SECRET))
        yield Notifier(pool, load_catalog(settings.catalog), channels, metrics=NotifierMetrics(),
                       settings=settings, now=Clock())


def approval_event(type_: str, to: ApprovalStatus, *, approval_id: str, action_id: str = "notify.webhook",
                   actor: str | None = "alice", from_: ApprovalStatus | None = ApprovalStatus.PENDING,
                   at: datetime | None = None) -> ApprovalEvent:
    """An event as approvals' relay publishes it."""
    return ApprovalEvent(type=type_, approval_id=approval_id, tenant_id="default", action_id=action_id, actor=actor,
                         from_status=from_, to_status=to, occurred_at=at or datetime.now(UTC))


def created(approval_id: str, **kw: Any) -> ApprovalEvent:
    return approval_event("approval.created", ApprovalStatus.PENDING, approval_id=approval_id, actor="erin",
                          from_=None, **kw)


@pytest.fixture
def approval_id() -> str:
    return new_id()
