"""The notifier's rounds against the real PostgreSQL, the local Slack API, SMTP server and webhook sink."""

from collections.abc import AsyncIterator
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import yaml
from psycopg_pool import AsyncConnectionPool

from pj_common.messages import ApprovalStatus
from pj_common.transport import Retryable
from pj_notifier import store
from pj_notifier.catalog import load_catalog, parse_catalog
from pj_notifier.channels.email import EmailSender
from pj_notifier.channels.slack import SlackClient
from pj_notifier.channels.webhook import WebhookSender
from pj_notifier.metrics import NotifierMetrics
from pj_notifier.service import Channels, Notifier
from pj_notifier.settings import NotifierSettings
from tests.integration.notifier.conftest import CHANNEL, SLACK_TOKEN, WEBHOOK_SECRET, approval_event, created
from tests.support.slack_api import SlackState
from tests.support.smtp_server import SmtpState
from tests.support.webhook_sink import SinkState

S = ApprovalStatus


def subject(message: EmailMessage) -> str:
    """The Subject, unfolded (a long one is folded onto the next line, which the parser keeps a space of)."""
    return str(message["Subject"]).strip()


def buttons(message: dict[str, Any]) -> set[str]:
    return {e["action_id"] for b in message.get("blocks", []) if b["type"] == "actions" for e in b["elements"]}


async def test_a_new_request_goes_to_slack_email_and_webhook_once(
        notifier: Notifier, pool: AsyncConnectionPool[Any], slack: SlackState, smtp: SmtpState, sink: SinkState,
        approval_id: str) -> None:
    event = created(approval_id)
    await notifier.handle_event(event)
    [posted] = slack.posted(CHANNEL)
    assert buttons(posted) == {"pj_approve", "pj_reject", "pj_open"}
    assert approval_id in str(posted["blocks"]) and "erin" in posted["text"]
    assert len(slack.posted("DU0ALICE")) == 1 and len(slack.posted("DU0BOB")) == 1, "DMs to each approver"
    assert slack.posted("DU0ERIN") == [], "the requester is not asked to approve"
    assert [c.body["email"] for c in slack.calls("users.lookupByEmail")] == ["bob@example.com"]
    [to_alice] = smtp.to("alice@example.com")
    body = to_alice.get_content()
    assert "erin asked for notify.webhook" in body and f"https://gate.example/console/approvals/{approval_id}" in body
    assert "post (webhook.post)" in body and "Expires:" in body
    [hook] = sink.deliveries
    assert hook.signature_ok and hook.body["notice"] == "pending" and hook.body["approvalId"] == approval_id

    await notifier.handle_event(event)  # the same event again (a redelivery)
    assert len(slack.calls("chat.postMessage")) == 3 and len(smtp.messages) == 2 and len(sink.deliveries) == 1
    async with pool.connection() as conn:
        deliveries = await store.deliveries_of(conn, approval_id)
    assert {(d.channel, d.recipient) for d in deliveries} == {
        ("slack", f"#{CHANNEL}"), ("slack", "@alice"), ("slack", "@bob"), ("email", "alice@example.com"),
        ("email", "bob@example.com"), ("webhook", sink.url)}
    assert {d.outcome for d in deliveries} == {"sent"}


async def test_the_slack_message_is_updated_in_place_as_the_approval_moves_on(
        notifier: Notifier, slack: SlackState, smtp: SmtpState, approval_id: str) -> None:
    first = created(approval_id)
    await notifier.handle_event(first)
    at = first.occurred_at
    for minutes, (type_, to) in enumerate([("approval.decided", S.APPROVED),
                                           ("approval.dispatch.started", S.DISPATCHING),
                                           ("approval.dispatch.completed", S.DISPATCHED)], start=1):
        await notifier.handle_event(approval_event(type_, to, approval_id=approval_id,
                                                   at=at + timedelta(minutes=minutes)))
    [message] = slack.posted(CHANNEL)
    assert message["edits"] == 3, "one update per event, no new message"
    assert buttons(message) == {"pj_open"} and "Dispatched" in message["text"]
    assert "*Decided by:* alice" in str(message["blocks"])
    [to_erin] = slack.posted("DU0ERIN")  # the requester's own message, posted on approval, then updated
    assert to_erin["edits"] == 2 and "Dispatched" in to_erin["text"]
    subjects = [subject(m) for m in smtp.to("erin@example.com")]
    assert subjects == ["[approval] Approved: notify.webhook requested by erin",
                        "[approval] Dispatched: notify.webhook requested by erin"]


