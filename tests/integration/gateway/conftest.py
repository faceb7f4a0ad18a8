"""The gateway in-process against the real RabbitMQ, with a scripted stand-in for the approvals service.

The stand-in answers each command with the replies a test gives it (typed `Reply` models), so every
route can be driven through HTTP without PostgreSQL; the real approvals service is covered by e2e.
"""

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from fastapi import FastAPI
from pydantic import BaseModel

from pj_common.auth import mint_token
from pj_common.messages import (
    ApprovalStatus,
    ApprovalView,
    AuditEntry,
    CommandEnvelope,
    DispatchOutcome,
    ErrorBody,
    ExecuteAccepted,
    PlanStep,
    Reply,
    StepResult,
    StepStatus,
)
from pj_common.topology import Topology, declare_topology
from pj_gateway.app import create_app
from pj_gateway.settings import GatewaySettings
from pj_gateway.state import GatewayState

SECRET = "gateway-test-secret-0123456789abcdef0123"
CSRF = {"X-PuddleJumper-Request": "true"}


def token(role: str = "admin", sub: str = "alice", tenant: str = "acme") -> str:
    return mint_token(SECRET, subject=sub, tenant=tenant, role=role, issuer="puddlejumper",
                      audience="pj-approval-gate", ttl_s=600)


def auth(role: str = "admin", sub: str = "alice", tenant: str = "acme", *, csrf: bool = True) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token(role, sub, tenant)}"}
    return {**headers, **CSRF} if csrf else headers


def ok(data: BaseModel, *, follow_up: bool = False) -> bytes:
    # Reply[Any]: the data serializes as its own model, with its own wire names.
    return Reply[Any](ok=True, data=data, follow_up=follow_up).to_json()


def refused(code: str, message: str = "refused") -> bytes:
    return Reply[None](ok=False, error=ErrorBody(code=code, message=message)).to_json()


@dataclass
class Script:
    """What the stand-in answers to one command: a first reply, and optionally a final `.done` one."""

    first: bytes | None
    final: bytes | None = None
    final_after_s: float = 0.0


@dataclass
class FakeApprovals:
    """Answers the commands queue by command name; a command with no script gets no reply."""

    channel: AbstractChannel
    scripts: dict[str, Script] = field(default_factory=dict)
    received: list[CommandEnvelope] = field(default_factory=list)

    def answer(self, name: str, first: bytes | None, final: bytes | None = None, final_after_s: float = 0.0) -> None:
        self.scripts[name] = Script(first, final, final_after_s)

    async def on_command(self, message: AbstractIncomingMessage) -> None:
        envelope = CommandEnvelope.model_validate_json(message.body)
        self.received.append(envelope)
        script = self.scripts.get(envelope.command.name)
        if script is None or not message.reply_to or message.correlation_id is None:
            return
        if script.first is not None:
            await self._send(message.reply_to, message.correlation_id, script.first)
        if script.final is not None:
            asyncio.get_running_loop().call_later(
                script.final_after_s, lambda: asyncio.ensure_future(
                    self._send(str(message.reply_to), f"{message.correlation_id}.done", script.final or b"")))

    async def _send(self, reply_to: str, correlation_id: str, body: bytes) -> None:
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, content_type="application/json", correlation_id=correlation_id),
            routing_key=reply_to, mandatory=False)


@pytest.fixture
async def approvals(amqp_url: str, topology: Topology) -> AsyncIterator[FakeApprovals]:
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        await declare_topology(channel, topology)
        fake = FakeApprovals(channel)
        queue = await channel.get_queue(topology.commands, ensure=False)
        await queue.consume(fake.on_command, no_ack=True)
        yield fake


@dataclass
class Gateway:
    client: httpx.AsyncClient
    state: GatewayState
    app: FastAPI

    def client_from(self, address: str) -> httpx.AsyncClient:
        """Another client of the same gateway, from another address."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://gateway")


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def gateway_factory(amqp_url: str, topology: Topology) -> GatewayFactory:
    """A gateway app in this process (lifespan and all), with settings overridable per test."""

    @contextlib.asynccontextmanager
    async def start(**overrides: object) -> AsyncIterator[Gateway]:
        values: dict[str, object] = {
            "env": "prod", "jwt_secret": SECRET, "amqp_url": amqp_url, "amqp_prefix": topology.prefix,
            "rpc_timeout_s": 2.0, "dispatch_wait_s": 1.0, "health_timeout_s": 0.5,
            **overrides,
        }
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:  # the topology approvals declares (the gateway waits for it otherwise)
            await declare_topology(await connection.channel(), Topology(str(values["amqp_prefix"])))
        app = create_app(GatewaySettings(**values))  # type: ignore[arg-type]
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield Gateway(client, app.state.gateway, app)

    return start


@pytest.fixture
async def gateway(approvals: FakeApprovals, gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    async with gateway_factory() as started:
        assert started.state.rpc.connected
        yield started


# ---------------------------------------------------------------- reply data as the approvals service sends it

APPROVAL_ID = "c16206b0-db8b-4441-b186-a4032785cb7c"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def accepted(status: ApprovalStatus = ApprovalStatus.PENDING, *, required: bool = True) -> ExecuteAccepted:
    return ExecuteAccepted(approval_id=APPROVAL_ID, approval_required=required, approval_status=status,
                           plan_hash="ab" * 32, request_id="order-4711", created=True)


def step_result(status: StepStatus = "succeeded") -> StepResult:
    return StepResult(step_id="post-webhook", connector="webhook", operation="post", status=status, attempts=1,
                      started_at=NOW, finished_at=NOW, http_status=200, duration_ms=41.2, result={"status": 200})


def outcome(status: ApprovalStatus = ApprovalStatus.DISPATCHED) -> DispatchOutcome:
    finished = status in (ApprovalStatus.DISPATCHED, ApprovalStatus.DISPATCH_FAILED)
    return DispatchOutcome(approval_id=APPROVAL_ID, approval_status=status,
                           dispatch_result=[step_result()] if finished else None)


def approval_view(status: ApprovalStatus = ApprovalStatus.PENDING) -> ApprovalView:
    return ApprovalView(
        id=APPROVAL_ID, request_id="order-4711", tenant_id="acme", operator_id="bob", action_id="notify.webhook",
        approval_status=status, approver_id=None, approval_note=None, payload={"message": "hi"},
        plan=[PlanStep(step_id="post-webhook", connector="webhook", operation="post", params={"body": "hi"})],
        plan_hash="ab" * 32, dispatch_result=None, created_at=NOW, updated_at=NOW, decided_at=None,
        dispatched_at=None, finished_at=None, expires_at=NOW,
        audit=[AuditEntry(event="approval.created", actor="bob", role="operator", from_status=None,
                          to_status=ApprovalStatus.PENDING, note=None, correlation_id="c-1", at=NOW)])


# ---------------------------------------------------------------- Redis, for budgets shared by gateway instances

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The local Redis (PJ_TEST_REDIS_URL): skipped locally when it is down, a failure when CI is set."""
    url = os.environ.get("PJ_TEST_REDIS_URL", DEFAULT_REDIS)
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=2):
            pass
    except OSError:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not reachable at {url} (CI is set: the real service is required)")
        pytest.skip(f"Redis is not reachable at {url}")
    return url
