"""All of the notifier's SQL: its own tables (notifier_*), their migrations, and every statement on them.

The notifier shares the approvals database but never reads approvals' tables: what it knows of an
approval comes from the events. One advisory lock per approval serializes the notifier processes'
work on it (an event, a reminder), so two never post the first Slack message of one approval at once.
"""

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import class_row

from pj_common.messages import ApprovalStatus

from .domain import Notice, NoticeKind, Tracked

# Each entry runs once, in order, in its own transaction; applied versions are recorded.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE notifier_approvals (
        approval_id text PRIMARY KEY,
        tenant_id text NOT NULL,
        action_id text NOT NULL,
        status text NOT NULL,
        requester text,
        created_at timestamptz,
        expires_at timestamptz,
        stage_index int NOT NULL DEFAULT 0,
        stage_votes int NOT NULL DEFAULT 0,
        decided_by text[] NOT NULL DEFAULT '{}',
        last_note text,
        updated_at timestamptz NOT NULL,
        remind_at timestamptz,
        escalate_at timestamptz
    );
    -- The reminder scan reads only pending approvals with a nudge still to come.
    CREATE INDEX notifier_approvals_due ON notifier_approvals (LEAST(remind_at, escalate_at))
        WHERE status = 'pending';
    -- Events applied to notifier_approvals, with the notices each called for: a redelivered event
    -- sends what it has not sent yet and never counts a decision twice.
    CREATE TABLE notifier_events (
        event_id text PRIMARY KEY,
        approval_id text NOT NULL,
        notices jsonb NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now()
    );
    -- One row per notification sent (or given up on): each is sent once.
    CREATE TABLE notifier_deliveries (
        event_id text NOT NULL,
        channel text NOT NULL,
        recipient text NOT NULL,
        approval_id text NOT NULL,
        notice text NOT NULL,
        outcome text NOT NULL CHECK (outcome IN ('sent', 'failed')),
        detail text,
        at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (event_id, channel, recipient)
    );
    -- The Slack message of each approval per recipient, updated in place as the approval moves on.
    CREATE TABLE notifier_slack_messages (
        approval_id text NOT NULL,
        recipient text NOT NULL,
        slack_channel text NOT NULL,
        ts text NOT NULL,
        PRIMARY KEY (approval_id, recipient)
    );
    """,
    # A notification is claimed ('sending') before it is sent and finished after: a claim found later
    # (its process died, or the answer never came) says the notification may have gone out.
    """
    ALTER TABLE notifier_deliveries DROP CONSTRAINT notifier_deliveries_outcome_check,
        ADD CONSTRAINT notifier_deliveries_outcome_check CHECK (outcome IN ('sending', 'sent', 'failed'));
    """,
    # What an approval's rows are found (and purged) by.
    """
    CREATE INDEX notifier_events_approval ON notifier_events (approval_id);
    CREATE INDEX notifier_deliveries_approval ON notifier_deliveries (approval_id);
    CREATE INDEX notifier_approvals_finished ON notifier_approvals (updated_at)
        WHERE status IN ('rejected', 'dispatched', 'dispatch_failed', 'expired');
    """,
    # The plan hash the events carry, shown in every message.
    """
    ALTER TABLE notifier_approvals ADD COLUMN plan_hash text;
    """,
)


# What the rest of the notifier names a connection by (only this module imports psycopg).
Connection = AsyncConnection[Any]


async def migrate_database(url: str) -> int:
    """Connect to `url` and apply the notifier's migrations (`python -m pj_notifier migrate`)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await migrate(conn)


async def migrate(conn: AsyncConnection[Any]) -> int:
    """Apply the migrations not applied yet (several processes may start at once); the number applied."""
    applied = 0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('pj_notifier.migrate', 0))")
        await conn.execute("CREATE TABLE IF NOT EXISTS notifier_migrations "
                           "(version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM notifier_migrations")
        row = await cursor.fetchone()
        done = int(row[0]) if row else 0
        for version, statement in enumerate(MIGRATIONS[done:], start=done + 1):
            await conn.execute(statement)
            await conn.execute("INSERT INTO notifier_migrations (version) VALUES (%s)", (version,))
            applied += 1
    return applied


