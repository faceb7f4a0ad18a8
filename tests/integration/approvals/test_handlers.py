"""pj_approvals.handlers with real AMQP messages: a command in, a `Reply` of the command's
`reply_model` out; a step report that ends a dispatch notifies the waiting caller with a
`Reply[DispatchOutcome]`."""

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import aio_pika
import pytest
import yaml
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import BaseModel

from pj_approvals.catalog import load_catalog
from pj_approvals.handlers import Handlers, lease_routes, routes
from pj_approvals.service import ApprovalService
from pj_approvals.settings import DEFAULT_CATALOG
from pj_common.auth import Role, TokenVerifier, mint_token
from pj_common.errors import ErrorCode
from pj_common.messages import (
    ApprovalPage,
    ApprovalStatus,
    ApprovalView,
    ChainView,
    CheckHealth,
    Command,
    CommandEnvelope,
    CountPending,
    DecideRequest,
    DispatchOutcome,
    DispatchPlan,
    DispatchRequest,
    DryRunPlan,
    ExecuteAccepted,
    ExecuteRequest,
    GetApproval,
    GetChain,
    GetDispatchPlan,
    HealthReport,
    ListApprovals,
    MetricsText,
    PendingCount,
    ReadMetrics,
    Reply,
    ReplyAddress,
    StepReport,
    StepResult,
)
from pj_common.settings import DEV_DISPATCH_SIGNING_KEY
from pj_common.signing import signature_headers
from pj_common.transport import Permanent

KEY, ISSUER, AUDIENCE = "k" * 40, "puddlejumper", "pj-approval-gate"





@pytest.fixture
def token(tenant: str) -> Callable[[Role], str]:
    def mint(role: Role, subject: str | None = None) -> str:
        return mint_token(KEY, subject=subject or f"{role}-{uuid.uuid4().hex[:6]}", tenant=tenant, role=role,
                          issuer=ISSUER, audience=AUDIENCE)
    return mint


@pytest.fixture
def handlers(make_service: Callable[..., ApprovalService]) -> Handlers:
    return Handlers(make_service(), TokenVerifier(KEY, ISSUER, AUDIENCE), report_key=DEV_DISPATCH_SIGNING_KEY)


async def incoming(channel: AbstractChannel, queue: AbstractQueue, body: bytes, *, reply_to: str | None = None,
                   correlation_id: str | None = None, headers: dict[str, Any] | None = None
                   ) -> AbstractIncomingMessage:
    """`body` published to the broker and received back: the message a consumer would be handed."""
    await channel.default_exchange.publish(
        aio_pika.Message(body, reply_to=reply_to, correlation_id=correlation_id, headers=headers),
        routing_key=queue.name)
    for _ in range(250):
        message = await queue.get(no_ack=True, fail=False, timeout=5)
        if message is not None:
            return message
        await asyncio.sleep(0.02)
    raise AssertionError("the message did not come back")


async def answer(handlers: Handlers, channel: AbstractChannel, queue: AbstractQueue, command: Command,
                 token: str | None = None, *, leases: bool = False) -> bytes:
    envelope = CommandEnvelope(command=command, token=token)
    return (await handlers.answer(await incoming(channel, queue, envelope.to_json()), leases=leases)).to_json()


def ok(raw: bytes, model: Any) -> Any:
    """Parse a reply as `Reply[model]` (as the gateway does) and return its data."""
    parsed = Reply[model].model_validate_json(raw)
    assert parsed.ok and parsed.error is None, parsed.error
    assert isinstance(parsed.data, model)
    return parsed.data


