"""AMQP message -> service call -> reply. Commands are always answered (and acked); step reports
are acked only after their effect is committed.

Each command type has one route here, and every answer is checked against the command's
`reply_model` before it goes out, so no reply leaves with a shape the contract does not name.
"""

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pydantic import BaseModel, ValidationError

from pj_common.auth import Principal, TokenVerifier
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import (
    CheckHealth,
    CommandEnvelope,
    CountPending,
    DecideRequest,
    DispatchOutcome,
    DispatchRequest,
    ErrorBody,
    ExecuteRequest,
    GetApproval,
    GetChain,
    GetDispatchPlan,
    ListApprovals,
    ReadMetrics,
    RenewLease,
    Reply,
    ReplyAddress,
    StepReport,
)
from pj_common.service_identity import ServicePrincipals
from pj_common.signing import is_signed
from pj_common.transport import Permanent, reply, send_reply

from .service import ApprovalService, DispatchStarted

log = logging.getLogger("pj.approvals.handlers")

MAX_NOTE = 4000  # DecideRequest.note's max_length: the mark must not push a note over it


def error_reply(code: str, message: str) -> Reply[Any]:
    return Reply[Any](ok=False, error=ErrorBody(code=code, message=message))


@dataclass(frozen=True, slots=True)
class Call:
    """One command as a route sees it: who sent it (verified when a route asks) and where a dispatch's
    final outcome goes."""

    envelope: CommandEnvelope
    message: AbstractIncomingMessage
    verifier: TokenVerifier
    services: ServicePrincipals

    @property
    def principal(self) -> Principal:
        """The verified sender; a service identity only for a command and tenant of its grant. With
        `onBehalf` (a decision only), the person a permitted service decides for."""
        principal = self.verifier.verify(self.envelope.token)
        on_behalf = self.envelope.on_behalf
        if on_behalf is None:
            self.services.authorize(principal, self.envelope.command.name)
            return principal
        if not isinstance(self.envelope.command, DecideRequest):
            raise GateError(ErrorCode.FORBIDDEN, "onBehalf is accepted with a decision only")
        return self.services.on_behalf(principal, subject=on_behalf.subject, tenant=on_behalf.tenant,
                                       role=on_behalf.role)

    def decision(self, command: DecideRequest) -> DecideRequest:
        """The decision as recorded: one made elsewhere (Slack) says so in its note, so the audit trail
        shows where each decision came from."""
        on_behalf = self.envelope.on_behalf
        if on_behalf is None:
            return command
        mark = f"via {on_behalf.via.capitalize()}"
        room = MAX_NOTE - len(mark) - 2
        note = f"{mark}: {command.note[:room]}" if command.note else mark
        return command.model_copy(update={"note": note})

    @property
    def correlation_id(self) -> str:
        return self.envelope.correlation_id

    @property
    def notify(self) -> ReplyAddress | None:
        """The caller's reply-to, if it is waiting for a dispatch's final outcome."""
        if self.message.reply_to and self.message.correlation_id:
            return ReplyAddress(reply_to=self.message.reply_to, correlation_id=self.message.correlation_id)
        return None


Result = BaseModel | DispatchStarted
Route = Callable[[Any, Call], Awaitable[Result]]


def routes(svc: ApprovalService) -> dict[type[BaseModel], Route]:
    """Command type -> the service call that answers it, for the commands queue. Health and metrics
    need no token; every other route verifies one."""
    return {
        CheckHealth: lambda _, call: svc.health(),
        ReadMetrics: lambda _, call: svc.metrics(),
        ExecuteRequest: lambda c, call: svc.execute(call.principal, c, call.correlation_id, notify=call.notify,
                                                    message_id=call.envelope.message_id),
        ListApprovals: lambda c, call: svc.list_approvals(call.principal, c),
        GetApproval: lambda c, call: svc.get_approval(call.principal, c.approval_id),
        GetChain: lambda c, call: svc.chain(call.principal, c.approval_id),
        CountPending: lambda _, call: svc.count_pending(call.principal),
        DecideRequest: lambda c, call: svc.decide(call.principal, call.decision(c), call.correlation_id),
        DispatchRequest: lambda c, call: svc.dispatch(call.principal, c, call.correlation_id, notify=call.notify),
    }


def lease_routes(svc: ApprovalService) -> dict[type[BaseModel], Route]:
    """The dispatchers' RPCs, for the leases queue: authorized by the claim token each carries (only the
    dispatcher that received the order knows it), not by a user token."""
    return {
        GetDispatchPlan: lambda c, call: svc.dispatch_plan(c.approval_id, c.claim_token, c.holder),
        RenewLease: lambda c, call: svc.renew_lease(c.approval_id, c.claim_token, c.holder),
    }


