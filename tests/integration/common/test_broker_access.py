"""Least privilege on the real RabbitMQ: each service's user (made by rabbitmqctl, as `make run` makes
them) may publish, consume and declare exactly what pj_common.broker_access grants, and the broker
refuses everything else with ACCESS_REFUSED: a dispatcher cannot publish a command or an order, and
nothing but approvals can publish an order."""

import base64
import contextlib
import json
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused

from pj_common.broker_access import BrokerAccessError, Service, apply, remove, url_key, with_credentials
from pj_common.topology import Topology, declare_topology, require_topology
from pj_notifier.app import declare_notifier_queue

A, R = "allowed", "refused"
SERVICES = (Service.APPROVALS, Service.DISPATCHER, Service.GATEWAY, Service.NOTIFIER, Service.CLIENT)


def publish_targets(t: Topology) -> dict[str, tuple[str, str]]:
    """Row name -> (exchange, routing key) of a publish: an inlet takes its queue's name as key, and the
    default exchange (`""`, `amq.default`) reaches any queue by its name."""
    return {"command": (t.inlet(t.commands), t.commands), "lease request": (t.inlet(t.leases), t.leases),
            "order": (t.inlet(t.dispatch), t.dispatch), "step report": (t.inlet(t.results), t.results),
            "event": (t.events, "approval.created"), "dead letter": (t.dead_letter_exchange, t.dispatch),
            "any queue (default exchange)": ("", t.commands)}


# Columns as SERVICES: approvals, dispatcher, gateway, notifier, client.
PUBLISH: dict[str, tuple[str, ...]] = {
    "command":                      (R, R, A, R, A),
    "lease request":                (R, A, R, R, R),
    "order":                        (A, R, R, R, R),
    "step report":                  (R, A, R, R, R),
    "event":                        (A, R, R, R, R),
    "dead letter":                  (A, A, R, A, R),
    # Only approvals: replies go to direct reply-to, which only the default exchange reaches.
    "any queue (default exchange)": (A, R, R, R, R),
}

CONSUME: dict[str, tuple[str, ...]] = {
    "commands":     (A, R, R, R, R),
    "leases":       (A, R, R, R, R),
    "dispatch":     (A, A, R, R, R),
    "results":      (A, R, R, R, R),
    "dead letters": (R, R, R, R, R),  # operators' (make dlq); approvals reads its depth passively
    "notifier":     (R, R, R, A, R),
}


def consume_targets(t: Topology) -> dict[str, str]:
    return {"commands": t.commands, "leases": t.leases, "dispatch": t.dispatch, "results": t.results,
            "dead letters": t.dead_letters, "notifier": t.notifier}


@pytest.fixture
async def declared(amqp_url: str, topology: Topology, broker_users: dict[Service, str]) -> AsyncIterator[Topology]:
    """The topology as approvals declares it, with its own user; the notifier's queue by the notifier's."""
    for service in (Service.APPROVALS, Service.NOTIFIER):
        connection = await aio_pika.connect(broker_users[service], timeout=10)
        async with connection:
            channel = await connection.channel()
            if service is Service.APPROVALS:
                await declare_topology(channel, topology)
            else:
                await declare_notifier_queue(channel, topology)
    yield topology


Act = Callable[[AbstractChannel], Awaitable[None]]


async def outcome(connection: AbstractConnection, act: Act) -> str:
    channel = await connection.channel(publisher_confirms=True)
    try:
        await act(channel)
    except ChannelAccessRefused:
        return R
    finally:
        with contextlib.suppress(aio_pika.exceptions.AMQPError, RuntimeError):
            await channel.close()
    return A


def publish(exchange: str, routing_key: str) -> Act:
    async def act(channel: AbstractChannel) -> None:
        target = channel.default_exchange if not exchange else await channel.get_exchange(exchange, ensure=False)
        # Junk on purpose: nothing consumes these queues in this test, and the topology is deleted after.
        await target.publish(aio_pika.Message(b"{}"), routing_key=routing_key)
    return act


