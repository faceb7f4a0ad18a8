"""Instruments that count what one lifecycle costs in work: SQL, transactions, AMQP messages, log lines.

Measured, not assumed, each from outside the services (no service code is changed for the bench):

- transactions and rows: `pg_stat_database` of the bench database before and after (read from another
  database, so the reading does not count itself). Backends report these at most once a second and
  when they go idle, so `settle()` waits before the second reading.
- SQL statements: pg_stat_statements needs `shared_preload_libraries` (a server restart), which the shared
  PostgreSQL here does not have. Instead the counting run sets `log_statement = 'all'` on the bench
  database only (new sessions take it: approvals is restarted around the counting run) and counts the
  server log's lines of that database (`statement:` for simple queries such as BEGIN/COMMIT, `execute`
  for the extended protocol psycopg uses for everything else). Needs the server log to be readable.
- AMQP: the bench runs in a vhost of its own; for the counting run RabbitMQ's firehose is turned on in
  that vhost only (`rabbitmqctl trace_on -p`), and a consumer of `amq.rabbitmq.trace` counts every
  publish by exchange, routing key and command kind, and every delivery by queue.
- log lines: the new lines of each service's log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated",
               "tup_deleted", "blks_hit", "blks_read")
PG_LOG_CANDIDATES = (Path("/var/log/postgresql/postgresql-15-main.log"),)


async def pg_database_stats(admin_url: str, database: str) -> dict[str, int] | None:
    """The cumulative counters of one database, read through a connection to another database."""
    with contextlib.suppress(Exception):
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            cur = await conn.execute(f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database WHERE datname = %s",
                                     (database,))
            row = await cur.fetchone()
            if row is not None:
                return {name: int(value or 0) for name, value in zip(PG_COUNTERS, row, strict=True)}
    return None


def pg_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {k: after[k] - before[k] for k in before}


async def pg_log_path(admin_url: str) -> Path | None:
    """Where the server writes its log, if this process can read it (same machine, readable file)."""
    candidates = list(PG_LOG_CANDIDATES)
    with contextlib.suppress(Exception):
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
            cur = await conn.execute("SELECT pg_current_logfile()")
            row = await cur.fetchone()
            if row and row[0]:
                name = Path(row[0])
                if not name.is_absolute():
                    cur = await conn.execute("SHOW data_directory")
                    data = await cur.fetchone()
                    name = Path(data[0]) / name if data else name
                candidates.insert(0, name)
    for path in candidates:
        with contextlib.suppress(OSError), path.open("rb"):
            return path
    return None


async def set_log_statement(admin_url: str, database: str, on: bool) -> None:
    """`log_statement = 'all'` for new sessions of the bench database only (or back to the default)."""
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        ident = psycopg.sql.Identifier(database)
        if on:
            await conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(ident))
        else:
            await conn.execute(psycopg.sql.SQL("ALTER DATABASE {} RESET log_statement").format(ident))


_LOG_LINE = re.compile(rb"^\S+ \S+ \S+ \[\d+\] \S*@(?P<db>\S+) LOG:  (?P<kind>statement|execute [^:]*): (?P<sql>.*)$")


def _statement_kind(sql: bytes) -> str:
    """BEGIN / COMMIT / ROLLBACK, or the statement's first words with table: `UPDATE approvals`, `WITH`."""
    words = sql.strip().split()
    if not words:  # psycopg_pool's connection check on every checkout sends an empty query
        return "(empty query: pool check)"
    head = words[0].upper().decode(errors="replace")
    if head in ("BEGIN", "COMMIT", "ROLLBACK", "SET", "SHOW"):
        return head
    text = b" ".join(words[:12]).decode(errors="replace")
    if head == "INSERT":
        match = re.search(r"INSERT INTO (\w+)", text, re.I)
        return f"INSERT INTO {match.group(1)}" if match else "INSERT"
    if head in ("UPDATE", "DELETE"):
        match = re.search(r"(?:UPDATE|DELETE FROM) (\w+)", text, re.I)
        return f"{head} {match.group(1)}" if match else head
    wide = b" ".join(words[:80]).decode(errors="replace")
    if head == "SELECT":
        match = re.search(r"\bFROM (\w+)", wide, re.I)
        return f"SELECT FROM {match.group(1)}" if match else "SELECT"
    if head == "WITH":  # a CTE: named by the first row change in it, else by what it reads
        match = re.search(r"\b(UPDATE|INSERT INTO|DELETE FROM) (\w+)", wide, re.I)
        if match:
            return f"WITH .. {match.group(1).upper()} {match.group(2)}"
        match = re.search(r"\bFROM (\w+)", wide, re.I)
        return f"WITH .. SELECT FROM {match.group(1)}" if match else "WITH"
    return head