class Handlers:
    def __init__(self, service: ApprovalService, verifier: TokenVerifier,
                 services: ServicePrincipals | None = None, *, report_key: str) -> None:
        self._service = service
        self._verifier = verifier
        self._report_key = report_key  # PJ_DISPATCH_SIGNING_KEY: dispatchers sign their step reports with it
        self._services = services or ServicePrincipals()
        self._commands = routes(service)
        self._leases = lease_routes(service)
        self.reply_channel: AbstractChannel | None = None

    async def on_command(self, message: AbstractIncomingMessage) -> None:
        """Run one command of the commands queue and answer it; every failure becomes an error reply with a
        stable code."""
        await self._answer_on(message)

    async def on_lease(self, message: AbstractIncomingMessage) -> None:
        """Run one dispatcher RPC of the leases queue and answer it, as `on_command` does."""
        await self._answer_on(message, leases=True)

    async def _answer_on(self, message: AbstractIncomingMessage, *, leases: bool = False) -> None:
        answer = await self.answer(message, leases=leases)
        channel = self.reply_channel
        if channel is None or not message.reply_to:
            return
        try:
            await reply(channel, message, answer.to_json())
        except Exception:  # the effect is committed; a redelivery would only repeat the command
            log.warning("reply not sent", exc_info=True, extra={"scope": "command.reply_failed"})

    async def answer(self, message: AbstractIncomingMessage, *, leases: bool = False) -> Reply[Any]:
        """The reply to one command of the commands queue (or, with `leases`, of the leases queue)."""
        try:
            envelope = CommandEnvelope.model_validate_json(message.body)
        except ValidationError as exc:
            return error_reply(ErrorCode.VALIDATION_ERROR, f"invalid command: {exc.errors(include_url=False)}")
        try:
            result = await self._run(envelope, message, self._leases if leases else self._commands)
        except GateError as exc:
            return error_reply(exc.code, exc.message)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            log.warning("database unavailable: %r", exc, extra={"scope": "db.unavailable"})
            return error_reply(ErrorCode.DATABASE_UNAVAILABLE, "the approvals database is unavailable")
        except Exception:
            log.exception("command failed", extra={"scope": "command.failed",
                                                   "correlationId": envelope.correlation_id})
            return error_reply(ErrorCode.INTERNAL_ERROR, "internal error")
        data = result.data if isinstance(result, DispatchStarted) else result
        expected = type(envelope.command).reply_model
        if not isinstance(data, expected):  # a bug here, never the caller's fault: say so, send no wrong shape
            log.error("reply does not match the contract", extra={
                "scope": "command.reply_mismatch", "command": envelope.command.name,
                "replyType": type(data).__name__, "correlationId": envelope.correlation_id})
            return error_reply(ErrorCode.INTERNAL_ERROR, "internal error")
        return Reply[Any](ok=True, data=data, follow_up=isinstance(result, DispatchStarted))

    async def _run(self, envelope: CommandEnvelope, message: AbstractIncomingMessage,
                   table: dict[type[BaseModel], Route]) -> Result:
        command = envelope.command
        route = table.get(type(command))
        if route is None:
            # Each queue takes its own commands only: the broker lets a dispatcher's user publish to the
            # leases queue and no other, so no command may come in that way (and no lease request
            # through the commands queue, where every gateway and service may publish).
            raise GateError(ErrorCode.FORBIDDEN, f"{command.name} is not accepted on this queue")
        # A JWKS key id seen for the first time is fetched here, asynchronously; verify itself is synchronous.
        await self._verifier.prepare(envelope.token)
        return await route(command, Call(envelope, message, self._verifier, self._services))

    async def on_report(self, message: AbstractIncomingMessage) -> None:
        """Record a step report; when it ends the dispatch, tell the waiting caller (if any).

        Only a report a dispatcher signed is read: an unsigned or forged one is dead-lettered with why
        (the transport does it on `Permanent`) and changes nothing."""
        if not is_signed(message.body, message.headers, self._report_key):
            raise Permanent("step report without a valid signature: only dispatchers holding "
                            "PJ_DISPATCH_SIGNING_KEY report steps")
        report = StepReport.model_validate_json(message.body)
        finished = await self._service.record_report(report)
        channel = self.reply_channel
        if finished is None or report.notify is None or channel is None:
            return
        final = Reply[DispatchOutcome](ok=True, data=finished)
        try:
            await send_reply(channel, report.notify.reply_to, final.to_json(),
                             correlation_id=report.notify.correlation_id + ".done")
        except Exception:  # the caller may be gone; the outcome is stored either way
            log.warning("could not notify the dispatch caller", exc_info=True,
                        extra={"scope": "approval.dispatch.notify_failed"})