async def test_every_command_is_answered_with_its_reply_model(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, token: Callable[..., str]) -> None:
    operator, admin = token(Role.OPERATOR), token(Role.ADMIN)

    async def ask(command: Command, bearer: str | None = None, *, leases: bool = False) -> bytes:
        return await answer(handlers, channel, inbox, command, bearer, leases=leases)

    created = ok(await ask(ExecuteRequest(action_id="notify.webhook", payload={"n": 1}), operator), ExecuteAccepted)
    assert created.approval_status is ApprovalStatus.PENDING and created.created
    plan = ok(await ask(ExecuteRequest(action_id="notify.webhook", mode="dry-run"), operator), DryRunPlan)
    assert plan.plan[0].connector == "webhook"
    aid = created.approval_id
    view = ok(await ask(GetApproval(approval_id=aid), admin), ApprovalView)
    assert view.id == aid and view.audit is not None
    assert "audit" in json.loads(await ask(GetApproval(approval_id=aid), admin))["data"]
    page = ok(await ask(ListApprovals(status=ApprovalStatus.PENDING), admin), ApprovalPage)
    assert [a.id for a in page.approvals] == [aid] and page.pending_count == 1
    assert "audit" not in json.loads(await ask(ListApprovals(), admin))["data"]["approvals"][0]
    assert ok(await ask(CountPending(), admin), PendingCount).pending_count == 1
    decided = ok(await ask(DecideRequest(approval_id=aid, status="approved"), admin), ApprovalView)
    assert decided.approval_status is ApprovalStatus.APPROVED
    chain = ok(await ask(GetChain(approval_id=aid), admin), ChainView)
    assert [s.state for s in chain.stages] == ["approved"]
    dry = ok(await ask(DispatchRequest(approval_id=aid, dry_run=True), admin), DispatchOutcome)
    assert dry.dry_run and dry.dispatch_result is not None and dry.dispatch_result[0].status == "simulated"
    raw = await ask(DispatchRequest(approval_id=aid), admin)
    started = ok(raw, DispatchOutcome)
    assert started.approval_status is ApprovalStatus.DISPATCHING and json.loads(raw)["followUp"] is True
    lease_request = GetDispatchPlan(approval_id=aid, claim_token=str(uuid.uuid4()), holder="d-1")
    stale = ok(await ask(lease_request, leases=True), DispatchPlan)
    assert stale.stale
    assert ok(await ask(CheckHealth()), HealthReport).database.status == "ok"
    assert "approvals_created_total" in ok(await ask(ReadMetrics()), MetricsText).text


async def test_each_queue_takes_its_own_commands_only(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, token: Callable[..., str]) -> None:
    """Lease requests come on the leases queue, which a dispatcher's broker user may feed; commands on the
    commands queue. Either one sent the other way is refused, with the token or without."""
    lease_request = GetDispatchPlan(approval_id=str(uuid.uuid4()), claim_token=str(uuid.uuid4()), holder="d-1")
    for command, bearer, leases in ((lease_request, None, False),
                                    (CountPending(), token(Role.ADMIN), True), (CheckHealth(), None, True)):
        refused = Reply[Any].model_validate_json(await answer(handlers, channel, inbox, command, bearer,
                                                              leases=leases))
        assert not refused.ok and refused.error is not None and refused.error.code == "forbidden", command


async def test_a_launch_tier_execute_says_a_follow_up_comes(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, token: Callable[..., str],
        tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_CATALOG.read_text())
    data["actions"]["notify.now"] = {**data["actions"]["notify.webhook"], "tier": "launch"}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    handlers._service.reload_catalog(load_catalog(path))
    raw = await answer(handlers, channel, inbox, ExecuteRequest(action_id="notify.now"), token(Role.OPERATOR))
    reply = Reply[ExecuteAccepted].model_validate_json(raw)
    assert reply.ok and reply.follow_up and reply.data is not None
    assert reply.data.approval_status is ApprovalStatus.DISPATCHING and not reply.data.approval_required