def count_statements(path: Path, database: str, *, offset: int, end: int | None = None) -> dict[str, Any]:
    """Statements the server logged for `database` between byte `offset` and `end` of its log, by kind."""
    kinds: Counter[str] = Counter()
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read() if end is None else f.read(max(0, end - offset))
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        match = _LOG_LINE.match(line)
        if match is None or match.group("db").decode(errors="replace") != database:
            continue
        text = match.group("sql")
        for more in lines[i + 1: i + 8]:  # a statement's further lines start with a tab
            if not more.startswith(b"\t"):
                break
            text += b" " + more
        kinds[_statement_kind(text)] += 1
    total = sum(kinds.values())
    control = sum(kinds[k] for k in ("BEGIN", "COMMIT", "ROLLBACK"))
    return {"total": total, "begin_commit_rollback": control, "other": total - control,
            "by_kind": dict(kinds.most_common())}


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_lines(logdir: Path, start: dict[str, int], end: dict[str, int] | None = None) -> dict[str, int]:
    """Lines each `<name>.log` gained between two sets of byte offsets (`log_offsets`), or since `start`."""
    lines: dict[str, int] = {}
    for name, offset in start.items():
        stop = (end or {}).get(name)
        with contextlib.suppress(OSError), (logdir / f"{name}.log").open("rb") as f:
            f.seek(offset)
            data = f.read() if stop is None else f.read(max(0, stop - offset))
            lines[name] = data.count(b"\n")
    return lines


def log_offsets(logdir: Path, names: list[str]) -> dict[str, int]:
    return {name: file_size(logdir / f"{name}.log") for name in names}


# ---------------------------------------------------------------------------------------------------
# RabbitMQ: a vhost of the bench's own, and the firehose in it


def rabbitmqctl(*argv: str, timeout: float = 30) -> bool:
    try:
        subprocess.run(["rabbitmqctl", *argv], capture_output=True, timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def create_vhost(vhost: str, user: str) -> bool:
    """A vhost for this run only, so its firehose and its cleanup touch nobody else's queues."""
    return rabbitmqctl("add_vhost", vhost) and rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")


def delete_vhost(vhost: str) -> bool:
    return rabbitmqctl("delete_vhost", vhost)


def _kind_of_routing_key(key: str, queues: dict[str, str]) -> str:
    if key.startswith("amq.rabbitmq.reply-to"):
        return "rpc reply (direct reply-to)"
    return queues.get(key, key)


def _command_kind(body: bytes) -> str | None:
    """The command's name in a command envelope body (`{"command": {"type"|"kind"|...: name}}`)."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    command = message.get("command") if isinstance(message, dict) else None
    if isinstance(command, dict):
        for key in ("type", "kind", "name", "command"):
            value = command.get(key)
            if isinstance(value, str):
                return value
    return None


class AmqpTrace:
    """Counts every publish and delivery in one vhost while RabbitMQ's firehose is on there."""

    def __init__(self, amqp_url: str, vhost: str, queue_names: dict[str, str]) -> None:
        self._url = amqp_url
        self._vhost = vhost
        self._queues = queue_names  # queue name -> what it is ("commands", "dispatch", ...)
        self.publishes: Counter[str] = Counter()
        self.deliveries: Counter[str] = Counter()
        self.rpc_requests: Counter[str] = Counter()
        self._connection: Any = None
        self.enabled = False

    async def start(self) -> bool:
        import aio_pika

        self._connection = await aio_pika.connect(self._url, timeout=10)
        channel = await self._connection.channel()
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind("amq.rabbitmq.trace", routing_key="#")
        await queue.consume(self._on_trace, no_ack=True)
        loop = asyncio.get_running_loop()
        self.enabled = await loop.run_in_executor(None, rabbitmqctl, "trace_on", "-p", self._vhost)
        return self.enabled

    async def _on_trace(self, message: Any) -> None:
        key = message.routing_key or ""
        headers = message.headers or {}
        if key.startswith("publish."):
            exchange = key[len("publish."):] or "(default)"
            keys = headers.get("routing_keys") or [b""]
            routing = keys[0].decode() if isinstance(keys[0], bytes) else str(keys[0])
            kind = _kind_of_routing_key(routing, self._queues)
            properties = headers.get("properties") or {}
            reply_to = properties.get("reply_to")
            if kind == "commands" or reply_to:
                command = _command_kind(message.body) or "?"
                kind = f"{kind}:{command}"
                if reply_to:
                    self.rpc_requests[command] += 1
            label = exchange if exchange != "(default)" else "(default exchange)"
            short = self._queues.get(exchange, exchange)
            self.publishes[f"{short if exchange != '(default)' else label} -> {kind}"] += 1
        elif key.startswith("deliver."):
            queue = key[len("deliver."):]
            self.deliveries[self._queues.get(queue, "rpc reply queue" if queue.startswith("amq.") else queue)] += 1

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.enabled:
            await loop.run_in_executor(None, rabbitmqctl, "trace_off", "-p", self._vhost)
        await asyncio.sleep(0.5)  # the last trace messages
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    def result(self, per: int) -> dict[str, Any]:
        def each(counter: Counter[str]) -> dict[str, float]:
            return {k: round(v / per, 3) for k, v in sorted(counter.items())}

        return {"publishes_total": round(sum(self.publishes.values()) / per, 3),
                "publishes_by_kind": each(self.publishes),
                "deliveries_by_queue": each(self.deliveries),
                "rpc_round_trips": round(sum(self.rpc_requests.values()) / per, 3),
                "rpc_by_command": each(self.rpc_requests)}
