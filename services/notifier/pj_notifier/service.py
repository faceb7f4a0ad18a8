"""The notifier's work: apply each event to the approval it concerns and send what it calls for,
each notification once; send the reminders and escalations that fall due.

At least once, each sent once: an event's state change and its notices are recorded in one
transaction, then each (channel, recipient) is claimed, sent and recorded in turn, all under the
approval's lock. A redelivered event (a crash, a retry after a failure) sends only what is not
recorded yet. A claim left unfinished (the process died mid-send, or no answer came) means the
notification may have gone out: a Slack channel message is then looked for by its metadata before it
is posted again; a direct message (whose history the bot does not read) is not posted again (at most
once), and an email or webhook is sent again (a webhook with the same Idempotency-Key, an email with
the same Message-ID).
"""

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from psycopg_pool import AsyncConnectionPool

from pj_common.messages import ApprovalEvent, ApprovalStatus
from pj_common.transport import Retryable

from . import render, store
from .catalog import ActionInfo, NotifyCatalog, Route
from .channels import DeliveryFailed, SlackPost
from .channels.email import EmailSender
from .channels.slack import SlackClient
from .channels.webhook import WebhookSender
from .domain import Notice, NoticeKind, Timing, Tracked, apply_event, due_nudges, is_quiet
from .metrics import NotifierMetrics
from .recipients import Target, slack_channel, targets_of
from .settings import NotifierSettings

log = logging.getLogger("pj.notifier")

# The headline of an approval's Slack message, updated in place: what the approval is now.
CARD_KIND: dict[ApprovalStatus, NoticeKind] = {
    ApprovalStatus.PENDING: NoticeKind.PENDING,
    ApprovalStatus.APPROVED: NoticeKind.APPROVED,
    ApprovalStatus.DISPATCHING: NoticeKind.APPROVED,
    ApprovalStatus.REJECTED: NoticeKind.REJECTED,
    ApprovalStatus.DISPATCHED: NoticeKind.DISPATCHED,
    ApprovalStatus.DISPATCH_FAILED: NoticeKind.DISPATCH_FAILED,
    ApprovalStatus.EXPIRED: NoticeKind.EXPIRED,
}
NUDGES = (NoticeKind.REMINDER, NoticeKind.ESCALATION)


@dataclass(frozen=True)
class Channels:
    slack: SlackClient
    email: EmailSender
    webhook: WebhookSender


@dataclass
class _Round:
    """One event's (or nudge's) deliveries: what is done already and what failed for now."""

    key: str
    state: Tracked
    action: ActionInfo
    route: Route
    done: set[tuple[str, str]]
    unsure: set[tuple[str, str]]  # claimed by an attempt that never finished: it may have been sent
    cards: dict[str, tuple[str, str]]
    retry: list[DeliveryFailed] = field(default_factory=list)
    tried: set[tuple[str, str]] = field(default_factory=set)  # in this round, whatever came of it


