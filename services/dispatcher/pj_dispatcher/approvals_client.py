"""A typed client for the approvals commands a dispatcher sends (RPC on the commands queue)."""

from typing import TypeVar

from pydantic import ValidationError

from pj_common.errors import GateError
from pj_common.messages import (
    CommandEnvelope,
    DispatchOrder,
    DispatchPlan,
    GetDispatchPlan,
    LeaseGrant,
    RenewLease,
    Reply,
)
from pj_common.transport import Retryable, RpcClient

T = TypeVar("T")


class ApprovalsClient:
    """Asks the approvals service, which owns every approval's state, what a dispatcher may do.

    `holder` is this dispatcher process's id (made once at start): approvals binds each claim to the
    first holder that confirms it and answers every other one stale."""

    def __init__(self, rpc: RpcClient, *, timeout_s: float, holder: str) -> None:
        self._rpc = rpc
        self._timeout_s = timeout_s
        self.holder = holder

    async def get_dispatch_plan(self, order: DispatchOrder) -> DispatchPlan:
        """The plan the order's claim may run, the steps already done and the claim's lease, or
        `stale` when the claim no longer holds the dispatch or another holder took it first.

        Raises `Retryable` when approvals cannot answer now, refuses or answers out of contract: the
        order is tried again later, and never run unconfirmed.
        """
        command = GetDispatchPlan(approval_id=order.approval_id, claim_token=order.claim_token, holder=self.holder)
        return await self._ask(command, Reply[DispatchPlan], what="dispatch plan")

    async def renew_lease(self, order: DispatchOrder) -> LeaseGrant:
        """Extend the order's claim: the new lease, or not granted when the claim is stale.

        Raises `Retryable` when approvals cannot answer now, refuses or answers out of contract (the
        renewal is unanswered: the lease known so far still holds until it runs out).
        """
        command = RenewLease(approval_id=order.approval_id, claim_token=order.claim_token, holder=self.holder)
        return await self._ask(command, Reply[LeaseGrant], what="lease renewal")

    async def _ask(self, command: GetDispatchPlan | RenewLease, reply_type: type[Reply[T]], *, what: str) -> T:
        envelope = CommandEnvelope(command=command)
        try:
            body = await self._rpc.call(envelope.to_json(), correlation_id=envelope.message_id,
                                        timeout=self._timeout_s)
        except GateError as exc:
            raise Retryable(f"{what} unavailable: {exc.message}") from exc
        try:
            reply = reply_type.model_validate_json(body)
        except ValidationError as exc:
            raise Retryable(f"{what} answer out of contract: {exc.error_count()} errors: "
                            f"{exc.errors()[0]['msg']}") from exc
        if not reply.ok or reply.data is None:
            raise Retryable(f"{what} refused: {reply.error}")
        return reply.data
