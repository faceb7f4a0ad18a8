"""A typed client for services that send commands straight to RabbitMQ, as the gateway does: the same
contract (pj_common.messages), the same authorization (the caller's JWT rides in every command and
approvals verifies it), the same replies, without HTTP.

It publishes each `CommandEnvelope` to `<prefix>.commands` through pj_common.transport.RpcClient
(direct reply-to, one reply consumer and a correlation-id map: the gateway's own RPC) and reads the
reply into `Reply[<the command's reply model>]`. An error reply raises the `ClientError` its code
names; no reply in time raises `Unavailable(upstream_timeout)`: the outcome is unknown, retry an
execute with the same requestId.

    async with AmqpClient("amqp://guest:guest@127.0.0.1:5672/", token=token) as approvals:
        accepted = await approvals.execute("notify.webhook", {"message": "hello"}, request_id="order-4711")
        outcome = await approvals.dispatch(approval_id)   # waits for the result, like POST /dispatch

One connection per client, not reconnected: a service that lives for days should open a client per
unit of work, or hold one under pj_common.transport.Supervisor.
"""

from functools import cache
from types import TracebackType
from typing import Any, Self, TypeVar

import aio_pika
from aio_pika.abc import AbstractConnection
from pydantic import BaseModel, ValidationError

from pj_common.errors import ErrorCode, GateError
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
    DispatchRequest,
    DryRunPlan,
    ExecuteAccepted,
    ExecuteRequest,
    GetApproval,
    GetChain,
    HealthReport,
    ListApprovals,
    PendingCount,
    Reply,
)
from pj_common.topology import Topology
from pj_common.transport import RpcClient

from .errors import ClientError, ServerError, Unavailable, error_from

ModelT = TypeVar("ModelT", bound=BaseModel)


@cache
def _reply_type(model: type[ModelT]) -> type[Reply[ModelT]]:
    return Reply[model]  # type: ignore[valid-type]  # a runtime class as a type argument


def read_reply(model: type[ModelT], body: bytes) -> Reply[ModelT]:
    """A reply body as `Reply[model]`; one outside the contract is a server error."""
    try:
        return _reply_type(model).model_validate_json(body)
    except ValidationError as exc:
        raise ServerError(ErrorCode.INTERNAL_ERROR, f"the approvals service replied outside the contract: {exc}"
                          ) from exc


def reply_data(reply: Reply[ModelT]) -> ModelT:
    """The reply's data, or its error raised as the `ClientError` of its code."""
    if not reply.ok:
        if reply.error is None:
            raise ServerError(ErrorCode.INTERNAL_ERROR, "command failed without an error")
        raise error_from(reply.error.code, reply.error.message)
    if reply.data is None:
        raise ServerError(ErrorCode.INTERNAL_ERROR, "the approvals service replied without data")
    return reply.data


def _client_error(exc: GateError) -> ClientError:
    # The transport's own failures (no broker, no reply in time) carry the same codes as replies.
    return error_from(exc.code, exc.message)


