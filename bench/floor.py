"""`make bench-floor`: what the parts this design is fixed to cost on this machine, with none of our code.

Each part runs alone for a bounded time after a warm-up, talking only to 127.0.0.1, with every role in a
process of its own (bench/floor_roles.py), and its CPU (user + sys from /proc) is read at the window's
two edges for each process involved:

- http: a bare FastAPI app under uvicorn with the gateway's options, one POST route that parses a small
  JSON body into a pydantic model, driven by bench/httpclient.py at 32 in flight: the server's CPU per
  request, and the lean client's (the driver, apart, and the floor of the dispatcher's connector call);
- durable_message: a persistent message published with confirms to a durable quorum queue (the
  arguments topology.py declares) and consumed with manual ack by a second connection;
- event_publish: a persistent message with confirm to a durable topic exchange no queue is bound to;
- rpc_round_trip: a request on a classic durable queue answered on amq.rabbitmq.reply-to (RpcClient's way);
- sql_insert, sql_update, sql_select: one row, by primary key, each statement its own transaction
  (autocommit, synchronous_commit on) through a psycopg pool like approvals', in a scratch database
  made and dropped here; the CPU of exactly the pool's backends (by pid).

RabbitMQ is one process tree for every vhost and user of the broker: its CPU in a window includes the
traffic of anyone else using it. The broker's rate with nothing of ours running is measured just before
each AMQP part and subtracted (gross and net are both kept, and the rate just after, for comparison).
Then the floor of one lifecycle is the sum of count x CPU per unit (bench/floor_model.py), and the rate
it allows on 2 cores is 2000 / floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing
import os
import platform
import queue
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import floor_model, procstat
from bench.floor_roles import Control, run_role
from bench.httpclient import LeanClient

REPO = Path(__file__).resolve().parents[1]
PARTS = ("http", "durable_message", "event_publish", "rpc_round_trip", "sql_insert", "sql_update", "sql_select")
LOCAL_HOSTS = ("127.0.0.1", "localhost")
CTX = multiprocessing.get_context("spawn")  # fresh interpreters: nothing of this process's state
ROWS = 4096  # rows the update and select parts work on
MAX_REQUESTS = 5_000_000  # the HTTP driver's bound in count (the window bounds it in time)
# What the gateway's clients send besides the body: a bearer token of a realistic length and the CSRF header.
HTTP_HEADERS = {"Authorization": "Bearer " + "x" * 300, "X-PuddleJumper-Request": "true"}
HTTP_BODY = {"actionId": "notify.webhook", "mode": "execute", "payload": {"message": "floor", "n": 1}}


def env_default(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value.strip() or default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(env_default("FLOOR_SECONDS", "4")),
                        help="measured window of each part (FLOOR_SECONDS, default 4)")
    parser.add_argument("--warmup", type=float, default=float(env_default("FLOOR_WARMUP", "1")),
                        help="unmeasured load before each window (FLOOR_WARMUP, default 1)")
    parser.add_argument("--idle", type=float, default=2.0,
                        help="seconds the broker's background rate is measured before (and after) each AMQP part")
    parser.add_argument("--repeat", type=int, default=int(env_default("FLOOR_REPEAT", "3")),
                        help="measure every part this many times, in turn (FLOOR_REPEAT, default 3); each unit's "
                             "floor is its least costly repeat, since other load only ever adds to a unit's cost")
    parser.add_argument("--concurrency", type=int, default=32, help="operations in flight in each part (32)")
    parser.add_argument("--pool", type=int, default=16, help="PostgreSQL connections (approvals' db_pool_max, 16)")
    parser.add_argument("--parts", default=env_default("FLOOR_PARTS", ",".join(PARTS)),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--counts", type=Path, default=None,
                        help="JSON {unit: count per lifecycle} replacing floor_model.LIFECYCLE_COUNTS")
    parser.add_argument("--pg-url", default=env_default("PJ_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/pj"),
                        help="the PostgreSQL server (PJ_DATABASE_URL; a scratch database is made and dropped there)")
    parser.add_argument("--amqp-url", default=env_default("PJ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
                        help="the RabbitMQ server (PJ_AMQP_URL)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results directory")
    parser.add_argument("--recompute", type=Path, default=None,
                        help="measure nothing: the floor of an earlier floor-*.json at --counts (or the defaults)")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := [p for p in args.parts if p not in PARTS]:
        parser.error(f"unknown part(s) {unknown}; choose from {','.join(PARTS)}")
    if not 0 < args.seconds <= 120 or not 0 <= args.warmup <= 60 or not 0 <= args.idle <= 30:
        parser.error("--seconds must be in (0, 120], --warmup in [0, 60], --idle in [0, 30]")
    if not 1 <= args.concurrency <= 512 or not 1 <= args.pool <= 64 or not 1 <= args.repeat <= 20:
        parser.error("--concurrency must be in 1..512, --pool in 1..64 and --repeat in 1..20")
    for url in (args.pg_url, args.amqp_url):
        if (urlsplit(url).hostname or "") not in LOCAL_HOSTS:
            parser.error(f"only servers on 127.0.0.1 are measured: {url}")
    try:
        args.lifecycle_counts = (floor_model.load_counts(args.counts) if args.counts
                                 else dict(floor_model.LIFECYCLE_COUNTS))
    except (OSError, ValueError) as exc:
        parser.error(f"--counts: {exc}")
    return args


# ---------------------------------------------------------------------------------------------------
# Measuring: CPU of the processes involved and the operations they finished, at a window's two edges


@dataclass
class Snapshot:
    at: float
    ticks: dict[str, int | None]
    counts: dict[str, int]
    machine: tuple[int, int]


@dataclass
class Meter:
    """The processes one part involves (label -> how to read its ticks) and its operation counters."""

    readers: dict[str, Callable[[], int | None]] = field(default_factory=dict)
    counters: dict[str, Callable[[], int]] = field(default_factory=dict)

    def snapshot(self, edge: str) -> Snapshot:
        # The driver (this process) is read last at the start and first at the end: the /proc scans of
        # the other readers fall outside its window.
        ticks: dict[str, int | None] = {}
        if edge == "end":
            ticks["driver"] = procstat.own_ticks(os.getpid())
        counts = {label: read() for label, read in self.counters.items()}
        ticks.update({label: read() for label, read in self.readers.items()})
        machine = procstat.machine_ticks()
        at = time.monotonic()
        if edge == "start":
            ticks["driver"] = procstat.own_ticks(os.getpid())
        return Snapshot(at, ticks, counts, machine)


def between(start: Snapshot, end: Snapshot) -> dict[str, Any]:
    """CPU seconds per process, operations per counter, and the machine, between two snapshots."""
    cpu: dict[str, float | None] = {}
    for label, before in start.ticks.items():
        after = end.ticks.get(label)
        cpu[label] = None if before is None or after is None else (after - before) / procstat.CLK_TCK
    busy = (end.machine[0] - start.machine[0]) / procstat.CLK_TCK
    idle = (end.machine[1] - start.machine[1]) / procstat.CLK_TCK
    tracked = sum(v for k, v in cpu.items() if v is not None and k != "postgres_aux")
    return {
        "wall_s": round(end.at - start.at, 3),
        "cpu_s": {k: None if v is None else round(v, 3) for k, v in cpu.items()},
        "ops": {label: end.counts[label] - start.counts[label] for label in start.counts},
        "machine": {"busy_s": round(busy, 2), "idle_s": round(idle, 2),
                    "utilization": round(busy / (busy + idle), 3) if busy + idle else None,
                    "others_busy_s": round(busy - tracked, 2)},  # CPU of everything not watched here
        "loadavg_at_end": procstat.loadavg(),
    }


async def measure(meter: Meter, *, warmup: float, seconds: float) -> dict[str, Any]:
    await asyncio.sleep(warmup)
    start = meter.snapshot("start")
    await asyncio.sleep(seconds)
    return between(start, meter.snapshot("end"))


def per_op(cpu_s: float | None, ops: int) -> float | None:
    """Milliseconds of CPU per operation."""
    return None if cpu_s is None or ops <= 0 else cpu_s * 1000 / ops


# ---------------------------------------------------------------------------------------------------
# Roles in processes of their own


@dataclass
class Role:
    label: str
    process: Any
    control: Control
    info: dict[str, Any] = field(default_factory=dict)


def start_role(label: str, role: str, config: dict[str, Any], *, lifetime: float, peer: Any = None) -> Role:
    control = Control(counter=CTX.Value("q", 0, lock=False), stop=CTX.Value("b", 0, lock=False),
                      messages=CTX.Queue(), deadline=time.monotonic() + lifetime, peer=peer)
    process = CTX.Process(target=run_role, args=(role, config, control), name=f"floor-{label}", daemon=True)
    process.start()
    return Role(label, process, control)


async def wait_ready(role: Role, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    try:
        message = await loop.run_in_executor(None, role.control.messages.get, True, timeout)
    except queue.Empty:
        raise RuntimeError(f"{role.label} not ready within {timeout:g} s (exit code {role.process.exitcode})") from None
    if "error" in message:
        raise RuntimeError(message["error"])
    role.info = message["ready"]


async def stop_roles(roles: list[Role]) -> list[str]:
    """Stop the roles (the flag, then SIGTERM, then SIGKILL) and return the errors any of them reported."""
    for role in roles:
        role.control.stop.value = 1
        if role.label == "server":
            role.process.terminate()  # uvicorn watches no flag: it stops on SIGTERM
    loop = asyncio.get_running_loop()
    for role in roles:
        await loop.run_in_executor(None, role.process.join, 15)
        if role.process.is_alive():
            role.process.terminate()
            await loop.run_in_executor(None, role.process.join, 5)
        if role.process.is_alive():
            role.process.kill()
    errors: list[str] = []
    for role in roles:
        with contextlib.suppress(queue.Empty, OSError, ValueError):  # an error after ready
            for _ in range(100):
                message = role.control.messages.get_nowait()
                if "error" in message:
                    errors.append(message["error"])
    return errors


# ---------------------------------------------------------------------------------------------------
# The servers, and the scratch objects made in them


@dataclass
class Servers:
    pg_url: str
    amqp_url: str
    broker_pid: int | None = None
    postmaster_pid: int | None = None
    scratch_db: str = ""
    scratch_url: str = ""
    prefix: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def names(self) -> dict[str, str]:
        p = self.prefix
        return {"orders": f"{p}.orders", "requests": f"{p}.commands", "events": f"{p}.events", "dlx": f"{p}.dlx"}


async def setup_servers(servers: Servers) -> None:
    import psycopg

    pg_port = int(psycopg.conninfo.conninfo_to_dict(servers.pg_url).get("port") or 5432)
    servers.broker_pid = procstat.listener_pid(urlsplit(servers.amqp_url).port or 5672)
    servers.postmaster_pid = procstat.listener_pid(pg_port)
    servers.prefix = f"pjfloor-{uuid.uuid4().hex[:8]}"
    servers.scratch_db = servers.prefix.replace("-", "_")
    admin = psycopg.conninfo.make_conninfo(servers.pg_url, dbname="postgres")
    servers.scratch_url = psycopg.conninfo.make_conninfo(servers.pg_url, dbname=servers.scratch_db)
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(servers.scratch_db)))
        cur = await conn.execute("SHOW server_version")
        servers.versions["postgresql"] = str((await cur.fetchone() or ["?"])[0])
    async with await psycopg.AsyncConnection.connect(servers.scratch_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE floor_rows (id uuid PRIMARY KEY, tenant text NOT NULL, status text NOT NULL,"
                           " payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),"
                           " updated_at timestamptz)")
        await conn.execute("INSERT INTO floor_rows (id, tenant, status, payload) SELECT gen_random_uuid(), 'bench',"
                           " 'pending', '{\"message\": \"floor\"}' FROM generate_series(1, %s)", (ROWS,))
        await conn.execute("VACUUM ANALYZE floor_rows")
    await declare_amqp(servers)


async def declare_amqp(servers: Servers) -> None:
    """The project's kinds of queue and exchange (pj_common.topology), under names of this run's own."""
    import aio_pika

    names = servers.names()
    connection = await aio_pika.connect(servers.amqp_url, timeout=10)
    async with connection:
        with contextlib.suppress(Exception):
            props = connection.transport.connection.server_properties  # type: ignore[union-attr]
            servers.versions["rabbitmq"] = props["version"].decode() if isinstance(props["version"], bytes) \
                else str(props["version"])
        channel = await connection.channel()
        await channel.declare_exchange(names["dlx"], aio_pika.ExchangeType.FANOUT, durable=True)
        await channel.declare_exchange(names["events"], aio_pika.ExchangeType.TOPIC, durable=True)
        await channel.declare_queue(names["requests"], durable=True, arguments={"x-queue-type": "classic"})
        await channel.declare_queue(names["orders"], durable=True, arguments={
            "x-queue-type": "quorum", "x-dead-letter-exchange": names["dlx"], "x-delivery-limit": 250})


async def purge(servers: Servers, queue_name: str) -> None:
    """Empty a queue of what an earlier repeat left in it, so a consumer counts only this repeat's."""
    import aio_pika

    connection = await aio_pika.connect(servers.amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        await (await channel.get_queue(queue_name, ensure=False)).purge()


async def teardown_servers(servers: Servers) -> None:
    import aio_pika
    import psycopg

    if servers.prefix:
        with contextlib.suppress(Exception):
            connection = await aio_pika.connect(servers.amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                names = servers.names()
                for name in (names["orders"], names["requests"]):
                    await channel.queue_delete(name)
                for name in (names["events"], names["dlx"]):
                    await channel.exchange_delete(name)
    if servers.scratch_db:
        admin = psycopg.conninfo.make_conninfo(servers.pg_url, dbname="postgres")
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            await conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(servers.scratch_db)))


