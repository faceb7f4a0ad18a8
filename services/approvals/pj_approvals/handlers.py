"""AMQP message -> service call -> reply. Commands are always answered (and acked); step reports
are acked only after their effect is committed."""

import logging
from typing import Any

import psycopg
import psycopg_pool
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pydantic import ValidationError

from pj_common.auth import Principal, TokenVerifier
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import (
    CheckHealth,
    CommandEnvelope,
    CountPending,
    DecideRequest,
    DispatchRequest,
    ErrorBody,
    ExecuteRequest,
    GetApproval,
    GetChain,
    GetDispatchPlan,
    ListApprovals,
    ReadMetrics,
    Reply,
    ReplyAddress,
    StepReport,
)
from pj_common.transport import reply, send_reply

from .service import ApprovalService, DispatchStarted

log = logging.getLogger("pj.approvals.handlers")


def error_reply(code: str, message: str) -> Reply:
    return Reply(ok=False, error=ErrorBody(code=code, message=message))


def _reply_address(message: AbstractIncomingMessage) -> ReplyAddress | None:
    """Where a dispatch's final outcome goes: the caller's reply-to, if it is waiting for one."""
    if message.reply_to and message.correlation_id:
        return ReplyAddress(reply_to=message.reply_to, correlation_id=message.correlation_id)
    return None


class Handlers:
    def __init__(self, service: ApprovalService, verifier: TokenVerifier) -> None:
        self._service = service
        self._verifier = verifier
        self.reply_channel: AbstractChannel | None = None

    async def on_command(self, message: AbstractIncomingMessage) -> None:
        """Run one command and answer it; every failure becomes an error reply with a stable code."""
        answer = await self._answer(message)
        channel = self.reply_channel
        if channel is None or not message.reply_to:
            return
        try:
            await reply(channel, message, answer.to_json())
        except Exception:  # the effect is committed; a redelivery would only repeat the command
            log.warning("reply not sent", exc_info=True, extra={"scope": "command.reply_failed"})

    async def _answer(self, message: AbstractIncomingMessage) -> Reply:
        try:
            envelope = CommandEnvelope.model_validate_json(message.body)
        except ValidationError as exc:
            return error_reply(ErrorCode.VALIDATION_ERROR, f"invalid command: {exc.errors(include_url=False)}")
        try:
            result = await self._run(envelope, message)
        except GateError as exc:
            return error_reply(exc.code, exc.message)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            log.warning("database unavailable: %r", exc, extra={"scope": "db.unavailable"})
            return error_reply(ErrorCode.DATABASE_UNAVAILABLE, "the approvals database is unavailable")
        except Exception:
            log.exception("command failed", extra={"scope": "command.failed",
                                                   "correlationId": envelope.correlation_id})
            return error_reply(ErrorCode.INTERNAL_ERROR, "internal error")
        if isinstance(result, DispatchStarted):
            return Reply(ok=True, data=result.data, follow_up=True)
        return Reply(ok=True, data=result)

    def _principal(self, envelope: CommandEnvelope) -> Principal:
        return self._verifier.verify(envelope.token)

    async def _run(self, envelope: CommandEnvelope, message: AbstractIncomingMessage) -> Any:
        command, cid, svc = envelope.command, envelope.correlation_id, self._service
        if isinstance(command, CheckHealth):
            return await svc.health()
        if isinstance(command, ReadMetrics):
            return {"text": await svc.metrics_text()}
        if isinstance(command, GetDispatchPlan):  # authorized by the claim token it carries
            return await svc.dispatch_plan(command.approval_id, command.claim_token)
        principal = self._principal(envelope)
        if isinstance(command, ExecuteRequest):
            return await svc.execute(principal, command, cid, _reply_address(message), envelope.message_id)
        if isinstance(command, ListApprovals):
            return await svc.list_approvals(principal, command)
        if isinstance(command, GetApproval):
            return await svc.get_approval(principal, command.approval_id)
        if isinstance(command, GetChain):
            return await svc.chain(principal, command.approval_id)
        if isinstance(command, CountPending):
            return await svc.count_pending(principal)
        if isinstance(command, DecideRequest):
            return await svc.decide(principal, command, cid)
        if isinstance(command, DispatchRequest):
            return await svc.dispatch(principal, command, cid, _reply_address(message))
        raise GateError(ErrorCode.VALIDATION_ERROR, f"unsupported command {command.name}")

    async def on_report(self, message: AbstractIncomingMessage) -> None:
        """Record a step report; when it ends the dispatch, tell the waiting caller (if any)."""
        report = StepReport.model_validate_json(message.body)
        finished = await self._service.record_report(report)
        channel = self.reply_channel
        if finished is None or report.notify is None or channel is None:
            return
        final = Reply(ok=True, data={"approvalId": str(finished.id), "approvalStatus": finished.approval_status,
                                     "dispatchResult": finished.dispatch_result})
        try:
            await send_reply(channel, report.notify.reply_to, report.notify.correlation_id + ".done",
                             final.to_json())
        except Exception:  # the caller may be gone; the outcome is stored either way
            log.warning("could not notify the dispatch caller", exc_info=True,
                        extra={"scope": "approval.dispatch.notify_failed"})
