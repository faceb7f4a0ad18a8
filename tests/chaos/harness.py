"""The system under chaos: 2 approvals, 2 dispatchers and a gateway as subprocesses against the suite's
private PostgreSQL and RabbitMQ, a recording webhook receiver, and the faults the scenarios inject."""

import asyncio
import contextlib
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import psycopg
import yaml
from aio_pika.abc import AbstractIncomingMessage

from pj_approvals import store
from pj_approvals.settings import DEFAULT_CATALOG
from pj_common.topology import Topology
from tests.support.backends import PrivatePostgres, PrivateRabbit
from tests.support.system import System, SystemSecrets, free_port, service_env, with_dbname
from tests.support.tcp_proxy import TcpProxy

from .load import Identity
from .receiver import Receiver

JWT_SECRET = "chaos-jwt-secret-0123456789abcdef0123456789"
SIGNING_KEY = "chaos-dispatch-signing-key-0123456789abcdef"
WEBHOOK_SECRET = "chaos-webhook-secret"
ISSUER, AUDIENCE = "puddlejumper", "pj-approval-gate"
TENANT = "chaos"
ACTION = "chaos.two_steps"
APPROVALS = ("approvals-1", "approvals-2")
DISPATCHERS = ("dispatcher-1", "dispatcher-2")
MODULES = {"approvals": "pj_approvals", "dispatcher": "pj_dispatcher", "gateway": "pj_gateway"}

# Short leases and a fast reaper, so "stuck" is decided within seconds: a dispatch whose lease is not
# renewed for LEASE_S is re-issued (up to 3 attempts) or failed within SWEEP_S more.
LEASE_S = 6.0
# Orders each dispatcher runs at once.
DISPATCHER_CONCURRENCY = 8
SWEEP_S = 1.0

CHAOS_ACTIONS: dict[str, Any] = {
    ACTION: {
        "description": "Two signed webhook steps, for the chaos suite.",
        "plan": [{"stepId": sid, "connector": "webhook", "operation": "post", "params": {"body": "{{ payload }}"}}
                 for sid in ("first", "second")],
    },
}


@dataclass
class Backends:
    pg: PrivatePostgres
    mq: PrivateRabbit


def _env(database_url: str, amqp_url: str, prefix: str, port: int, webhook_url: str, catalog: Path) -> dict[str, str]:
    return service_env(
        database_url=database_url, amqp_url=amqp_url, prefix=prefix, port=port, webhook_url=webhook_url,
        secrets=SystemSecrets(jwt=JWT_SECRET, signing_key=SIGNING_KEY, webhook=WEBHOOK_SECRET),
        PJ_CATALOG=str(catalog), PJ_RPC_TIMEOUT_S="5", PJ_DISPATCHER_CONCURRENCY=str(DISPATCHER_CONCURRENCY),
        PJ_DISPATCH_LEASE_S=f"{LEASE_S:g}", PJ_SWEEP_INTERVAL_S=f"{SWEEP_S:g}", PJ_REAPER_INTERVAL_S=f"{SWEEP_S:g}",
        PJ_LEASE_RENEW_S=f"{LEASE_S / 4:g}", PJ_LEASE_MARGIN_S="1", PJ_OUTBOX_POLL_INTERVAL_S="0.5",
        # A few identities drive every lifecycle: the per-caller rate limit would refuse most of them.
        PJ_RATE_LIMIT_PER_MIN="100000000")