# ---------------------------------------------------------------------------------------------------
# The parts


@dataclass
class Run:
    args: argparse.Namespace
    servers: Servers

    @property
    def lifetime(self) -> float:  # how long a role may live before it stops by itself
        return float(self.args.warmup + self.args.seconds + 60)


def unit(by_process: dict[str, float | None], ops: int, wall_s: float, **extra: Any) -> dict[str, Any]:
    """One unit's figures: CPU ms per operation by process, their sum, the wall rate."""
    known = [v for v in by_process.values() if v is not None]
    return {"ms": sum(known) if len(known) == len(by_process) and known else None,
            "by_process_ms": {k: None if v is None else round(v, 4) for k, v in by_process.items()},
            "ops": ops, "rate_per_s": round(ops / wall_s, 1) if wall_s else None, **extra}


async def part_http(run: Run) -> dict[str, Any]:
    port = free_port()
    server = start_role("server", "http_server", {"port": port}, lifetime=run.lifetime)
    clients = [LeanClient(f"http://127.0.0.1:{port}") for _ in range(run.args.concurrency)]
    done, stop = [0], [False]

    async def worker(client: LeanClient) -> None:
        for _ in range(MAX_REQUESTS):
            if stop[0]:
                return
            response = await client.request("POST", "/api/pj/execute", headers=HTTP_HEADERS, body=HTTP_BODY)
            if response.status != 202:
                raise RuntimeError(f"the bare app answered {response.status}: {response.body[:200]!r}")
            done[0] += 1

    tasks: list[asyncio.Task[None]] = []
    try:
        await wait_port(port, timeout=30)
        tasks = [asyncio.create_task(worker(c)) for c in clients]
        meter = Meter(readers={"server": lambda: procstat.own_ticks(server.process.pid)},
                      counters={"requests": lambda: done[0]})
        window = await measure(meter, warmup=run.args.warmup, seconds=run.args.seconds)
        stop[0] = True
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for task in tasks:  # after a failure or an interruption: no request is left waiting
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.aclose()
        errors = await stop_roles([server])
    if errors:
        raise RuntimeError("; ".join(errors))
    n = window["ops"]["requests"]
    cpu = window["cpu_s"]
    return {"window": window, "units": {
        "http_request": unit({"server": per_op(cpu["server"], n)}, n, window["wall_s"]),
        "http_client_call": unit({"client": per_op(cpu["driver"], n)}, n, window["wall_s"],
                                 note="the driver process: the lean client, its JSON and its bookkeeping"),
    }}


