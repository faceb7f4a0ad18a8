"""The gateway when the broker or the approvals service is missing: fast, honest errors, and
recovery without a restart. The outage is real: the gateway talks to RabbitMQ through a proxy the
test cuts and restores."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest

from pj_common.topology import Topology, declare_topology
from tests.support.system import System, delete_topology, free_port
from tests.support.tcp_proxy import TcpProxy

from .conftest import headers, system_env


@pytest.fixture
async def lone_gateway(database_url: str, amqp_url: str, tmp_path: Path) -> AsyncIterator[tuple[System, TcpProxy]]:
    """A gateway (and nothing behind it) reaching RabbitMQ through a cuttable proxy."""
    parts = urlsplit(amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    proxied = amqp_url.replace(f"{parts.hostname}:{parts.port or 5672}", f"127.0.0.1:{proxy.port}")
    if parts.port is None:
        proxied = amqp_url.replace(str(parts.hostname), f"127.0.0.1:{proxy.port}", 1)
    prefix = f"pjr-{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = system_env(database_url, proxied, prefix, port, "http://127.0.0.1:9/none")
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:  # as an approvals process would have (the gateway waits for it): none answers
        await declare_topology(await connection.channel(), Topology(prefix))
    system = System(base_url=f"http://127.0.0.1:{port}", env=env, logdir=tmp_path)
    system.start("gateway", "pj_gateway", PJ_RPC_TIMEOUT_S="0.5")
    try:
        await system.wait_healthy(expect="degraded")
        yield system, proxy
    finally:
        system.stop_all()
        await proxy.cut()
        await delete_topology(amqp_url, Topology(prefix))


async def test_no_reply_is_504_and_broker_outage_is_503_then_recovers(
        lone_gateway: tuple[System, TcpProxy]) -> None:
    system, proxy = lone_gateway
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
        health = (await client.get("/health")).json()
        assert health["checks"]["broker"]["status"] == "ok"
        assert health["checks"]["approvals"]["status"] == "error"

        r = await client.get("/api/approvals/count/pending", headers=headers())
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"

        await proxy.cut()
        await asyncio.sleep(0.3)
        started = time.monotonic()
        r = await client.post("/api/pj/execute", headers=headers(),
                              json={"actionId": "notify.webhook", "payload": {}})
        assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
        assert time.monotonic() - started < 2.0
        r = await client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "error"

        await proxy.start()  # the broker is back: the gateway reconnects by itself
        await system.wait_healthy(expect="degraded", timeout=20)


async def test_unreachable_broker_at_start_is_503_within_two_seconds(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = system_env(database_url, f"amqp://guest:guest@127.0.0.1:{free_port()}/", "pjx", port, "http://x")
    system = System(base_url=f"http://127.0.0.1:{port}", env=env, logdir=tmp_path)
    system.start("gateway", "pj_gateway")
    try:
        await system.wait_healthy(expect="error")
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
            started = time.monotonic()
            r = await client.get("/api/approvals", headers=headers())
            assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
            assert time.monotonic() - started < 2.0
    finally:
        system.stop_all()