@asynccontextmanager
async def approval_lock(conn: AsyncConnection[Any], approval_id: str) -> AsyncIterator[None]:
    """Hold this approval's lock (session-level: it goes with the connection if the process dies)."""
    await conn.execute("SELECT pg_advisory_lock(hashtextextended('pj_notifier.' || %s, 0))", (approval_id,))
    try:
        yield
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended('pj_notifier.' || %s, 0))",
                               (approval_id,))
        except BaseException:
            # A lock left on a pooled connection would block this approval for good: end the session
            # instead (the pool replaces a closed connection), which releases it.
            await conn.close()
            raise


@dataclass
class _TrackedRow:
    approval_id: str
    tenant_id: str
    action_id: str
    status: str
    requester: str | None
    created_at: datetime | None
    expires_at: datetime | None
    stage_index: int
    stage_votes: int
    decided_by: list[str]
    last_note: str | None
    updated_at: datetime
    remind_at: datetime | None
    escalate_at: datetime | None
    plan_hash: str | None

    def tracked(self) -> Tracked:
        return Tracked(approval_id=self.approval_id, tenant_id=self.tenant_id, action_id=self.action_id,
                       status=ApprovalStatus(self.status), requester=self.requester, created_at=self.created_at,
                       expires_at=self.expires_at, stage_index=self.stage_index, stage_votes=self.stage_votes,
                       decided_by=tuple(self.decided_by), last_note=self.last_note, updated_at=self.updated_at,
                       remind_at=self.remind_at, escalate_at=self.escalate_at, plan_hash=self.plan_hash)


_COLUMNS = ("approval_id, tenant_id, action_id, status, requester, created_at, expires_at, stage_index, "
            "stage_votes, decided_by, last_note, updated_at, remind_at, escalate_at, plan_hash")


async def get_tracked(conn: AsyncConnection[Any], approval_id: str) -> Tracked | None:
    async with conn.cursor(row_factory=class_row(_TrackedRow)) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM notifier_approvals WHERE approval_id = %s", (approval_id,))
        row = await cur.fetchone()
    return row.tracked() if row else None


async def save_tracked(conn: AsyncConnection[Any], t: Tracked) -> None:
    await conn.execute(
        f"INSERT INTO notifier_approvals ({_COLUMNS}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (approval_id) DO UPDATE SET status = excluded.status, requester = excluded.requester, "
        "created_at = excluded.created_at, expires_at = excluded.expires_at, stage_index = excluded.stage_index, "
        "stage_votes = excluded.stage_votes, decided_by = excluded.decided_by, last_note = excluded.last_note, "
        "updated_at = excluded.updated_at, remind_at = excluded.remind_at, escalate_at = excluded.escalate_at, "
        "plan_hash = excluded.plan_hash",
        (t.approval_id, t.tenant_id, t.action_id, t.status.value, t.requester, t.created_at, t.expires_at,
         t.stage_index, t.stage_votes, list(t.decided_by), t.last_note, t.updated_at, t.remind_at, t.escalate_at,
         t.plan_hash))


async def notices_of_event(conn: AsyncConnection[Any], event_id: str) -> list[Notice] | None:
    """The notices an event already applied called for, or None if it was never applied."""
    cursor = await conn.execute("SELECT notices FROM notifier_events WHERE event_id = %s", (event_id,))
    row = await cursor.fetchone()
    if row is None:
        return None
    return [Notice(NoticeKind(n["kind"]), int(n["stageIndex"])) for n in row[0]]


async def record_event(conn: AsyncConnection[Any], event_id: str, *, approval_id: str,
                       notices: Sequence[Notice]) -> None:
    body = json.dumps([{"kind": n.kind.value, "stageIndex": n.stage_index} for n in notices])
    await conn.execute("INSERT INTO notifier_events (event_id, approval_id, notices) VALUES (%s, %s, %s)",
                       (event_id, approval_id, body))