async def broker_rate(run: Run) -> float | None:
    """The broker's CPU seconds per second with nothing of ours running (everyone else's traffic)."""
    pid = run.servers.broker_pid
    if pid is None or run.args.idle <= 0:
        return None
    start, at = procstat.tree_ticks(pid), time.monotonic()
    await asyncio.sleep(run.args.idle)
    end = procstat.tree_ticks(pid)
    if start is None or end is None:
        return None
    return (end - start) / procstat.CLK_TCK / (time.monotonic() - at)


@dataclass
class Spec:
    label: str
    role: str
    config: dict[str, Any]
    peer: str | None = None  # the role whose counter this one must not run ahead of


async def run_roles(run: Run, specs: list[Spec], *, broker: bool) -> dict[str, Any]:
    """Start the roles, wait until each is ready, measure a window, stop them; the broker's background
    rate before and after when it is watched, and the PostgreSQL backends the roles report."""
    if broker:  # what the previous part left the broker to do (a quorum queue's log) settles first
        await asyncio.sleep(min(1.0, run.args.idle))
    before = await broker_rate(run) if broker else None
    roles: dict[str, Role] = {}
    try:
        for spec in specs:
            peer = roles[spec.peer].control.counter if spec.peer else None
            roles[spec.label] = start_role(spec.label, spec.role, spec.config, lifetime=run.lifetime, peer=peer)
        for role in roles.values():
            await wait_ready(role)
        meter = meter_for(run, roles, broker=broker)
        window = await measure(meter, warmup=run.args.warmup, seconds=run.args.seconds)
    finally:
        errors = await stop_roles(list(roles.values()))
    if errors:  # a role that failed during the window counted too little: no figure from it
        raise RuntimeError("; ".join(errors))
    window["roles_info"] = {label: role.info for label, role in roles.items() if role.info}
    if broker:
        # After the window the broker still writes what this part gave it (a quorum queue's log), so
        # only the rate before is subtracted; the rate after is kept to show how much that is.
        window["broker"] = broker_net(window, before, after=await broker_rate(run))
    return window