@dataclass
class ChaosSystem:
    backends: Backends
    logdir: Path
    proxied: bool = False  # every service reaches the broker, and approvals PostgreSQL, through its own proxy
    prefix: str = field(default_factory=lambda: f"pjc-{uuid.uuid4().hex[:8]}")
    dbname: str = field(default_factory=lambda: f"pj_chaos_{uuid.uuid4().hex[:8]}")
    receiver: Receiver = field(default_factory=lambda: Receiver(WEBHOOK_SECRET))
    broker_proxies: dict[str, TcpProxy] = field(default_factory=dict)
    db_proxies: dict[str, TcpProxy] = field(default_factory=dict)
    system: System | None = None

    @property
    def database_url(self) -> str:
        return with_dbname(self.backends.pg.url, self.dbname)

    @property
    def identity(self) -> Identity:
        return Identity(JWT_SECRET, ISSUER, AUDIENCE, TENANT)

    @property
    def sys(self) -> System:
        assert self.system is not None
        return self.system

    async def start(self) -> None:
        await store.ensure_database(self.database_url)
        await store.migrate(self.database_url)
        self.receiver.start()
        catalog = self.logdir / "catalog.yaml"
        document = yaml.safe_load(DEFAULT_CATALOG.read_text())
        document["actions"].update(CHAOS_ACTIONS)
        catalog.write_text(yaml.safe_dump(document, sort_keys=False))
        port = free_port()
        env = _env(self.database_url, self.backends.mq.url, self.prefix, port, self.receiver.url, catalog)
        self.system = System(base_url=f"http://127.0.0.1:{port}", env=env, logdir=self.logdir)
        for name in (*APPROVALS, *DISPATCHERS, "gateway"):
            await self._proxies_for(name)
            self.start_service(name)
        await self.sys.wait_healthy(timeout=60, dispatchers=2)

    async def _proxies_for(self, name: str) -> None:
        if not self.proxied:
            return
        proxy = TcpProxy("127.0.0.1", self.backends.mq.port)
        await proxy.start()
        self.broker_proxies[name] = proxy
        if name.startswith("approvals"):
            db = TcpProxy("127.0.0.1", self.backends.pg.port)
            await db.start()
            self.db_proxies[name] = db

    def service_env(self, name: str) -> dict[str, str]:
        extra: dict[str, str] = {}
        if name in self.broker_proxies:
            extra["PJ_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{self.broker_proxies[name].port}/"
        if name in self.db_proxies:
            extra["PJ_DATABASE_URL"] = with_dbname(f"postgresql://postgres@127.0.0.1:{self.db_proxies[name].port}/x",
                                                   self.dbname)
        return extra

    def start_service(self, name: str) -> None:
        self.sys.start(name, MODULES[name.split("-")[0]], **self.service_env(name))

    def kill(self, name: str) -> None:
        """kill -9: no drain, no clean disconnect."""
        self.sys.stop(name, signal.SIGKILL)

    async def stop(self) -> None:
        if self.system is not None:
            self.system.stop_all()
        for proxy in (*self.broker_proxies.values(), *self.db_proxies.values()):
            await proxy.cut()
        self.receiver.stop()
        with contextlib.suppress(Exception):
            await store.drop_database(self.backends.pg.url, self.dbname)

    # ---------------------------------------------------------------- what the audit reads

    async def approvals(self) -> list[dict[str, Any]]:
        """Every approval of the run, read straight from PostgreSQL (retried while it restarts)."""
        for attempt in range(30):
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, connect_timeout=5) as conn:
                    cur = await conn.execute(
                        "SELECT id::text, request_id, tenant_id, approval_status, plan FROM approvals")
                    cols = [c.name for c in cur.description or []]
                    return [dict(zip(cols, row, strict=True)) for row in await cur.fetchall()]
            except psycopg.OperationalError:
                if attempt == 29:
                    raise
                await asyncio.sleep(1)
        raise AssertionError("unreachable")

    async def settle(self, timeout: float) -> None:
        """Until no approval is mid-flight (pending, approved, dispatching), or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await self.approvals()
            if not [r for r in rows if r["approval_status"] in ("pending", "approved", "dispatching")]:
                return
            await asyncio.sleep(0.5)


COPY_MARK = "x-chaos-copy"


class QueueMangler:
    """Takes a share of the messages of some queues (as one more competing consumer), holds them a
    moment, and puts each back twice, shuffled: duplicated and reordered deliveries, body and headers
    (signatures, message ids) untouched but for a mark on the copies.

    A copy is mangled no further: taken again (it competes for its queue like any message), it is put
    back at once, unheld and single. Each message is duplicated once and reordered by a moment; a
    copy of a copy of a copy would hold some messages back for ever longer, a delay no broker adds."""

    def __init__(self, amqp_url: str, queues: list[str], *, hold_s: float = 0.2, prefetch: int = 8) -> None:
        self._url = amqp_url
        self._queues = queues
        self._hold_s = hold_s
        self._prefetch = prefetch
        self._held: list[AbstractIncomingMessage] = []
        self._task: asyncio.Task[None] | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self.mangled: dict[str, int] = dict.fromkeys(queues, 0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        connection = await aio_pika.connect(self._url, timeout=10)
        try:
            channel = self._channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self._prefetch)
            tags = []
            for name in self._queues:
                queue = await channel.get_queue(name, ensure=False)
                tags.append((queue, await queue.consume(self._hold)))
            try:
                while True:
                    await asyncio.sleep(self._hold_s)
                    await self._flush(channel)
            finally:
                for queue, tag in tags:
                    with contextlib.suppress(Exception):
                        await queue.cancel(tag)
                await self._flush(channel)
        finally:
            await connection.close()

    async def _hold(self, message: AbstractIncomingMessage) -> None:
        if (message.headers or {}).get(COPY_MARK):
            assert self._channel is not None  # set before consuming starts
            await self._put_back(self._channel, message)
            await message.ack()
            return
        self._held.append(message)

    @staticmethod
    async def _put_back(channel: aio_pika.abc.AbstractChannel, message: AbstractIncomingMessage) -> None:
        assert message.routing_key is not None
        await channel.default_exchange.publish(aio_pika.Message(
            message.body, headers={**(message.headers or {}), COPY_MARK: 1}, message_id=message.message_id,
            content_type=message.content_type, correlation_id=message.correlation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=message.routing_key)

    async def _flush(self, channel: aio_pika.abc.AbstractChannel) -> None:
        batch, self._held[:] = list(self._held), []
        copies = [m for m in batch for _ in range(2)]
        random.shuffle(copies)
        for message in copies:
            await self._put_back(channel, message)
        for message in batch:
            self.mangled[message.routing_key or "?"] = self.mangled.get(message.routing_key or "?", 0) + 1
            await message.ack()


def topology(system: ChaosSystem) -> Topology:
    return Topology(system.prefix)