async def test_a_failed_send_is_retried_alone(notifier: Notifier, slack: SlackState, smtp: SmtpState,
                                              approval_id: str) -> None:
    slack.fail_next(1, status=503)  # the first Slack call: the channel post
    with pytest.raises(Retryable):
        await notifier.handle_event(event := created(approval_id))
    assert slack.posted(CHANNEL) == [] and len(smtp.messages) == 2
    await notifier.handle_event(event)
    assert len(slack.posted(CHANNEL)) == 1 and len(smtp.messages) == 2, "only what failed is sent again"


async def test_a_permanent_failure_is_recorded_and_not_retried(
        notifier: Notifier, pool: AsyncConnectionPool[Any], slack: SlackState, approval_id: str) -> None:
    slack.error_next("channel_not_found")
    await notifier.handle_event(event := created(approval_id))  # no Retryable: nothing to gain by trying again
    await notifier.handle_event(event)
    assert slack.posted(CHANNEL) == []
    async with pool.connection() as conn:
        failed = [d for d in await store.deliveries_of(conn, approval_id) if d.outcome == "failed"]
    assert [(d.recipient, d.detail) for d in failed] == [(f"#{CHANNEL}", "slack chat.postMessage: channel_not_found")]


async def test_a_reminder_then_an_escalation_once_per_stage_never_after_pending(
        notifier: Notifier, slack: SlackState, smtp: SmtpState, approval_id: str) -> None:
    clock = notifier._now  # the fixture's Clock
    event = created(approval_id, action_id="notify.quick", at=clock())  # remind after 1 s, escalate after 2 s
    await notifier.handle_event(event)
    await notifier.scan_reminders()
    assert len(smtp.messages) == 2, "nothing due yet"
    clock.now += timedelta(seconds=1.5)  # type: ignore[attr-defined]
    await notifier.scan_reminders()
    reminders = [m for m in smtp.messages if subject(m).startswith("[approval] Reminder")]
    assert sorted(m["To"] for m in reminders) == ["alice@example.com", "bob@example.com"]
    card = slack.posted(CHANNEL)[0]
    [thread] = [m for m in slack.calls("chat.postMessage") if m.body.get("thread_ts") == card["ts"]]
    assert "Reminder" in thread.body["text"]
    assert smtp.to("dave@example.com") == []
    clock.now += timedelta(seconds=1)  # type: ignore[attr-defined]
    await notifier.scan_reminders()
    await notifier.scan_reminders()
    [escalation] = smtp.to("dave@example.com")
    assert subject(escalation).startswith("[approval] Escalation")
    assert len(slack.posted("DU0DAVE")) == 1
    assert len([m for m in smtp.messages if subject(m).startswith("[approval] Reminder")]) == 2, "once per stage"

    other = created(approval_id := approval_id[:-4] + "ffff", action_id="notify.quick", at=clock())
    await notifier.handle_event(other)
    await notifier.handle_event(approval_event("approval.decided", S.APPROVED, approval_id=approval_id,
                                               action_id="notify.quick", at=clock()))
    clock.now += timedelta(seconds=5)  # type: ignore[attr-defined]
    sent = len(smtp.messages)
    await notifier.scan_reminders()
    assert len(smtp.messages) == sent, "no reminder once it left pending"


@pytest.fixture
async def impatient(pool: AsyncConnectionPool[Any], settings: NotifierSettings) -> AsyncIterator[Notifier]:
    """A notifier whose Slack requests give up after 0.3 s: a slow answer leaves the outcome unknown."""
    async with httpx.AsyncClient(timeout=0.3) as http:
        channels = Channels(slack=SlackClient(http, base_url=settings.slack_api_url, token=SLACK_TOKEN),
                            email=EmailSender(settings), webhook=WebhookSender(http, secret=WEBHOOK_SECRET))
        yield Notifier(pool, load_catalog(settings.catalog), channels, metrics=NotifierMetrics(), settings=settings)