def meter_for(run: Run, roles: dict[str, Role], *, broker: bool) -> Meter:
    meter = Meter()
    for label, role in roles.items():
        meter.readers[label] = functools.partial(procstat.own_ticks, role.process.pid)
        meter.counters[label] = functools.partial(read_counter, role.control.counter)
        backends = role.info.get("backend_pids")
        if backends:
            meter.readers["postgres_backends"] = functools.partial(procstat.sum_ticks, list(backends))
            meter.readers["postgres_aux"] = functools.partial(postgres_aux_ticks, run.servers.postmaster_pid)
    if broker and run.servers.broker_pid is not None:
        meter.readers["broker"] = functools.partial(procstat.tree_ticks, run.servers.broker_pid)
    return meter


def read_counter(value: Any) -> int:
    return int(value.value)


def postgres_aux_ticks(postmaster: int | None) -> int | None:
    """The postmaster's own CPU and its background processes' (WAL writer, checkpointer, ...): shared
    with every other database of the server, so reported, never counted in the floor."""
    if postmaster is None:
        return None
    total = procstat.own_ticks(postmaster) or 0
    for pid in procstat.children_of(postmaster):
        if "(" not in procstat.cmdline(pid):  # client backends show their peer address in parentheses
            total += procstat.own_ticks(pid) or 0
    return total


