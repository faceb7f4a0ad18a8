"""The parts alone, each role in a process of its own so /proc can tell their CPU apart.

No code of the project runs here: only FastAPI + uvicorn, aio-pika, psycopg + psycopg_pool on uvloop,
configured the way the services configure them (services/gateway/pj_gateway/server.py,
libs/common/pj_common/transport.py and topology.py, services/approvals/pj_approvals/app.py).

Each role counts its finished operations in a shared counter, which the measuring process reads at the
window's two edges, and stops when the shared stop flag is set, at its deadline, or after MAX_OPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

MAX_OPS = 5_000_000  # every loop is bounded in count as well as in time
BACKLOG = 128  # a publisher waits while its consumer is this far behind, so both count the same messages
# A body of the size of the system's commands and orders (a few hundred bytes of JSON).
BODY = json.dumps({"command": {"type": "execute", "tenant": "bench", "actionId": "notify.webhook",
                               "payload": {"message": "floor", "n": 1, "pad": "x" * 256}},
                   "identity": {"sub": "floor", "role": "operator"}}).encode()
REPLY = json.dumps({"ok": True, "data": {"approvalId": str(uuid.uuid4()), "status": "pending"}}).encode()


@dataclass
class Control:
    """What the measuring process shares with a role (multiprocessing objects, inherited at spawn)."""

    counter: Any  # Value("q"): operations finished
    stop: Any  # Value("b"): set by the measuring process
    messages: Any  # Queue: {"ready": {...}} once set up, {"error": "..."} on failure
    deadline: float  # time.monotonic() (system-wide) after which the role stops by itself
    peer: Any = None  # the consumer's counter, for a publisher that must not run ahead of it

    def stopped(self) -> bool:
        return bool(self.stop.value) or time.monotonic() > self.deadline or self.counter.value >= MAX_OPS

    def count(self) -> None:
        self.counter.value += 1

    def ready(self, **info: Any) -> None:
        self.messages.put({"ready": info})


def run_role(role: str, config: dict[str, Any], control: Control) -> None:
    """A spawned process's entry point: run one role on uvloop, report a failure instead of dying mute."""
    try:
        if role == "http_server":
            _stop_at_deadline(control)
            serve_http(config)
            return
        import uvloop

        uvloop.run(ROLES[role](config, control))
    except BaseException as exc:  # the measuring process must learn why, whatever it was
        control.messages.put({"error": f"{role}: {exc!r}"})
        raise


def _stop_at_deadline(control: Control) -> None:
    """uvicorn watches no flag: SIGTERM it at the deadline, or as soon as its parent is gone (killed)."""
    parent = os.getppid()

    def watch() -> None:
        while time.monotonic() < control.deadline and os.getppid() == parent and not control.stop.value:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="deadline", daemon=True).start()


# ---------------------------------------------------------------------------------------------------
# HTTP: a bare FastAPI app served the way the gateway serves its own


class Execute(BaseModel):
    """The body of the gateway's execute route, in its wire names."""

    actionId: str
    mode: str
    payload: dict[str, Any]


def http_app() -> Any:
    """One POST route: a small JSON body parsed into a pydantic model, a JSON answer."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/api/pj/execute", status_code=202)
    async def execute(body: Execute) -> dict[str, Any]:
        return {"success": True, "data": {"actionId": body.actionId, "mode": body.mode, "status": "pending"}}

    return app


def serve_http(config: dict[str, Any]) -> None:
    """uvicorn with the gateway's options (pj_gateway.server.server_config): uvloop, httptools (the
    gateway's subclass only adds head limits), no access log, no logging config. SIGTERM stops it."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(http_app(), host="127.0.0.1", port=config["port"], loop="uvloop",
                                  http="httptools", access_log=False, log_config=None)).run()


# ---------------------------------------------------------------------------------------------------
# AMQP


async def _connect(url: str) -> Any:
    import aio_pika

    return await aio_pika.connect(url, timeout=10)


async def _until_stopped(control: Control) -> None:
    # The stop flag lives in memory shared with another process: polled, 20 times a second.
    for _ in range(MAX_OPS):
        if control.stopped():
            return
        await asyncio.sleep(0.05)


async def _workers(control: Control, count: int, one: Callable[[], Awaitable[None]]) -> None:
    """`count` loops of `one` operation each, back to back, until the role stops."""

    async def loop() -> None:
        while not control.stopped():
            await one()
            control.count()

    await asyncio.gather(*(loop() for _ in range(count)))