@pytest.mark.parametrize(("command", "code"), [
    (GetApproval(approval_id=str(uuid.uuid4())), ErrorCode.NOT_FOUND),
    (CountPending(), ErrorCode.UNAUTHORIZED),
])
async def test_a_failure_is_an_error_reply_with_its_code(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, token: Callable[..., str],
        command: Command, code: ErrorCode) -> None:
    bearer = token(Role.ADMIN) if code is not ErrorCode.UNAUTHORIZED else None
    reply = Reply[Any].model_validate_json(await answer(handlers, channel, inbox, command, bearer))
    assert not reply.ok and reply.data is None and reply.error is not None and reply.error.code == code


async def test_an_invalid_command_is_a_validation_error(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue) -> None:
    message = await incoming(channel, inbox, json.dumps({"command": {"name": "launch_missiles"}}).encode())
    reply = await handlers.answer(message)
    assert not reply.ok and reply.error is not None and reply.error.code == ErrorCode.VALIDATION_ERROR


async def test_an_answer_that_breaks_the_contract_is_never_sent(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue) -> None:
    class Wrong(BaseModel):
        text: str

    async def wrong(_: Any, __: Any) -> BaseModel:
        return Wrong(text="not a HealthReport")

    handlers._commands[CheckHealth] = wrong
    reply = Reply[Any].model_validate_json(await answer(handlers, channel, inbox, CheckHealth()))
    assert not reply.ok and reply.error is not None and reply.error.code == ErrorCode.INTERNAL_ERROR


def test_every_command_has_a_route(make_service: Callable[..., ApprovalService]) -> None:
    commands = get_args(get_args(Command)[0])  # the members of the Annotated union
    service = make_service()
    assert routes(service).keys() | lease_routes(service).keys() == set(commands)
    assert not routes(service).keys() & lease_routes(service).keys()


async def test_the_report_that_ends_a_dispatch_notifies_the_waiting_caller(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, token: Callable[..., str],
        tenant: str, outbox: Any) -> None:
    operator, admin = token(Role.OPERATOR), token(Role.ADMIN)
    created = ok(await answer(handlers, channel, inbox, ExecuteRequest(action_id="notify.webhook"), operator),
                 ExecuteAccepted)
    await answer(handlers, channel, inbox, DecideRequest(approval_id=created.approval_id, status="approved"), admin)
    waiting = await channel.declare_queue(exclusive=True, auto_delete=True)
    # The caller's dispatch command carries its reply address; the order passes it on to the report.
    command = CommandEnvelope(command=DispatchRequest(approval_id=created.approval_id), token=admin)
    message = await incoming(channel, inbox, command.to_json(), reply_to=waiting.name, correlation_id="call-1")
    assert (await handlers.answer(message)).follow_up
    order = await outbox.last(created.approval_id)
    assert order.notify == ReplyAddress(reply_to=waiting.name, correlation_id="call-1")
    handlers.reply_channel = channel
    done = StepResult(step_id="post-webhook", connector="webhook", operation="post", status="succeeded", attempts=1)
    report = StepReport(approval_id=created.approval_id, tenant_id=tenant, claim_token=order.claim_token, step=done,
                        plan_status="dispatched", results=[done], notify=order.notify)
    body = report.to_json()
    for forged in (None, signature_headers(body, "not-the-dispatchers-key-0123456789abcdef")):
        with pytest.raises(Permanent, match="signature"):  # dead-lettered by the transport, nothing recorded
            await handlers.on_report(await incoming(channel, inbox, body, headers=forged))
    assert await waiting.get(no_ack=True, fail=False) is None  # a recorded final report would have answered
    await handlers.on_report(await incoming(channel, inbox, body,
                                            headers=signature_headers(body, DEV_DISPATCH_SIGNING_KEY)))
    final = await waiting.get(no_ack=True, timeout=5)
    assert final.correlation_id == "call-1.done"
    outcome = ok(final.body, DispatchOutcome)
    assert outcome.approval_id == created.approval_id and outcome.approval_status is ApprovalStatus.DISPATCHED
    assert outcome.dispatch_result == [done]
