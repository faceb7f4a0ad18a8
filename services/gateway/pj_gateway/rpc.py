"""Commands over RabbitMQ: build the envelope, send it, turn the reply into data or a GateError."""

from typing import Any

from pj_common.errors import ErrorCode, GateError
from pj_common.messages import Command, CommandEnvelope, Reply

from .state import GatewayState


def _has_follow_up(body: bytes) -> bool:
    return Reply.model_validate_json(body).follow_up


async def send_command(state: GatewayState, command: Command, *, token: str | None, correlation_id: str,
                       timeout: float | None = None, follow_up_s: float = 0.0) -> Reply:
    """Send one command and return its (final) reply; an error reply raises its GateError."""
    envelope = CommandEnvelope(command=command, token=token, correlation_id=correlation_id)
    body = await state.rpc.call(
        envelope.to_json(), correlation_id=envelope.message_id,
        timeout=timeout if timeout is not None else state.settings.rpc_timeout_s,
        follow_up_s=follow_up_s, is_follow_up=_has_follow_up if follow_up_s else None)
    reply = Reply.model_validate_json(body)
    if not reply.ok:
        error = reply.error
        code = error.code if error else ErrorCode.INTERNAL_ERROR
        raise GateError(ErrorCode(code) if code in ErrorCode._value2member_map_ else ErrorCode.INTERNAL_ERROR,
                        error.message if error else "command failed")
    return reply


async def call(state: GatewayState, command: Command, *, token: str | None, correlation_id: str) -> Any:
    """Send a command and return its reply's data."""
    return (await send_command(state, command, token=token, correlation_id=correlation_id)).data
