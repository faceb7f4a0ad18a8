"""Notifier processes on the real broker: events published as approvals' relay publishes them."""

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import aio_pika
import pytest

from pj_common.messages import ApprovalEvent, ApprovalStatus
from pj_common.topology import Topology, declare_topology
from pj_common.transport import json_message
from pj_notifier.app import NotifierApp, declare_notifier_queue
from pj_notifier.settings import NotifierSettings
from tests.integration.notifier.conftest import CHANNEL, approval_event, created
from tests.support.slack_api import SlackState
from tests.support.smtp_server import SmtpState
from tests.support.webhook_sink import SinkState

REPO = Path(__file__).resolve().parents[3]
S = ApprovalStatus


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait (bounded) until `check()` holds."""
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {timeout}s: {what}")


@pytest.fixture
async def events(amqp_url: str, topology: Topology) -> AsyncIterator[Callable[[ApprovalEvent], asyncio.Future[None]]]:
    """Publish events on the test's events exchange, the way approvals' relay does; the notifier queue
    exists (and takes them) before any notifier process starts."""
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await declare_topology(channel, topology)
    await declare_notifier_queue(channel, topology)
    exchange = await channel.get_exchange(topology.events)

    def publish(event: ApprovalEvent) -> asyncio.Future[None]:
        message = json_message(event.to_json(), message_id=event.event_id)
        return asyncio.ensure_future(exchange.publish(message, routing_key=event.type, mandatory=False))

    yield publish  # type: ignore[misc]
    cleanup = await connection.channel()
    await cleanup.queue_delete(topology.notifier)
    await connection.close()


@pytest.fixture
def env(settings_env: dict[str, str], amqp_url: str, topology: Topology) -> dict[str, str]:
    return {**settings_env, "PJ_AMQP_URL": amqp_url, "PJ_AMQP_PREFIX": topology.prefix}


@pytest.fixture
async def app(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NotifierApp]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    notifier = NotifierApp(NotifierSettings())
    await notifier.start()
    yield notifier
    await notifier.stop()


async def test_a_request_reaches_slack_and_email_and_its_message_follows_the_dispatch(
        app: NotifierApp, events: Callable[[ApprovalEvent], asyncio.Future[None]], slack: SlackState,
        smtp: SmtpState, approval_id: str) -> None:
    first = created(approval_id)
    await events(first)
    await eventually(lambda: len(slack.posted(CHANNEL)) == 1 and len(smtp.messages) == 2, "posted and emailed")
    moves = [("approval.decided", S.APPROVED), ("approval.dispatch.started", S.DISPATCHING),
             ("approval.dispatch.completed", S.DISPATCHED)]
    for minutes, (type_, to) in enumerate(moves, start=1):
        at = first.occurred_at + timedelta(minutes=minutes)
        await events(approval_event(type_, to, approval_id=approval_id, at=at))
    await eventually(lambda: "Dispatched" in slack.posted(CHANNEL)[0]["text"], "the message says dispatched")
    assert len(slack.posted(CHANNEL)) == 1, "updated in place, not followed by a new message"
    sent = app.metrics.registry.get_sample_value("notifier_notifications_sent_total", {"channel": "slack"})
    assert sent is not None and sent >= 4


async def test_reminder_and_escalation_fire_after_the_configured_times(
        app: NotifierApp, events: Callable[[ApprovalEvent], asyncio.Future[None]], smtp: SmtpState,
        approval_id: str) -> None:
    await events(created(approval_id, action_id="notify.quick"))  # remind after 1 s, escalate after 2 s
    await eventually(lambda: bool(smtp.to("dave@example.com")), "the escalation to the leads group", timeout=8)
    await eventually(lambda: app.metrics.registry.get_sample_value("notifier_escalations_total") == 1, "counted")
    reminders = [m for m in smtp.messages if "Reminder" in str(m["Subject"])]
    assert sorted(m["To"] for m in reminders) == ["alice@example.com", "bob@example.com"]
    counts = [app.metrics.registry.get_sample_value(f"notifier_{kind}_total") for kind in ("reminders", "escalations")]
    assert counts == [1, 1]
    await asyncio.sleep(0.5)  # two more scans
    assert len(smtp.messages) == 5, "each once: 2 requests, 2 reminders, 1 escalation"


def start_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pj_notifier"], cwd=REPO, stdout=out, stderr=out,
                                env={**{k: v for k, v in os.environ.items() if not k.startswith("PJ_")}, **env})


def stop_process(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(timeout=15)


async def test_a_killed_notifier_restarted_posts_nothing_twice(
        env: dict[str, str], events: Callable[[ApprovalEvent], asyncio.Future[None]], slack: SlackState,
        smtp: SmtpState, sink: SinkState, approval_id: str, tmp_path: Path) -> None:
    first = created(approval_id)
    process = start_process(env, tmp_path / "notifier.log")
    try:
        await events(first)
        # Every notification of the request made (the webhook is the last); a kill between a send and its
        # record would send that one again (the window the service's docstring names).
        await eventually(lambda: len(sink.deliveries) == 1, "the first process sent everything", timeout=20)
        await asyncio.sleep(0.1)
    finally:
        stop_process(process, signal.SIGKILL)  # abruptly: no clean shutdown
    await events(first)  # published again, as a relay that lost its cursor does
    await events(approval_event("approval.decided", S.APPROVED, approval_id=approval_id,
                                at=first.occurred_at + timedelta(minutes=1)))
    process = start_process(env, tmp_path / "notifier.log")
    try:
        await eventually(lambda: "Approved" in slack.posted(CHANNEL)[0]["text"], "the restarted process updated it",
                         timeout=20)
    finally:
        stop_process(process)
    assert len(slack.posted(CHANNEL)) == 1 and len(slack.posted("DU0ALICE")) == 1
    assert sorted(m["To"] for m in smtp.messages) == ["alice@example.com", "bob@example.com", "erin@example.com"]
    assert process.returncode == 0, (tmp_path / "notifier.log").read_text()[-2000:]


def test_sighup_reloads_the_catalog_and_a_bad_file_keeps_the_last_good_one(
        settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, catalog_path: Path) -> None:
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    app = NotifierApp(NotifierSettings())
    assert app.catalog.route("default", "notify.webhook").remind_after == 4 * 3600
    catalog_path.write_text(catalog_path.read_text().replace("escalate_to: leads", "escalate_to: leads\n"
                                                                                   "      remind_after: 2h"))
    app.reload_catalog()
    assert app.catalog.route("default", "notify.webhook").remind_after == 2 * 3600
    assert app.notifier._catalog is app.catalog, "the notifier reads the new one"
    catalog_path.write_text(catalog_path.read_text().replace("remind_after: 2h", "remind_after: soon"))
    app.reload_catalog()
    assert app.catalog.route("default", "notify.webhook").remind_after == 2 * 3600


async def test_a_notifier_killed_in_the_middle_of_a_post_does_not_post_it_again(
        env: dict[str, str], events: Callable[[ApprovalEvent], asyncio.Future[None]], slack: SlackState,
        smtp: SmtpState, sink: SinkState, approval_id: str, tmp_path: Path) -> None:
    slack.slow_next(1, delay_s=5.0)  # the channel post (the first Slack call) is taken, its answer held back
    process = start_process(env, tmp_path / "notifier.log")
    try:
        await events(created(approval_id))
        await eventually(lambda: len(slack.posted(CHANNEL)) == 1, "the post reached Slack", timeout=20)
    finally:
        stop_process(process, signal.SIGKILL)  # before the answer came: the event was never acked
    process = start_process(env, tmp_path / "notifier.log")
    try:
        await eventually(lambda: len(sink.deliveries) == 1, "the restarted process finished the event", timeout=20)
    finally:
        stop_process(process)
    assert len(slack.posted(CHANNEL)) == 1, "found by its metadata, not posted again"
    assert slack.calls("conversations.history")
    assert len(slack.posted("DU0ALICE")) == 1 and len(slack.posted("DU0BOB")) == 1
    assert sorted(m["To"] for m in smtp.messages) == ["alice@example.com", "bob@example.com"]


async def test_two_notifiers_share_the_queue_and_post_each_message_once(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, events: Callable[[ApprovalEvent], asyncio.Future[None]],
        slack: SlackState) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    apps = [NotifierApp(NotifierSettings()) for _ in range(2)]
    for app in apps:
        await app.start()
    try:
        ids = [str(uuid.uuid4()) for _ in range(6)]
        published = []
        for aid in ids:  # every event of each approval at once: the processes take them in any order
            first = created(aid)
            published.append(events(first))
            for minutes, (type_, to) in enumerate([("approval.decided", S.APPROVED), ("approval.dispatch.started",
                                                   S.DISPATCHING), ("approval.dispatch.completed", S.DISPATCHED)], 1):
                published.append(events(approval_event(type_, to, approval_id=aid,
                                                        at=first.occurred_at + timedelta(minutes=minutes))))
        await asyncio.gather(*published)

        def finished() -> bool:
            texts = [m["text"] for m in slack.posted(CHANNEL)]
            return len(texts) >= len(ids) and all("Dispatched" in t for t in texts)

        await eventually(finished, "every approval's message says dispatched", timeout=30)
        assert len(slack.posted(CHANNEL)) == len(ids), "one message per approval, whichever process took what"
        # The requester's own message likewise; an approver's only when the request was still pending as
        # the notifier saw it (a decision handled first means nobody needs asking any more).
        assert len(slack.posted("DU0ERIN")) == len(ids) and len(slack.posted("DU0ALICE")) <= len(ids)
        assert all(sum(a.metrics.registry.get_sample_value("notifier_events_total", {"type": t, "seen": "new"}) or 0
                       for a in apps) == len(ids) for t in ("approval.created", "approval.decided"))
        for app in apps:  # the broker hands the shared queue's events to both
            taken = [s.value for m in app.metrics.registry.collect() if m.name == "notifier_events"
                     for s in m.samples if s.name == "notifier_events_total"]
            assert sum(taken) > 0
    finally:
        for app in apps:
            await app.stop()
