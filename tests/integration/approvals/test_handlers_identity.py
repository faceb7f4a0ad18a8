"""Who may send a command, checked by pj_approvals.handlers on real AMQP messages: identities compare in
their canonical form (separation of duties cannot be dodged with `Alice` / `alice`), and a service
identity runs only its named commands for its own tenants."""

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from aio_pika.abc import AbstractChannel, AbstractQueue

from pj_approvals.catalog import load_catalog
from pj_approvals.handlers import Handlers
from pj_approvals.service import ApprovalService
from pj_approvals.settings import DEFAULT_CATALOG
from pj_common.auth import Role, TokenVerifier, mint_token
from pj_common.errors import ErrorCode
from pj_common.messages import (
    ApprovalStatus,
    ApprovalView,
    Command,
    DecideRequest,
    ExecuteAccepted,
    ExecuteRequest,
    GetApproval,
    Reply,
)
from pj_common.service_identity import ServiceGrant, ServicePrincipals
from tests.integration.approvals.test_handlers import answer, ok

KEY, ISSUER, AUDIENCE = "k" * 40, "puddlejumper", "pj-approval-gate"
SERVICE = "Billing-Bot"





@pytest.fixture
def handlers(make_service: Callable[..., ApprovalService], tenant: str, tmp_path: Path) -> Handlers:
    """Approvals with the default catalog, where notify.webhook may also be requested by a service, and one
    service identity allowed to execute and read for `tenant` only (spelt in another case on purpose)."""
    data = yaml.safe_load(DEFAULT_CATALOG.read_text())
    data["actions"]["notify.webhook"]["requesters"] = ["admin", "operator", "service"]
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(data))
    service = make_service()
    service.reload_catalog(load_catalog(tmp_path / "catalog.yaml"))
    grants = ServicePrincipals({SERVICE: ServiceGrant(commands=frozenset({"execute", "get_approval"}),
                                                      tenants=frozenset({tenant.upper()}))})
    return Handlers(service, TokenVerifier(KEY, ISSUER, AUDIENCE), grants, report_key=KEY)


def bearer(subject: str, role: Role, tenant: str) -> str:
    return mint_token(KEY, subject=subject, tenant=tenant, role=role, issuer=ISSUER, audience=AUDIENCE)


async def refused(handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, command: Command,
                  token: str) -> str:
    reply = Reply[None].model_validate_json(await answer(handlers, channel, inbox, command, token))
    assert not reply.ok and reply.error is not None
    return reply.error.code


async def test_alice_cannot_approve_the_request_of_alice(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, tenant: str) -> None:
    """Requested as `alice`, decided as ` Alice` with a role that may decide: still the same person."""
    requested = ok(await answer(handlers, channel, inbox, ExecuteRequest(action_id="notify.webhook"),
                                bearer("alice", Role.OPERATOR, tenant)), ExecuteAccepted)
    decide = DecideRequest(approval_id=requested.approval_id, status="approved")
    for spelling in (" Alice", "ALICE", "alice"):
        code = await refused(handlers, channel, inbox, decide, bearer(spelling, Role.ADMIN, tenant.upper()))
        assert code == ErrorCode.SELF_APPROVAL_FORBIDDEN, spelling
    # Someone else may, and the tenant spelt in capitals is the same tenant.
    decided = ok(await answer(handlers, channel, inbox, decide, bearer("Bob", Role.ADMIN, tenant.upper())),
                 ApprovalView)
    assert decided.approval_status is ApprovalStatus.APPROVED and decided.approver_id == "bob"


async def test_a_service_runs_its_named_commands_for_its_tenant(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, tenant: str) -> None:
    token = bearer(SERVICE.lower(), Role.SERVICE, tenant)
    created = ok(await answer(handlers, channel, inbox, ExecuteRequest(action_id="notify.webhook"), token),
                 ExecuteAccepted)
    assert created.approval_status is ApprovalStatus.PENDING
    view = ok(await answer(handlers, channel, inbox, GetApproval(approval_id=created.approval_id), token),
              ApprovalView)
    assert view.operator_id == "billing-bot"


async def test_a_service_is_forbidden_anything_else(
        handlers: Handlers, channel: AbstractChannel, inbox: AbstractQueue, tenant: str) -> None:
    execute = ExecuteRequest(action_id="notify.webhook")
    other_tenant = f"t-{uuid.uuid4().hex[:8]}"
    created = ok(await answer(handlers, channel, inbox, execute, bearer("olga", Role.OPERATOR, tenant)),
                 ExecuteAccepted)
    decide = DecideRequest(approval_id=created.approval_id, status="approved")
    attempts = [
        (decide, bearer(SERVICE, Role.SERVICE, tenant)),  # a command it is not granted
        (execute, bearer(SERVICE, Role.SERVICE, other_tenant)),  # a tenant it is not granted
        (execute, bearer("rogue-bot", Role.SERVICE, tenant)),  # a service nobody configured
        (decide, bearer(SERVICE, Role.ADMIN, tenant)),  # its subject with a person's role
    ]
    for command, token in attempts:
        assert await refused(handlers, channel, inbox, command, token) == ErrorCode.FORBIDDEN
    # Nothing was created or decided by those attempts.
    view = ok(await answer(handlers, channel, inbox, GetApproval(approval_id=created.approval_id),
                           bearer("adam", Role.ADMIN, tenant)), ApprovalView)
    assert view.approval_status is ApprovalStatus.PENDING
