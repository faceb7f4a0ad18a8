"""The whole system as subprocesses on this machine, for end-to-end tests and `make bench`."""

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psycopg

from pj_common.broker_access import Service
from pj_common.topology import Topology

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the test run dies, so no service outlives it (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SystemSecrets:
    """The secrets a test system's services share (never the development defaults: they run as prod)."""

    jwt: str
    signing_key: str
    webhook: str


def service_env(*, database_url: str, amqp_url: str, prefix: str, port: int, webhook_url: str,
                secrets: SystemSecrets, **overrides: str) -> dict[str, str]:
    """Environment of a test system's services: the caller's (less its PJ_ settings), run as prod,
    the webhook connector pointed at `webhook_url` (a local receiver), then `overrides`."""

    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("PJ_")},
        "PYTHONPATH": str(REPO),
        "PJ_ENV": "prod",
        "PJ_JWT_SECRET": secrets.jwt,
        "PJ_DISPATCH_SIGNING_KEY": secrets.signing_key,
        "PJ_DATABASE_URL": database_url,
        "PJ_AMQP_URL": amqp_url,
        "PJ_AMQP_PREFIX": prefix,
        "PJ_GATEWAY_PORT": str(port),
        "PJ_WEBHOOK_URL": webhook_url,
        "PJ_WEBHOOK_SECRET": secrets.webhook,
        "PJ_WEBHOOK_ALLOW_PRIVATE": "1",
        "PJ_CONNECTOR_ALLOW_HTTP": "1",  # the local receivers and fake APIs speak plain http
        "PJ_DISPATCH_WAIT_S": "10",
        "PJ_CONNECTOR_RETRY_BASE_S": "0.05",
        "PJ_LOG_LEVEL": "INFO",
        **overrides,
    }


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str, prefix: str = "pj_test") -> AsyncIterator[str]:
    """A new, migrated database on the server of `admin_url`; dropped afterwards."""
    from pj_approvals import store

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = with_dbname(admin_url, name)
    await store.ensure_database(url)
    await store.migrate(url)
    try:
        yield url
    finally:
        await store.drop_database(admin_url, name)


def with_dbname(url: str, dbname: str) -> str:
    """The same PostgreSQL connection string, naming another database."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **params)


async def delete_topology(amqp_url: str, topology: Topology) -> None:
    """Delete every queue and exchange of one prefix (what a test run or a bench run declared)."""
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        for queue in (*topology.declared_queues, topology.notifier):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(queue)
        for exchange in topology.declared_exchanges:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.exchange_delete(exchange)


# Only the processes that verify tokens get token settings: a dispatcher (or the notifier) holds no key
# that could mint one, as in docker-compose.yml and ops/k8s.
TOKEN_VERIFIERS = frozenset({"pj_gateway", "pj_approvals"})


# Each service's broker user (pj_common.broker_access), by the module that runs it.
SERVICE_OF_MODULE = {"pj_approvals": Service.APPROVALS, "pj_dispatcher": Service.DISPATCHER,
                     "pj_gateway": Service.GATEWAY, "pj_notifier": Service.NOTIFIER}


def process_env(module: str, env: dict[str, str], broker_users: Mapping[Service, str] | None = None
                ) -> dict[str, str]:
    """`env` as the process running `module` gets it: without PJ_JWT_* unless it verifies tokens, and
    connecting to the broker as its own user when `broker_users` are given."""
    if broker_users is not None and module in SERVICE_OF_MODULE:
        env = {**env, "PJ_AMQP_URL": broker_users[SERVICE_OF_MODULE[module]]}
    if module in TOKEN_VERIFIERS:
        return env
    return {k: v for k, v in env.items() if not k.startswith("PJ_JWT_")}


@dataclass
class System:
    """Processes of one running system, their logs, and how to reach its gateway."""

    base_url: str
    env: dict[str, str]
    logdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Each service's own broker user (tests.conftest.broker_users); None: all connect with env's PJ_AMQP_URL.
    broker_users: Mapping[Service, str] | None = None

    def start(self, name: str, module: str, **extra_env: str) -> None:
        with open(self.logdir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", module], cwd=REPO,
                env=process_env(module, {**self.env, **extra_env}, self.broker_users),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.processes.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"service process(es) exited: {dead}\n{self.tails()}")

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
                         for p in sorted(self.logdir.glob("*.log")))

    async def wait_healthy(self, timeout: float = 30.0, expect: str = "ok",
                           dispatchers: int | None = None) -> dict[str, Any]:
        """Poll /health until it says `expect` (and, if given, that many dispatchers consume)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        async with httpx.AsyncClient(base_url=self.base_url, timeout=3, trust_env=False) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    last = (await client.get("/health")).json()
                    consumers = last.get("checks", {}).get("dispatchers", {}).get("consumers")
                    if last.get("status") == expect and dispatchers in (None, consumers):
                        return dict(last)
                except (httpx.HTTPError, ValueError) as exc:
                    last = repr(exc)
                await asyncio.sleep(0.2)
        raise AssertionError(f"system not {expect} within {timeout}s: {last}\n{self.tails()}")


@contextlib.asynccontextmanager
async def running_system(env: dict[str, str], *, amqp_url: str, logdir: Path, dispatchers: int = 1,
                         broker_users: Mapping[Service, str] | None = None,
                         gateway_env: Mapping[str, str] | None = None,
                         also: Callable[[System], None] | None = None,
                         timeout: float = 30.0) -> AsyncIterator[System]:
    """Approvals, `dispatchers` dispatchers (dispatcher-1, ...) and the gateway of `env`, started in that
    order (approvals declares the topology the others wait for), then whatever `also` starts, healthy.
    Afterwards every process is stopped and the prefix's queues and exchanges are deleted."""
    system = System(base_url=f"http://127.0.0.1:{env['PJ_GATEWAY_PORT']}", env=env, logdir=logdir,
                    broker_users=broker_users)
    try:
        system.start("approvals", "pj_approvals")
        for number in range(1, dispatchers + 1):
            system.start(f"dispatcher-{number}", "pj_dispatcher")
        system.start("gateway", "pj_gateway", **(gateway_env or {}))
        if also is not None:
            also(system)
        await system.wait_healthy(timeout=timeout, dispatchers=dispatchers)
        yield system
    finally:
        system.stop_all()
        await delete_topology(amqp_url, Topology(env["PJ_AMQP_PREFIX"]))