class AmqpClient:
    """Commands over RabbitMQ with one caller's token. Use as an async context manager."""

    def __init__(self, amqp_url: str, token: str | None = None, *, prefix: str = "pj", timeout: float = 5.0,
                 dispatch_wait_s: float = 10.0, correlation_id: str | None = None) -> None:
        self._url = amqp_url
        self._token = token
        self._topology = Topology(prefix)
        self._timeout = timeout
        self._dispatch_wait_s = dispatch_wait_s
        self._correlation_id = correlation_id
        self._connection: AbstractConnection | None = None
        self._rpc = RpcClient.to(self._topology, self._topology.commands)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection and the reply consumer (before any command is published)."""
        try:
            self._connection = await aio_pika.connect(self._url, timeout=10, client_properties={
                "connection_name": "pj-client"})
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            raise Unavailable(ErrorCode.BROKER_UNAVAILABLE, f"cannot reach RabbitMQ: {type(exc).__name__}") from exc
        self._connection.close_callbacks.add(lambda *_: self._rpc.detach())
        await self._rpc.attach(self._connection)

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self._connection = None

    def _envelope(self, command: Command) -> CommandEnvelope:
        if self._correlation_id is None:
            return CommandEnvelope(command=command, token=self._token)
        return CommandEnvelope(command=command, token=self._token, correlation_id=self._correlation_id)

    async def call(self, command: Command, model: type[ModelT]) -> ModelT:
        """Send one command and return its reply's data as `model` (the command's `reply_model`)."""
        envelope = self._envelope(command)
        try:
            body = await self._rpc.call(envelope.to_json(), correlation_id=envelope.message_id,
                                        timeout=self._timeout)
        except GateError as exc:
            raise _client_error(exc) from exc
        return reply_data(read_reply(model, body))

    async def call_and_wait(self, command: Command, model: type[ModelT]) -> tuple[ModelT, DispatchOutcome | None]:
        """Send a command that may start a dispatch (execute of a launch-tier action, dispatch) and wait
        up to `dispatch_wait_s` for the dispatch's final outcome: (first reply's data, outcome or None)."""
        envelope = self._envelope(command)
        first: list[Reply[ModelT]] = []

        def promises_follow_up(body: bytes) -> bool:
            first.append(read_reply(model, body))
            return first[0].follow_up

        try:
            answer = await self._rpc.request(envelope.to_json(), correlation_id=envelope.message_id,
                                             timeout=self._timeout, follow_up_s=self._dispatch_wait_s,
                                             is_follow_up=promises_follow_up)
        except GateError as exc:
            raise _client_error(exc) from exc
        data = reply_data(first[0] if first else read_reply(model, answer.body))
        if answer.done:
            return data, reply_data(read_reply(DispatchOutcome, answer.body))
        return data, None

    async def execute(self, action_id: str, payload: dict[str, Any], *, request_id: str | None = None
                      ) -> ExecuteAccepted | DispatchOutcome:
        """Ask for an action: the stored request, or a launch-tier action's outcome if it finished in time."""
        command = ExecuteRequest(action_id=action_id, mode="execute", request_id=request_id, payload=payload)
        accepted, outcome = await self.call_and_wait(command, ExecuteAccepted)
        return outcome if outcome is not None else accepted

    async def dry_run(self, action_id: str, payload: dict[str, Any]) -> DryRunPlan:
        """The plan an execute would make; nothing is stored."""
        return await self.call(ExecuteRequest(action_id=action_id, mode="dry-run", payload=payload), DryRunPlan)

    async def list_approvals(self, *, status: ApprovalStatus | None = None, limit: int = 50,
                             offset: int = 0) -> ApprovalPage:
        return await self.call(ListApprovals(status=status, limit=limit, offset=offset), ApprovalPage)

    async def count_pending(self) -> PendingCount:
        return await self.call(CountPending(), PendingCount)

    async def get_approval(self, approval_id: str) -> ApprovalView:
        return await self.call(GetApproval(approval_id=approval_id), ApprovalView)

    async def get_chain(self, approval_id: str) -> ChainView:
        return await self.call(GetChain(approval_id=approval_id), ChainView)

    async def approve(self, approval_id: str, *, note: str | None = None) -> ApprovalView:
        return await self.call(DecideRequest(approval_id=approval_id, status="approved", note=note), ApprovalView)

    async def reject(self, approval_id: str, *, note: str) -> ApprovalView:
        return await self.call(DecideRequest(approval_id=approval_id, status="rejected", note=note), ApprovalView)

    async def dispatch(self, approval_id: str, *, dry_run: bool = False) -> DispatchOutcome:
        """Dispatch and wait up to `dispatch_wait_s` for the outcome (else `dispatching`); a dry run at once."""
        command = DispatchRequest(approval_id=approval_id, dry_run=dry_run)
        if dry_run:
            return await self.call(command, DispatchOutcome)
        started, outcome = await self.call_and_wait(command, DispatchOutcome)
        return outcome if outcome is not None else started

    async def health(self) -> HealthReport:
        """The approvals service's own check (its database), as the gateway's /health asks it."""
        return await self.call(CheckHealth(), HealthReport)