def broker_net(window: dict[str, Any], before: float | None, *, after: float | None) -> dict[str, Any]:
    """The broker's CPU in the window, gross and less the background: the lower of its rates just before
    and just after (after, it still writes this part's quorum log, so its rate can only be too high).
    Other users' traffic comes in bursts; a background above the window's gross was not the window's, and
    then nothing is subtracted."""
    gross = window["cpu_s"].get("broker")
    rates = [r for r in (before, after) if r is not None]
    background = min(rates) * window["wall_s"] if rates else None
    net = None if gross is None or background is None else gross - background
    subtracted = net is not None and net >= 0
    return {"gross_s": gross, "background_per_s_before": before, "background_per_s_after": after,
            "background_s": None if background is None else round(background, 3),
            "background_subtracted": subtracted,
            "net_s": round(net, 3) if subtracted and net is not None else gross}


def broker_units(window: dict[str, Any], ops: int) -> tuple[float | None, float | None]:
    """The broker's CPU ms per operation: net of the background, and gross."""
    broker = window.get("broker") or {}
    return per_op(broker.get("net_s"), ops), per_op(broker.get("gross_s"), ops)


async def part_durable(run: Run) -> dict[str, Any]:
    names, url, n = run.servers.names(), run.servers.amqp_url, run.args.concurrency
    await purge(run.servers, names["orders"])
    window = await run_roles(run, [
        Spec("consumer", "amqp_consumer", {"url": url, "queue": names["orders"], "prefetch": n}),
        Spec("publisher", "amqp_publisher", {"url": url, "exchange": "", "routing_key": names["orders"],
                                             "mandatory": True, "inflight": n}, peer="consumer"),
    ], broker=True)
    ops, cpu = window["ops"], window["cpu_s"]
    # The broker works for each publish and each delivery; at the window's edges the two counts differ by
    # up to the publisher's allowed lead over the consumer, so the broker's share is per their mean.
    net, gross = broker_units(window, (ops["publisher"] + ops["consumer"]) // 2)
    return {"window": window, "units": {"durable_message": unit(
        {"publisher": per_op(cpu["publisher"], ops["publisher"]), "consumer": per_op(cpu["consumer"], ops["consumer"]),
         "broker": net}, ops["consumer"], window["wall_s"], broker_gross_ms=gross, published=ops["publisher"])}}


async def part_event(run: Run) -> dict[str, Any]:
    names, url = run.servers.names(), run.servers.amqp_url
    window = await run_roles(run, [
        Spec("publisher", "amqp_publisher", {"url": url, "exchange": names["events"], "routing_key": "approval.created",
                                             "mandatory": False, "inflight": run.args.concurrency}),
    ], broker=True)
    ops, cpu = window["ops"]["publisher"], window["cpu_s"]
    net, gross = broker_units(window, ops)
    return {"window": window, "units": {"event_publish": unit(
        {"publisher": per_op(cpu["publisher"], ops), "broker": net}, ops, window["wall_s"], broker_gross_ms=gross)}}


async def part_rpc(run: Run) -> dict[str, Any]:
    names, url, n = run.servers.names(), run.servers.amqp_url, run.args.concurrency
    await purge(run.servers, names["requests"])
    window = await run_roles(run, [
        Spec("responder", "rpc_responder", {"url": url, "queue": names["requests"], "prefetch": 64}),
        Spec("caller", "rpc_caller", {"url": url, "queue": names["requests"], "inflight": n}),
    ], broker=True)
    ops, cpu = window["ops"], window["cpu_s"]
    net, gross = broker_units(window, ops["caller"])
    return {"window": window, "units": {"rpc_round_trip": unit(
        {"caller": per_op(cpu["caller"], ops["caller"]), "responder": per_op(cpu["responder"], ops["responder"]),
         "broker": net}, ops["caller"], window["wall_s"], broker_gross_ms=gross)}}


def part_sql(kind: str) -> Callable[[Run], Awaitable[dict[str, Any]]]:
    async def part(run: Run) -> dict[str, Any]:
        window = await run_roles(run, [
            Spec("client", "pg_client", {"url": run.servers.scratch_url, "kind": kind, "pool": run.args.pool,
                                         "inflight": run.args.concurrency, "rows": ROWS}),
        ], broker=False)
        ops, cpu = window["ops"]["client"], window["cpu_s"]
        return {"window": window, "units": {f"sql_{kind}": unit(
            {"client": per_op(cpu["client"], ops), "backends": per_op(cpu.get("postgres_backends"), ops)},
            ops, window["wall_s"], postgres_aux_ms=per_op(cpu.get("postgres_aux"), ops))}}

    return part


PART_RUNNERS: dict[str, Callable[[Run], Awaitable[dict[str, Any]]]] = {
    "http": part_http, "durable_message": part_durable, "event_publish": part_event, "rpc_round_trip": part_rpc,
    "sql_insert": part_sql("insert"), "sql_update": part_sql("update"), "sql_select": part_sql("select"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


# ---------------------------------------------------------------------------------------------------
# The run, its JSON and its table


def machine_meta() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    git = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True, timeout=10, check=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "git": git, "packages": package_versions()}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fastapi", "starlette", "uvicorn", "httptools", "pydantic", "uvloop", "aio-pika", "aiormq",
                 "pamqp", "psycopg", "psycopg-binary", "psycopg-c", "psycopg-pool"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


async def run_floor(args: argparse.Namespace) -> dict[str, Any]:
    servers = Servers(args.pg_url, args.amqp_url)
    result: dict[str, Any] = {
        "meta": {"timestamp": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"), "loadavg_before": procstat.loadavg(),
                 "machine": machine_meta(),
                 "options": {k: v for k, v in vars(args).items() if k not in ("out", "counts", "lifecycle_counts")}},
        "parts": {}, "failed": {},
    }
    run = Run(args, servers)
    main_task = asyncio.current_task()
    if main_task is not None:  # SIGTERM as Ctrl-C: the roles stop and the scratch objects go
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        await setup_servers(servers)
        result["meta"]["servers"] = {"broker_pid": servers.broker_pid, "postmaster_pid": servers.postmaster_pid,
                                     "versions": servers.versions, "scratch_database": servers.scratch_db,
                                     "amqp_prefix": servers.prefix}
        for n in range(1, args.repeat + 1):  # in turn, so each part's repeats meet different moments
            for name in args.parts:
                print(f"[floor] {name} ({n}/{args.repeat}): {args.warmup:g} s warm-up, {args.seconds:g} s measured",
                      flush=True)
                try:
                    result["parts"].setdefault(name, []).append(await PART_RUNNERS[name](run))
                except Exception as exc:  # the other parts still say what they cost
                    result["failed"][f"{name} ({n})"] = repr(exc)
                    print(f"[floor] {name} failed: {exc!r}", file=sys.stderr, flush=True)
    finally:
        await teardown_servers(servers)
    result["meta"]["loadavg_after"] = procstat.loadavg()
    return summarize(result, args.lifecycle_counts)


def part_runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every measurement of every part (a run of one repeat stored each part alone)."""
    return [run for runs in result["parts"].values() for run in (runs if isinstance(runs, list) else [runs])]


def gross_ms(figures: dict[str, Any]) -> float | None:
    """A unit's CPU ms with the broker's gross CPU in place of its net (nothing subtracted)."""
    if figures["ms"] is None:
        return None
    if figures.get("broker_gross_ms") is None:
        return float(figures["ms"])
    return float(figures["ms"] - (figures["by_process_ms"].get("broker") or 0) + figures["broker_gross_ms"])


def least_costly(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each unit's figures from its least costly repeat, with every repeat's total and their median.

    Repeats are ranked by their gross cost (nothing subtracted), so a repeat whose broker background
    happened to be overestimated is never chosen for that."""
    repeats: dict[str, list[dict[str, Any]]] = {}
    for run in part_runs(result):
        for name, figures in run["units"].items():
            repeats.setdefault(name, []).append(figures)
    units: dict[str, dict[str, Any]] = {}
    for name, each in repeats.items():
        measured = sorted((f for f in each if gross_ms(f) is not None), key=lambda f: gross_ms(f) or 0.0)
        chosen = measured[0] if measured else each[0]
        totals = [f["ms"] for f in each]
        units[name] = {**chosen, "ms_gross": gross_ms(chosen), "ms_each_repeat": totals,
                       "ms_median": statistics.median(t for t in totals if t is not None) if measured else None}
    return units


def summarize(result: dict[str, Any], counts: dict[str, float]) -> dict[str, Any]:
    units = least_costly(result)
    unit_ms = {name: figures["ms"] for name, figures in units.items()}
    gross = {name: figures["ms_gross"] for name, figures in units.items()}
    floor = floor_model.lifecycle_floor(unit_ms, counts)
    result.update({
        "units": units,
        "unit_ms": unit_ms,
        "lifecycle_counts": counts,
        "counts_source": "docs/performance.md, Per lifecycle (see bench/floor_model.py)",
        "floor": floor,
        "floor_broker_gross": floor_model.lifecycle_floor(gross, counts),
        "floor_by_process": floor_model.floor_by_process(
            {name: figures["by_process_ms"] for name, figures in units.items()}, counts),
        "floor_at_other_counts": {name: {"counts": other, **floor_model.lifecycle_floor(unit_ms, other)}
                                  for name, other in floor_model.OTHER_COUNTS.items()},
        "targets": floor_model.against_targets(floor["ms_per_lifecycle"]),
        "not_counted": list(floor_model.NOT_COUNTED),
        "machine_quiet": machine_quiet(result),
    })
    return result


QUIET_SHARE = 0.1  # at most this share of the machine's CPU taken by other processes in every window


def machine_quiet(result: dict[str, Any]) -> dict[str, Any]:
    """Whether other processes left the parts alone: their share of the CPU in each window."""
    machines = [run["window"]["machine"] for run in part_runs(result) if "machine" in run["window"]]
    shares = [m["others_busy_s"] / m["busy_s"] if m["busy_s"] else 0.0 for m in machines]
    return {"quiet": bool(shares) and max(shares) <= QUIET_SHARE, "others_share_min": min(shares, default=None),
            "others_share_max": max(shares, default=None), "threshold": QUIET_SHARE}


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    """The markdown table docs/performance.md shows: each unit, its CPU by process, the floor."""
    lines = ["| unit | CPU ms each, by process | CPU ms each (median of repeats) | ops/s (wall) | per lifecycle "
             "| ms per lifecycle |",
             "|---|---|---|---|---|---|"]
    floor = result["floor"]
    for name, count in result["lifecycle_counts"].items():
        figures = result["units"].get(name)
        if figures is None:
            lines.append(f"| {name} | not measured | - | - | {count:g} | - |")
            continue
        processes = ", ".join(f"{k} {fmt(v)}" for k, v in figures["by_process_ms"].items())
        lines.append(f"| {name} | {processes} | {fmt(figures['ms'])} ({fmt(figures.get('ms_median'))}) "
                     f"| {fmt(figures['rate_per_s'], 0)} | {count:g} "
                     f"| {fmt(floor['by_unit_ms'].get(name), 2)} |")
    rate = floor["max_lifecycles_per_s"]
    lines.append(f"| **floor of one lifecycle** | | | | | **{fmt(floor['ms_per_lifecycle'], 2)}** |")
    lines.append(f"| **lifecycles/s it allows on {floor['cores']} cores** | | | | | **{fmt(rate, 0)}** |")
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    meta, targets, gross = result["meta"], result["targets"], result["floor_broker_gross"]
    windows = [run["window"] for run in part_runs(result)]
    during = [w["loadavg_at_end"][0] for w in windows]
    busy = [w["machine"]["others_busy_s"] for w in windows]
    others = "; ".join(f"{name} {fmt(f['ms_per_lifecycle'], 2)} ms ({fmt(f['max_lifecycles_per_s'], 0)}/s)"
                       for name, f in result["floor_at_other_counts"].items())
    return "\n".join([
        table(result), "",
        f"the same parts at other counts (bench/floor_model.py OTHER_COUNTS): {others}",
        "the floor by process of the system (ms): "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["floor_by_process"].items()),
        f"load average before {meta['loadavg_before']}, at the end of each window {during}, after "
        f"{meta['loadavg_after']}; CPU of other processes in the windows (s): {busy}",
        f"broker background subtracted; with the broker's gross CPU the floor is "
        f"{fmt(gross['ms_per_lifecycle'], 2)} ms ({fmt(gross['max_lifecycles_per_s'], 0)} lifecycles/s)",
        f"targets: >= {targets['rate_target_per_s']:g} lifecycles/s "
        f"(floor allows {fmt(targets['max_rate_per_s'], 0)}), "
        f"<= {targets['cpu_target_ms']:g} ms system CPU per lifecycle (floor {fmt(targets['floor_ms'], 2)} ms, "
        f"{fmt(100 * targets['floor_share_of_cpu_target'], 0)} % of it; {fmt(targets['ms_left_for_the_code'], 2)} ms "
        "left for the code)",
        *([] if result["machine_quiet"]["quiet"] else [
            f"NOT QUIET: other processes took {fmt(100 * (result['machine_quiet']['others_share_min'] or 0), 0)}-"
            f"{fmt(100 * (result['machine_quiet']['others_share_max'] or 0), 0)} % of the CPU in the windows; "
            "re-run on a quiet machine before holding this floor against the targets"]),
        *(f"FAILED {name}: {why}" for name, why in result["failed"].items()),
        *(f"missing from the floor: {name}" for name in result["floor"]["missing"]),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.recompute is not None:  # new counts against parts already measured
        print(report(summarize(json.loads(args.recompute.read_text()), args.lifecycle_counts)))
        return 0
    import uvloop

    try:
        result = uvloop.run(run_floor(args))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM; the servers are cleaned up
        print("[floor] interrupted: nothing written", file=sys.stderr)
        return 130
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"floor-{result['meta']['timestamp']}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(report(result))
    print(f"[floor] wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