async def delivered(conn: AsyncConnection[Any], event_id: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(channel, recipient) pairs of this event: those done (sent, or given up on for good), and those
    claimed by an attempt that never finished (it may have sent them)."""
    cursor = await conn.execute("SELECT channel, recipient, outcome FROM notifier_deliveries WHERE event_id = %s",
                                (event_id,))
    done: set[tuple[str, str]] = set()
    unsure: set[tuple[str, str]] = set()
    for channel, recipient, outcome in await cursor.fetchall():
        (unsure if outcome == "sending" else done).add((str(channel), str(recipient)))
    return done, unsure


@dataclass(frozen=True)
class Delivery:
    event_id: str
    channel: str
    recipient: str
    approval_id: str
    notice: str
    outcome: str  # sent | failed
    detail: str | None = None


async def record_delivery(conn: AsyncConnection[Any], d: Delivery) -> None:
    """Claim a delivery (`sending`), or record how it ended (`sent`, `failed`) over its claim."""
    await conn.execute(
        "INSERT INTO notifier_deliveries (event_id, channel, recipient, approval_id, notice, outcome, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id, channel, recipient) DO UPDATE "
        "SET outcome = excluded.outcome, detail = excluded.detail, at = now() "
        "WHERE notifier_deliveries.outcome = 'sending'",
        (d.event_id, d.channel, d.recipient, d.approval_id, d.notice, d.outcome, d.detail))


async def release_delivery(conn: AsyncConnection[Any], d: Delivery) -> None:
    """Drop a claim whose attempt surely sent nothing, so the next attempt sends without doubt."""
    await conn.execute("DELETE FROM notifier_deliveries WHERE event_id = %s AND channel = %s AND recipient = %s "
                       "AND outcome = 'sending'", (d.event_id, d.channel, d.recipient))


async def deliveries_of(conn: AsyncConnection[Any], approval_id: str) -> list[Delivery]:
    """Every delivery of one approval, oldest first (for tests and investigations)."""
    async with conn.cursor(row_factory=class_row(Delivery)) as cur:
        await cur.execute("SELECT event_id, channel, recipient, approval_id, notice, outcome, detail "
                          "FROM notifier_deliveries WHERE approval_id = %s ORDER BY at, event_id", (approval_id,))
        return await cur.fetchall()


async def slack_messages(conn: AsyncConnection[Any], approval_id: str) -> dict[str, tuple[str, str]]:
    """recipient -> (Slack channel id, ts) of the approval's messages."""
    cursor = await conn.execute("SELECT recipient, slack_channel, ts FROM notifier_slack_messages "
                                "WHERE approval_id = %s", (approval_id,))
    return {str(r): (str(c), str(ts)) for r, c, ts in await cursor.fetchall()}


async def save_slack_message(conn: AsyncConnection[Any], approval_id: str, recipient: str, *,
                             slack_channel: str, ts: str) -> None:
    await conn.execute("INSERT INTO notifier_slack_messages (approval_id, recipient, slack_channel, ts) "
                       "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", (approval_id, recipient, slack_channel, ts))


async def due_for_nudge(conn: AsyncConnection[Any], now: datetime, batch: int) -> list[str]:
    """Pending approvals whose reminder or escalation time has come, the longest waiting first."""
    cursor = await conn.execute(
        "SELECT approval_id FROM notifier_approvals WHERE status = 'pending' "
        "AND LEAST(remind_at, escalate_at) <= %s ORDER BY LEAST(remind_at, escalate_at) LIMIT %s", (now, batch))
    return [str(r[0]) for r in await cursor.fetchall()]


async def purge_finished(conn: AsyncConnection[Any], before: datetime, batch: int) -> int:
    """Forget approvals that ended before `before`, with their events, deliveries and Slack messages; the
    number forgotten. (An event of one arriving later still finds its record: only old ones go.)"""
    cursor = await conn.execute(
        "WITH gone AS (DELETE FROM notifier_approvals WHERE approval_id IN ("
        "    SELECT approval_id FROM notifier_approvals"
        "     WHERE status IN ('rejected', 'dispatched', 'dispatch_failed', 'expired') AND updated_at < %s"
        "     LIMIT %s) RETURNING approval_id),"
        " events AS (DELETE FROM notifier_events WHERE approval_id IN (SELECT approval_id FROM gone)),"
        " sent AS (DELETE FROM notifier_deliveries WHERE approval_id IN (SELECT approval_id FROM gone)),"
        " slack AS (DELETE FROM notifier_slack_messages WHERE approval_id IN (SELECT approval_id FROM gone))"
        " SELECT count(*) FROM gone", (before, batch))
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def nudge_done(conn: AsyncConnection[Any], approval_id: str, *, kind: NoticeKind, stage_index: int) -> None:
    """The stage's reminder (or escalation) went out: never again for this stage."""
    column = "remind_at" if kind is NoticeKind.REMINDER else "escalate_at"
    await conn.execute(f"UPDATE notifier_approvals SET {column} = NULL "  # column: one of two literals above
                       "WHERE approval_id = %s AND stage_index = %s", (approval_id, stage_index))
