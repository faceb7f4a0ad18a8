"""The typed clients against the whole system: the HTTP client through the gateway, the AMQP client
straight to the approvals service, both returning the contract's models and raising typed errors."""

import uuid

import pytest

from pj_client.amqp import AmqpClient
from pj_client.errors import Conflict, Forbidden, NotFound, Unauthorized, Unavailable
from pj_client.http import AsyncGatewayClient, GatewayClient
from pj_common.broker_access import Service
from pj_common.messages import ApprovalStatus, DispatchOutcome, ExecuteAccepted
from tests.support.system import System, free_port

from .conftest import token


def new_tenant() -> str:
    return f"client-{uuid.uuid4().hex[:8]}"


async def test_http_client_lifecycle(system: System) -> None:
    t = new_tenant()
    async with (AsyncGatewayClient(system.base_url, token("operator", "olga", t)) as olga,
                AsyncGatewayClient(system.base_url, token("admin", "alice", t)) as alice):
        accepted = await olga.execute("notify.webhook", {"message": "typed"}, request_id=str(uuid.uuid4()))
        assert isinstance(accepted, ExecuteAccepted) and accepted.approval_status == ApprovalStatus.PENDING
        assert (await alice.count_pending()).pending_count == 1
        plan = await olga.dry_run("notify.webhook", {"message": "typed"})
        assert plan.plan_hash == accepted.plan_hash

        with pytest.raises(Forbidden) as refused:
            await olga.approve(accepted.approval_id)  # an operator decides nothing
        assert (refused.value.code, refused.value.status) == ("forbidden", 403)
        approved = await alice.approve(accepted.approval_id, note="fine")
        assert approved.approval_status == ApprovalStatus.APPROVED
        chain = await alice.get_chain(accepted.approval_id)
        assert [d.approver_id for stage in chain.stages for d in stage.decisions] == ["alice"]

        outcome = await alice.dispatch(accepted.approval_id)
        assert outcome.approval_status == ApprovalStatus.DISPATCHED
        with pytest.raises(Conflict) as again:
            await alice.dispatch(accepted.approval_id)
        assert again.value.code == "invalid_state" and again.value.correlation_id
        with pytest.raises(NotFound):
            await alice.get_approval(str(uuid.uuid4()))
        assert (await alice.health()).status == "ok"

    with GatewayClient(system.base_url, "not-a-token") as stranger, pytest.raises(Unauthorized):
        stranger.list_approvals()
    with GatewayClient(f"http://127.0.0.1:{free_port()}") as nowhere, pytest.raises(Unavailable):
        nowhere.health()


async def test_amqp_client_sends_the_same_commands_with_the_same_rules(system: System) -> None:
    t = new_tenant()
    assert system.broker_users is not None  # as any other service would: with the client's broker user
    url, prefix = system.broker_users[Service.CLIENT], system.env["PJ_AMQP_PREFIX"]
    async with (AmqpClient(url, token("operator", "olga", t), prefix=prefix) as olga,
                AmqpClient(url, token("admin", "alice", t), prefix=prefix, dispatch_wait_s=10) as alice):
        request_id = str(uuid.uuid4())
        accepted = await olga.execute("notify.webhook", {"message": "over amqp"}, request_id=request_id)
        assert isinstance(accepted, ExecuteAccepted) and accepted.created
        repeated = await olga.execute("notify.webhook", {"message": "over amqp"}, request_id=request_id)
        assert isinstance(repeated, ExecuteAccepted) and repeated.approval_id == accepted.approval_id
        assert not repeated.created

        page = await alice.list_approvals(status=ApprovalStatus.PENDING)
        assert [a.id for a in page.approvals] == [accepted.approval_id]
        with pytest.raises(Forbidden) as own:
            await olga.approve(accepted.approval_id)
        assert own.value.status is None  # no HTTP in between: the code is what counts
        await alice.approve(accepted.approval_id, note="over amqp")

        outcome = await alice.dispatch(accepted.approval_id)  # waits for the final reply
        assert isinstance(outcome, DispatchOutcome) and outcome.approval_status == ApprovalStatus.DISPATCHED
        assert outcome.dispatch_result is not None and outcome.dispatch_result[0].status == "succeeded"
        view = await alice.get_approval(accepted.approval_id)
        assert view.approval_status == ApprovalStatus.DISPATCHED
        with pytest.raises(NotFound):
            await alice.get_chain(str(uuid.uuid4()))
        assert (await alice.health()).database.status == "ok"

    with pytest.raises(Unavailable):
        await AmqpClient(f"amqp://guest:guest@127.0.0.1:{free_port()}/").connect()