async def test_a_post_whose_answer_never_came_is_found_not_posted_twice(
        impatient: Notifier, pool: AsyncConnectionPool[Any], slack: SlackState, approval_id: str) -> None:
    slack.slow_next(1, delay_s=1.0)  # the channel post goes through, its answer comes too late
    with pytest.raises(Retryable):
        await impatient.handle_event(event := created(approval_id))
    assert len(slack.posted(CHANNEL)) == 1
    async with pool.connection() as conn:
        [claim] = [d for d in await store.deliveries_of(conn, approval_id) if d.recipient == f"#{CHANNEL}"]
    assert claim.outcome == "sending", "the attempt's outcome is unknown"
    await impatient.handle_event(event)  # the event again: the message is found by its metadata
    assert len(slack.posted(CHANNEL)) == 1
    assert slack.calls("conversations.history")
    await impatient.handle_event(approval_event("approval.decided", S.REJECTED, approval_id=approval_id,
                                                at=event.occurred_at + timedelta(minutes=1)))
    [message] = slack.posted(CHANNEL)
    assert message.get("edits") == 1 and "Rejected" in message["text"], "the found message is the one updated"


async def test_a_direct_message_of_unknown_outcome_is_not_posted_again(
        impatient: Notifier, pool: AsyncConnectionPool[Any], slack: SlackState, approval_id: str) -> None:
    slack.pass_next(1)  # the channel post
    slack.slow_next(1, delay_s=1.0)  # alice's direct message (the targets go in order)
    with pytest.raises(Retryable):
        await impatient.handle_event(event := created(approval_id))
    await impatient.handle_event(event)
    assert len(slack.posted("DU0ALICE")) == 1, "at most once: the bot cannot read its DM history"
    async with pool.connection() as conn:
        [dm] = [d for d in await store.deliveries_of(conn, approval_id) if d.recipient == "@alice"]
    assert dm.outcome == "failed" and "not posted again" in (dm.detail or "")


async def test_approvals_that_ended_long_ago_are_forgotten(
        notifier: Notifier, pool: AsyncConnectionPool[Any], approval_id: str) -> None:
    clock = notifier._now  # the fixture's Clock
    ended, waiting = approval_id, approval_id[:-4] + "eeee"
    await notifier.handle_event(created(ended, at=clock()))
    await notifier.handle_event(approval_event("approval.decided", S.REJECTED, approval_id=ended, at=clock()))
    await notifier.handle_event(created(waiting, at=clock()))
    await notifier.scan_reminders()
    async with pool.connection() as conn:
        assert await store.get_tracked(conn, ended) is not None, "kept within the retention"
    clock.now += timedelta(days=31)  # type: ignore[attr-defined]
    await notifier.scan_reminders()
    async with pool.connection() as conn:
        assert await store.get_tracked(conn, ended) is None and await store.deliveries_of(conn, ended) == []
        assert await store.slack_messages(conn, ended) == {}
        assert await store.get_tracked(conn, waiting) is not None, "a pending approval is never forgotten"


async def test_no_reminder_in_quiet_hours_it_waits_for_their_end(
        notifier: Notifier, settings: NotifierSettings, smtp: SmtpState, approval_id: str) -> None:
    clock = notifier._now  # the fixture's Clock
    text = settings.catalog.read_text()  # type: ignore[union-attr]
    quiet_all_day = text.replace("      escalate_to: leads\n", "      escalate_to: leads\n      quiet_hours: "
                                 "{start: '00:00', end: '23:59:59', timezone: Europe/Berlin}\n")
    notifier.use_catalog(parse_catalog(yaml.safe_load(quiet_all_day)))
    await notifier.handle_event(created(approval_id, action_id="notify.quick", at=clock()))
    clock.now = clock.now.replace(hour=12) + timedelta(days=1)  # type: ignore[attr-defined]  # noon, Berlin: quiet
    await notifier.scan_reminders()
    assert [subject(m) for m in smtp.messages if "Reminder" in subject(m)] == []
    notifier.use_catalog(parse_catalog(yaml.safe_load(text)))  # quiet hours over
    await notifier.scan_reminders()
    assert len([m for m in smtp.messages if "Reminder" in subject(m)]) == 2


async def test_a_decision_handled_before_the_request_still_gets_its_one_channel_message(
        notifier: Notifier, slack: SlackState, approval_id: str) -> None:
    first = created(approval_id)
    await notifier.handle_event(approval_event("approval.decided", S.APPROVED, approval_id=approval_id,
                                               at=first.occurred_at + timedelta(seconds=1)))
    await notifier.handle_event(first)  # the creation, handled late (another notifier process was slower)
    [message] = slack.posted(CHANNEL)
    assert "Approved" in message["text"] and buttons(message) == {"pj_open"}
    assert slack.posted("DU0ALICE") == [], "nobody is asked to approve what is approved"