def consume(queue_name: str) -> Act:
    async def act(channel: AbstractChannel) -> None:
        queue = await channel.get_queue(queue_name, ensure=False)
        await queue.cancel(await queue.consume(ignore))
    return act


async def ignore(message: AbstractIncomingMessage) -> None:
    await message.nack()


async def matrix(users: dict[Service, str], acts: dict[str, Act]) -> dict[str, tuple[str, ...]]:
    got: dict[str, list[str]] = {row: [] for row in acts}
    for service in SERVICES:
        connection = await aio_pika.connect(users[service], timeout=10)
        async with connection:
            for row, act in acts.items():
                got[row].append(await outcome(connection, act))
    return {row: tuple(cells) for row, cells in got.items()}


async def test_each_service_publishes_only_where_it_must(declared: Topology, broker_users: dict[Service, str]
                                                         ) -> None:
    acts = {row: publish(exchange, key) for row, (exchange, key) in publish_targets(declared).items()}
    assert await matrix(broker_users, acts) == PUBLISH


async def test_each_service_consumes_only_its_own_queues(declared: Topology, broker_users: dict[Service, str]
                                                         ) -> None:
    acts = {row: consume(queue) for row, queue in consume_targets(declared).items()}
    assert await matrix(broker_users, acts) == CONSUME


async def test_only_approvals_declares_the_topology(declared: Topology, broker_users: dict[Service, str]) -> None:
    """Declaring (even what exists, with the same arguments) needs configure permission: only approvals,
    and the notifier its own queue, have it; a passive check needs none."""

    async def declare(channel: AbstractChannel) -> None:
        await declare_topology(channel, declared)

    async def check(channel: AbstractChannel) -> None:
        await require_topology(channel, queues=(declared.dispatch,), exchanges=(declared.inlet(declared.commands),))

    assert await matrix(broker_users, {"declare": declare, "check": check}) == {
        "declare": (A, R, R, R, R), "check": (A, A, A, A, A)}


class ManagementApi(BaseHTTPRequestHandler):
    """RabbitMQ's management API, as far as `POST /api/definitions` goes, on 127.0.0.1: it checks the
    administrator's basic credentials and imports the body into the real broker (rabbitmqctl)."""

    expected_auth = ""
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/api/definitions" or self.headers.get("Authorization") != self.expected_auth:
            self.send_response(401)
            self.end_headers()
            return
        self.bodies.append(json.loads(body))
        subprocess.run(["rabbitmqctl", "import_definitions", "--format", "json"], input=body, check=True,
                       capture_output=True, timeout=60)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.mark.usefixtures("broker_users")  # rabbitmqctl manages the broker under test
def test_compose_creates_the_users_through_the_management_api_with_the_passwords_it_was_given(
        amqp_url: str) -> None:
    prefix = f"pjm-{uuid.uuid4().hex[:10]}"
    admin = urlsplit(amqp_url)
    ManagementApi.expected_auth = "Basic " + base64.b64encode(
        f"{admin.username}:{admin.password}".encode()).decode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), ManagementApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    environ = {url_key(s): with_credentials(amqp_url, f"{prefix}-{s.value}", f"chosen for {s.value}")
               for s in Service}
    management = f"http://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(BrokerAccessError, match="PJ_AMQP_URL_CLIENT"):  # no password is made up unrecorded
            apply(Topology(prefix), amqp_url, management_url=management,
                  environ={k: v for k, v in environ.items() if k != "PJ_AMQP_URL_CLIENT"})
        assert not ManagementApi.bodies
        urls = apply(Topology(prefix), amqp_url, management_url=management,
                     environ={**environ, "PJ_AMQP_URL_ELSE": "ignored"})
        # Every user logged in (apply checks it), each with the password it was given.
        assert urls == {s: environ[url_key(s)] for s in Service}
        assert len(ManagementApi.bodies) == 1
        assert "chosen for" not in json.dumps(ManagementApi.bodies[0])  # hashes only
    finally:
        server.shutdown()
        server.server_close()
        remove(prefix)