class Notifier:
    def __init__(self, pool: AsyncConnectionPool[Any], catalog: NotifyCatalog, channels: Channels, *,
                 metrics: NotifierMetrics, settings: NotifierSettings,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._pool = pool
        self._catalog = catalog
        self._channels = channels
        self._metrics = metrics
        self._console_url = settings.console_url
        self._pending_ttl_s = settings.pending_ttl_s
        self._dispatch_window_s = settings.dispatch_window_s
        self._retention = timedelta(seconds=settings.notifier_retention_s)
        self._now = now

    def use_catalog(self, catalog: NotifyCatalog) -> None:
        """Read notification settings from `catalog` from now on (a reload)."""
        self._catalog = catalog

    # ------------------------------------------------------------ events

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        """The events-queue handler: an invalid event is dead-lettered by the transport."""
        await self.handle_event(ApprovalEvent.model_validate_json(message.body))

    async def handle_event(self, event: ApprovalEvent) -> None:
        """Apply the event once, then send what it calls for that is not sent yet."""
        action = self._catalog.action(event.action_id)
        route = self._catalog.route(event.tenant_id, event.action_id)
        async with self._pool.connection() as conn, store.approval_lock(conn, event.approval_id):
            async with conn.transaction():
                notices = await store.notices_of_event(conn, event.event_id)
                state = await store.get_tracked(conn, event.approval_id)
                seen = notices is not None
                if notices is None or state is None:
                    timing = Timing.of(action, route, pending_ttl_s=self._pending_ttl_s,
                                       dispatch_window_s=self._dispatch_window_s)
                    state, notices = apply_event(state, event, action, timing=timing)
                    await store.save_tracked(conn, state)
                    await store.record_event(conn, event.event_id, approval_id=event.approval_id, notices=notices)
            self._metrics.events.labels(event.type, "redelivered" if seen else "new").inc()
            log.info("event %s", event.type, extra={"scope": "notifier.event", "approvalId": event.approval_id,
                                                    "eventId": event.event_id, "notices": [n.kind for n in notices],
                                                    "redelivered": seen})
            run = await self._round(conn, event.event_id, state, action=action, route=route)
            await self._send(conn, run, notices)
            await self._update_cards(conn, run)
        _raise_if_retry(run)

    # ------------------------------------------------------------ reminders and escalations

    async def scan_reminders(self, batch: int = 200) -> bool:
        """Send the reminders and escalations due now (one Periodic step)."""
        now = self._now()
        async with self._pool.connection() as conn:
            due = await store.due_for_nudge(conn, now, batch)
        for approval_id in due:
            await self._nudge(approval_id, now)
        async with self._pool.connection() as conn:
            purged = await store.purge_finished(conn, now - self._retention, batch)
        if purged:
            log.info("forgot %d finished approvals", purged, extra={"scope": "notifier.purged", "approvals": purged})
        self._metrics.last_scan.set(now.timestamp())
        return False  # the rest (quiet hours, failures) waits for the next interval

    async def _nudge(self, approval_id: str, now: datetime) -> None:
        async with self._pool.connection() as conn, store.approval_lock(conn, approval_id):
            state = await store.get_tracked(conn, approval_id)  # read again under the lock: it may have moved on
            if state is None:
                return
            route = self._catalog.route(state.tenant_id, state.action_id)
            if is_quiet(route.quiet_hours, now):
                return
            action = self._catalog.action(state.action_id)
            for notice in due_nudges(state, now):
                key = f"{notice.kind.value}:{approval_id}:{notice.stage_index}"
                run = await self._round(conn, key, state, action=action, route=route)
                await self._send(conn, run, [notice])
                if run.retry:  # tried again at the next scan; what went out is recorded
                    continue
                await store.nudge_done(conn, approval_id, kind=notice.kind, stage_index=notice.stage_index)
                (self._metrics.reminders if notice.kind is NoticeKind.REMINDER else self._metrics.escalations).inc()
                log.info("%s sent", notice.kind.value, extra={
                    "scope": f"notifier.{notice.kind.value}", "approvalId": approval_id,
                    "stage": notice.stage_index})

    # ------------------------------------------------------------ delivery

    async def _round(self, conn: store.Connection, key: str, state: Tracked, *, action: ActionInfo,
                     route: Route) -> _Round:
        done, unsure = await store.delivered(conn, key)
        return _Round(key=key, state=state, action=action, route=route, done=done, unsure=unsure,
                      cards=await store.slack_messages(conn, state.approval_id))

    async def _send(self, conn: store.Connection, run: _Round, notices: Sequence[Notice]) -> None:
        for notice in notices:
            for target in targets_of(notice, run.state, action=run.action, route=run.route):
                if (target.channel, target.recipient) not in run.done:
                    await self._deliver(conn, run, notice.kind, target=target)

    async def _update_cards(self, conn: store.Connection, run: _Round) -> None:
        """Every Slack message of the approval shows what it is now: updated in place, once per event.

        The approvers' channel has one message for every approval, posted by whichever event comes
        first: with several notifiers, a decision may be handled before the request's creation."""
        kind = CARD_KIND[run.state.status]
        recipients = set(run.cards)
        if "slack" in run.route.channels and run.route.slack.channel:
            recipients.add(slack_channel(run.route.slack.channel))
        for recipient in sorted(recipients):
            if ("slack", recipient) not in run.done | run.tried:
                await self._deliver(conn, run, kind, target=Target("slack", recipient))

    async def _deliver(self, conn: store.Connection, run: _Round, kind: NoticeKind, *, target: Target) -> None:
        """Claim, send, record; a failure that surely sent nothing drops the claim, one that may have
        sent keeps it (the next attempt checks first)."""
        view = render.View(run.state, run.action, self._console_url)
        run.tried.add((target.channel, target.recipient))
        unsure = (target.channel, target.recipient) in run.unsure
        delivery = store.Delivery(run.key, target.channel, target.recipient, run.state.approval_id, kind.value,
                                  "sending")
        if not unsure:
            await store.record_delivery(conn, delivery)
        try:
            await self._send_one(conn, run, kind, target=target, view=view, unsure=unsure)
        except DeliveryFailed as exc:
            self._failed(run, target, kind=kind, exc=exc)
            if exc.permanent:
                await store.record_delivery(conn, replace(delivery, outcome="failed", detail=exc.reason))
            elif not (exc.unsure or unsure):
                await store.release_delivery(conn, delivery)
            return
        await store.record_delivery(conn, replace(delivery, outcome="sent"))
        run.done.add((target.channel, target.recipient))
        self._metrics.sent.labels(target.channel).inc()

    async def _send_one(self, conn: store.Connection, run: _Round, kind: NoticeKind, *, target: Target,
                        view: render.View, unsure: bool) -> None:
        if target.channel == "slack":
            await self._slack(conn, run, kind, recipient=target.recipient, view=view, unsure=unsure)
        elif target.channel == "email":
            await self._channels.email.send(target.recipient, subject=render.subject(kind, view),
                                            body=render.email_body(kind, view),
                                            message_id=f"{run.key}.{_digest(target.recipient)}")
        else:
            await self._channels.webhook.post(target.recipient, render.webhook_body(kind, view, event_id=run.key),
                                              idempotency_key=f"{run.key}:{target.recipient}")

    async def _slack(self, conn: store.Connection, run: _Round, kind: NoticeKind, *, recipient: str,
                     view: render.View, unsure: bool) -> None:
        """A reminder or escalation is a new message (in the approval's thread where there is one, so it
        notifies); anything else updates the approval's message for this recipient, or posts it."""
        card = run.cards.get(recipient)
        card_kind = kind if kind in NUDGES else CARD_KIND[run.state.status]
        text, blocks = render.slack_text(card_kind, view), render.slack_blocks(card_kind, view)
        slack = self._channels.slack
        if card is not None and kind not in NUDGES:
            await slack.update(SlackPost(channel=card[0], ts=card[1]), text=text, blocks=blocks)  # the same twice
            return
        key = f"{run.key}|{recipient}"
        post = await self._earlier_post(recipient, key) if unsure else None
        if post is None:
            channel = card[0] if card is not None else await self._slack_address(run.route, recipient)
            post = await slack.post(channel, text=text, blocks=blocks, key=key,
                                    thread_ts=card[1] if card is not None else None)
        if card is None and kind not in NUDGES:
            await store.save_slack_message(conn, run.state.approval_id, recipient, slack_channel=post.channel,
                                           ts=post.ts)
            run.cards[recipient] = (post.channel, post.ts)

    async def _earlier_post(self, recipient: str, key: str) -> SlackPost | None:
        """The message an unfinished attempt may have posted: looked for in a channel's history; a direct
        message cannot be looked for, so it is given up rather than posted twice."""
        if not recipient.startswith("#"):
            raise DeliveryFailed("a direct message may have been posted by an attempt that did not finish; "
                                 "not posted again", permanent=True)
        return await self._channels.slack.find_post(recipient[1:], key)

    async def _slack_address(self, route: Route, recipient: str) -> str:
        """`#C123` -> the channel id; `@alice` -> alice's Slack user id (configured, or found by email)."""
        if recipient.startswith("#"):
            return recipient[1:]
        person = route.person(recipient[1:])
        if person.slack:
            return person.slack
        if person.email:
            return await self._channels.slack.user_id(person.email)
        raise DeliveryFailed(f"no Slack user or email address for {recipient[1:]!r}", permanent=True)

    def _failed(self, run: _Round, target: Target, *, kind: NoticeKind, exc: DeliveryFailed) -> None:
        self._metrics.failed.labels(target.channel, "permanent" if exc.permanent else "retry").inc()
        log.warning("notification not delivered%s: %s", "" if exc.permanent else " (tried again)", exc.reason, extra={
            "scope": "notifier.delivery_failed", "approvalId": run.state.approval_id, "channel": target.channel,
            "notice": kind.value, "key": run.key, "permanent": exc.permanent,
            "mayHaveBeenSent": exc.unsure or (target.channel, target.recipient) in run.unsure})
        if not exc.permanent:
            run.retry.append(exc)


def _digest(text: str) -> str:
    """A short stable digest (Python's hash() differs between processes)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _raise_if_retry(run: _Round) -> None:
    """Some notifications failed for now: the event comes back later and sends only those."""
    if run.retry:
        hints = [e.retry_after for e in run.retry if e.retry_after is not None]
        raise Retryable(f"{len(run.retry)} notification(s) not delivered yet: {run.retry[0].reason}",
                        retry_after=max(hints) if hints else None)
