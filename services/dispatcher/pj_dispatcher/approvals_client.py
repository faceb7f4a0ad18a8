"""A typed client for the approvals commands a dispatcher sends (RPC on the commands queue)."""

from pydantic import ValidationError

from pj_common.errors import GateError
from pj_common.messages import CommandEnvelope, DispatchOrder, DispatchPlan, GetDispatchPlan, Reply
from pj_common.transport import Retryable, RpcClient


class ApprovalsClient:
    """Asks the approvals service, which owns every approval's state, what a dispatcher may do."""

    def __init__(self, rpc: RpcClient, *, timeout_s: float) -> None:
        self._rpc = rpc
        self._timeout_s = timeout_s

    async def get_dispatch_plan(self, order: DispatchOrder) -> DispatchPlan:
        """The plan the order's claim may run and the steps already done, or `stale` when the claim
        no longer holds the dispatch.

        Raises `Retryable` when approvals cannot answer now, refuses or answers out of contract: the
        order is tried again later, and never run on its own word.
        """
        envelope = CommandEnvelope(command=GetDispatchPlan(approval_id=order.approval_id,
                                                           claim_token=order.claim_token))
        try:
            body = await self._rpc.call(envelope.to_json(), correlation_id=envelope.message_id,
                                        timeout=self._timeout_s)
        except GateError as exc:
            raise Retryable(f"dispatch plan unavailable: {exc.message}") from exc
        try:
            reply = Reply[DispatchPlan].model_validate_json(body)
        except ValidationError as exc:
            raise Retryable(f"dispatch plan answer out of contract: {exc.error_count()} errors: "
                            f"{exc.errors()[0]['msg']}") from exc
        if not reply.ok or reply.data is None:
            raise Retryable(f"dispatch plan refused: {reply.error}")
        return reply.data