async def amqp_publisher(config: dict[str, Any], control: Control) -> None:
    """Persistent messages on a confirm channel, `inflight` confirms awaited at once (mandatory like the
    system's orders and reports; not for events, which go to an exchange nobody may be bound to)."""
    import aio_pika

    connection = await _connect(config["url"])
    channel = await connection.channel(publisher_confirms=True)
    exchange = (channel.default_exchange if not config["exchange"]
                else await channel.get_exchange(config["exchange"], ensure=False))
    peer = control.peer

    async def publish() -> None:
        for _ in range(MAX_OPS):  # the consumer's counter is in shared memory: polled
            if peer is None or control.counter.value - peer.value <= BACKLOG or control.stopped():
                break
            await asyncio.sleep(0.001)
        message = aio_pika.Message(BODY, content_type="application/json", message_id=uuid.uuid4().hex,
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await exchange.publish(message, routing_key=config["routing_key"], mandatory=config["mandatory"])

    control.ready()
    await _workers(control, config["inflight"], publish)
    await connection.close()


async def amqp_consumer(config: dict[str, Any], control: Control) -> None:
    """Manual acks, `prefetch` unacked at most, each message acked as it arrives."""
    connection = await _connect(config["url"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=config["prefetch"])
    queue = await channel.get_queue(config["queue"], ensure=False)

    async def on_message(message: Any) -> None:
        await message.ack()
        control.count()

    await queue.consume(on_message)
    control.ready()
    await _until_stopped(control)
    await connection.close()


async def rpc_responder(config: dict[str, Any], control: Control) -> None:
    """Consumes requests with manual ack and answers each on its reply-to address, unconfirmed and with
    mandatory=False (as pj_common.transport.reply does), then acks."""
    import aio_pika

    connection = await _connect(config["url"])
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=config["prefetch"])
    queue = await channel.get_queue(config["queue"], ensure=False)

    async def on_request(message: Any) -> None:
        answer = aio_pika.Message(REPLY, content_type="application/json", correlation_id=message.correlation_id,
                                  delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)
        await channel.default_exchange.publish(answer, routing_key=message.reply_to, mandatory=False)
        await message.ack()
        control.count()

    await queue.consume(on_request)
    control.ready()
    await _until_stopped(control)
    await connection.close()


async def rpc_caller(config: dict[str, Any], control: Control) -> None:
    """Requests with reply_to=amq.rabbitmq.reply-to, non-persistent with a TTL, on a channel without
    confirms; replies consumed with no_ack and matched by correlation id (pj_common.transport.RpcClient)."""
    import aio_pika

    connection = await _connect(config["url"])
    channel = await connection.channel(publisher_confirms=False)
    replies = aio_pika.Queue(channel, "amq.rabbitmq.reply-to", durable=False, exclusive=False,
                             auto_delete=False, arguments=None, passive=True)
    pending: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(message: Any) -> None:
        future = pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    await replies.consume(on_reply, no_ack=True)
    loop = asyncio.get_running_loop()

    async def call() -> None:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = loop.create_future()
        pending[correlation_id] = future
        request = aio_pika.Message(BODY, content_type="application/json", correlation_id=correlation_id,
                                   reply_to="amq.rabbitmq.reply-to", expiration=30,
                                   delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)
        await channel.default_exchange.publish(request, routing_key=config["queue"], mandatory=False)
        await asyncio.wait_for(future, 30)

    control.ready()
    await _workers(control, config["inflight"], call)
    await connection.close()


# ---------------------------------------------------------------------------------------------------
# PostgreSQL


async def _check_idle(conn: Any) -> None:
    """The approvals pool's checkout check, rewritten here: poll the idle socket, no round trip."""
    import psycopg

    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if conn.closed or readable:
        await conn.close()
        raise psycopg.OperationalError("connection closed by the server")


STATEMENTS = {
    "insert": "INSERT INTO floor_rows (id, tenant, status, payload) VALUES (%s, %s, 'pending', %s)",
    "update": "UPDATE floor_rows SET status = %s, updated_at = now() WHERE id = %s",
    "select": "SELECT id, tenant, status, payload, created_at, updated_at FROM floor_rows WHERE id = %s",
}


async def pg_client(config: dict[str, Any], control: Control) -> None:
    """One kind of statement, each its own transaction (autocommit), through a pool of fixed size whose
    backends' pids are reported, so their CPU is counted and no other's."""
    from psycopg.types.json import Jsonb
    from psycopg_pool import AsyncConnectionPool

    size = config["pool"]
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        config["url"], min_size=size, max_size=size, timeout=10, check=_check_idle, open=False,
        kwargs={"autocommit": True, "options": "-c synchronous_commit=on -c statement_timeout=10000"})
    await pool.open(wait=True, timeout=30)
    async with contextlib.AsyncExitStack() as stack:  # every connection at once: each backend's pid
        conns = [await stack.enter_async_context(pool.connection()) for _ in range(size)]
        pids = [conn.info.backend_pid for conn in conns]
        cur = await conns[0].execute("SHOW synchronous_commit")
        sync = (await cur.fetchone() or ["?"])[0]
        cur = await conns[0].execute("SELECT id FROM floor_rows ORDER BY id LIMIT %s", (config["rows"],))
        ids = [row[0] for row in await cur.fetchall()]
    kind = config["kind"]
    sql = STATEMENTS[kind]
    inflight = config["inflight"]
    payload = Jsonb({"message": "floor", "pad": "x" * 64})
    turn = [0]

    async def statement() -> None:
        turn[0] += 1
        n = turn[0]
        async with pool.connection() as conn:
            if kind == "insert":
                await conn.execute(sql, (uuid.uuid4(), "bench", payload))
            elif kind == "update":  # each in-flight slot its own rows: no lock waits between them
                await conn.execute(sql, ("approved" if n % 2 else "pending", ids[n % len(ids)]))
            else:
                cur = await conn.execute(sql, (ids[n % len(ids)],))
                await cur.fetchone()

    control.ready(backend_pids=pids, synchronous_commit=sync)
    await _workers(control, inflight, statement)
    await pool.close()


ROLES: dict[str, Callable[[dict[str, Any], Control], Coroutine[Any, Any, None]]] = {
    "amqp_publisher": amqp_publisher,
    "amqp_consumer": amqp_consumer,
    "rpc_responder": rpc_responder,
    "rpc_caller": rpc_caller,
    "pg_client": pg_client,
}
