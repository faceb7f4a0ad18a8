"""Decisions on behalf of a person (`CommandEnvelope.onBehalf`), checked by pj_approvals.handlers on real AMQP
messages: only a service identity granted `decide_on_behalf` sends them, only for its grant's tenants and
only with `decide`; the decision is then the person's, under every rule, and its note says where it came from."""

import uuid
from collections.abc import Callable

import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from pj_approvals.handlers import Handlers
from pj_approvals.service import ApprovalService
from pj_common.auth import Role, TokenVerifier, mint_token
from pj_common.errors import ErrorCode
from pj_common.messages import (
    ApprovalStatus,
    ApprovalView,
    Command,
    CommandEnvelope,
    DecideRequest,
    ExecuteAccepted,
    ExecuteRequest,
    GetApproval,
    OnBehalf,
    Reply,
)
from pj_common.service_identity import ServiceGrant, ServicePrincipals
from tests.integration.approvals.test_handlers import answer, incoming, ok

KEY, ISSUER, AUDIENCE = "k" * 40, "puddlejumper", "pj-approval-gate"
SLACK = "pj-slack"





@pytest.fixture
def handlers(make_service: Callable[..., ApprovalService], tenant: str) -> Handlers:
    """Approvals with the default catalog; `pj-slack` may decide on behalf of `tenant`'s people, and
    `report-bot` may decide (as itself) but not on anyone's behalf."""
    grants = ServicePrincipals({
        SLACK: ServiceGrant(commands=frozenset({"decide_on_behalf"}), tenants=frozenset({tenant})),
        "report-bot": ServiceGrant(commands=frozenset({"decide", "get_approval"}), tenants=frozenset({tenant})),
    })
    return Handlers(make_service(), TokenVerifier(KEY, ISSUER, AUDIENCE), grants, report_key=KEY)


def bearer(subject: str, role: Role, tenant: str) -> str:
    return mint_token(KEY, subject=subject, tenant=tenant, role=role, issuer=ISSUER, audience=AUDIENCE)


async def send(handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, command: Command, *,
               token: str, on_behalf: OnBehalf) -> Reply[ApprovalView]:
    envelope = CommandEnvelope(command=command, token=token, on_behalf=on_behalf)
    raw = (await handlers.answer(await incoming(channel, inbox, envelope.to_json()))).to_json()
    return Reply[ApprovalView].model_validate_json(raw)


def person(subject: str, tenant: str, role: Role = Role.ADMIN) -> OnBehalf:
    return OnBehalf(subject=subject, role=role, tenant=tenant, via="slack")


async def requested(handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, tenant: str) -> str:
    created = ok(await answer(handlers, channel, inbox, ExecuteRequest(action_id="notify.webhook"),
                              bearer("olga", Role.OPERATOR, tenant)), ExecuteAccepted)
    return str(created.approval_id)


async def test_a_permitted_service_decides_as_the_person_and_the_note_says_slack(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, tenant: str) -> None:
    aid = await requested(handlers, channel, inbox, tenant)
    reply = await send(handlers, channel, inbox, DecideRequest(approval_id=aid, status="rejected", note="no"),
                       token=bearer(SLACK, Role.SERVICE, tenant), on_behalf=person("Alice", tenant))
    assert reply.ok and reply.data is not None, reply.error
    assert reply.data.approval_status is ApprovalStatus.REJECTED and reply.data.approver_id == "alice"
    assert reply.data.approval_note == "via Slack: no"


async def test_the_persons_rules_apply(handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue,
                                       tenant: str) -> None:
    aid = await requested(handlers, channel, inbox, tenant)
    decide = DecideRequest(approval_id=aid, status="approved")
    token = bearer(SLACK, Role.SERVICE, tenant)
    cases = [(person("olga", tenant), ErrorCode.SELF_APPROVAL_FORBIDDEN),  # the requester
             (person("vera", tenant, Role.VIEWER), ErrorCode.FORBIDDEN)]  # a role that may not decide
    for who, code in cases:
        reply = await send(handlers, channel, inbox, decide, token=token, on_behalf=who)
        assert not reply.ok and reply.error is not None and reply.error.code == code, who


async def test_on_behalf_is_refused_to_anyone_else_and_for_anything_else(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, tenant: str) -> None:
    aid = await requested(handlers, channel, inbox, tenant)
    decide = DecideRequest(approval_id=aid, status="approved")
    other = f"t-{uuid.uuid4().hex[:8]}"
    attempts: list[tuple[Command, str, OnBehalf]] = [
        (decide, bearer("report-bot", Role.SERVICE, tenant), person("alice", tenant)),  # no such grant
        (decide, bearer("mallory", Role.ADMIN, tenant), person("alice", tenant)),  # a person, not a service
        (decide, bearer(SLACK, Role.SERVICE, tenant), person("alice", other)),  # a tenant outside the grant
        (decide, bearer(SLACK, Role.SERVICE, other), person("alice", other)),  # its token for that tenant too
        (decide, bearer(SLACK, Role.SERVICE, tenant), person("bot", tenant, Role.SERVICE)),  # for a service
        (GetApproval(approval_id=aid), bearer(SLACK, Role.SERVICE, tenant), person("alice", tenant)),  # not decide
    ]
    for command, token, who in attempts:
        reply = await send(handlers, channel, inbox, command, token=token, on_behalf=who)
        assert not reply.ok and reply.error is not None and reply.error.code == ErrorCode.FORBIDDEN, (token, who)
    view = ok(await answer(handlers, channel, inbox, GetApproval(approval_id=aid),
                           bearer("adam", Role.ADMIN, tenant)), ApprovalView)
    assert view.approval_status is ApprovalStatus.PENDING  # nothing was decided
