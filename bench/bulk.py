"""Many approvals at once, straight into the bench database, for the 100,000-row scenarios.

Making 100,000 approvals through the API would take minutes on 2 cores, so the bench makes one through
the API (a real row with a real plan) and copies it in SQL: every column of the template, with a new
id and request id, the status, times and expiry each scenario needs, and copies of the template's
rows in the tables that hang off an approval (steps, decisions), but not its audit events: the event
relay would publish every copied one. The columns are read from the catalog, so a migration that adds
one does not break this.
(SQL lives in store.py for the services; tests/unit/test_architecture.py checks services/approvals
only, and the bench is a client of the database here, not part of the system.)
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

BATCH = 20_000  # rows per INSERT ... SELECT, so no single statement holds the table for long


async def _columns(conn: psycopg.AsyncConnection[Any], table: str) -> list[str]:
    cur = await conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = %s AND is_generated = 'NEVER' AND identity_generation IS NULL ORDER BY ordinal_position",
        (table,))
    return [str(row[0]) for row in await cur.fetchall()]


async def _child_tables(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Tables with an approval_id, but approval_events: the event relay would publish every copied event."""
    cur = await conn.execute(
        "SELECT DISTINCT table_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND column_name = 'approval_id' AND table_name <> 'approval_events' ORDER BY 1")
    return [str(row[0]) for row in await cur.fetchall()]


async def clone_approvals(database_url: str, template_id: str, count: int, *, status: str, label: str,
                          expires_in_s: float, age_s: float = 0.0) -> dict[str, Any]:
    """Insert `count` copies of approval `template_id` with `status`, expiring `expires_in_s` from now
    (negative: already past), created `age_s` ago; with copies of its steps and decisions. Returns the
    new ids and how long the insert took."""
    overrides = {
        "id": sql.SQL("gen_random_uuid()"),
        "request_id": sql.SQL("{} || '-' || g").format(sql.Literal(f"bench-{label}")),
        "approval_status": sql.Literal(status),
        "created_at": sql.SQL("now() - make_interval(secs => {}) + g * interval '1 microsecond'").format(
            sql.Literal(age_s)),
        "updated_at": sql.SQL("now() - make_interval(secs => {})").format(sql.Literal(age_s)),
        "expires_at": sql.SQL("now() + make_interval(secs => {})").format(sql.Literal(expires_in_s)),
    }
    started = time.monotonic()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        columns = await _columns(conn, "approvals")
        select = sql.SQL(", ").join(overrides.get(c, sql.Identifier("t", c)) for c in columns)
        template = sql.Literal(template_id)
        children = []
        for table in await _child_tables(conn):
            child_columns = [c for c in await _columns(conn, table) if c != "approval_id"]
            children.append(sql.SQL(
                ", {name} AS (INSERT INTO {table} (approval_id, {cols}) SELECT new.id, {sel} FROM new, {table} c "
                "WHERE c.approval_id = {template})").format(template=template,
                name=sql.Identifier(f"copy_{table}"), table=sql.Identifier(table),
                cols=sql.SQL(", ").join(map(sql.Identifier, child_columns)),
                sel=sql.SQL(", ").join(sql.Identifier("c", col) for col in child_columns)))
        ids: list[str] = []
        for first in range(1, count + 1, BATCH):
            last = min(count, first + BATCH - 1)
            query = sql.SQL(
                "WITH new AS (INSERT INTO approvals ({cols}) SELECT {select} FROM approvals t, "
                "generate_series({first}, {last}) g WHERE t.id = {template} RETURNING id){children} "
                "SELECT id FROM new").format(
                cols=sql.SQL(", ").join(map(sql.Identifier, columns)), select=select,
                first=sql.Literal(first), last=sql.Literal(last), template=template,
                children=sql.Composed(children))
            cur = await conn.execute(query)
            ids.extend(str(row[0]) for row in await cur.fetchall())
        await conn.commit()
        committed = time.monotonic()
        # VACUUM too, not just ANALYZE: a table that grew to this size over days has been vacuumed by
        # autovacuum (its insert threshold, PostgreSQL 13+), so its visibility map is current and counts
        # are index-only scans; right after a bulk insert, every index entry would send a read to the table.
        await conn.set_autocommit(True)  # VACUUM runs outside a transaction
        await conn.execute("VACUUM (ANALYZE) approvals")
        await conn.execute("ANALYZE approval_events")
    return {"rows": len(ids), "ids": ids, "status": status, "insert_s": round(committed - started, 2),
            "committed_at": committed}


async def count_status(database_url: str, tenant: str) -> dict[str, int]:
    """Approvals of the tenant by status, and how many pending ones are past their expiry."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT approval_status, count(*) FROM approvals WHERE tenant_id = %s GROUP BY 1",
                                 (tenant,))
        counts = {str(status): int(n) for status, n in await cur.fetchall()}
    return counts


async def overdue(database_url: str, tenant: str) -> int:
    """Pending or approved approvals of the tenant already past their expiry (what the sweeper has left)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM approvals WHERE tenant_id = %s AND expires_at < now() "
                                 "AND approval_status IN ('pending', 'approved')", (tenant,))
        row = await cur.fetchone()
        return int(row[0]) if row else 0
