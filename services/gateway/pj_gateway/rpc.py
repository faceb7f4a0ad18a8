"""Commands over RabbitMQ: build the envelope, send it, parse the reply into its model or raise its GateError."""

import logging
from dataclasses import dataclass
from functools import cache
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from pj_common.errors import ErrorCode, GateError
from pj_common.messages import Command, CommandEnvelope, DispatchOutcome, OnBehalf, Reply

from .state import GatewayState

ModelT = TypeVar("ModelT", bound=BaseModel)

log = logging.getLogger("pj.gateway")


@cache
def _reply_type(model: type[ModelT]) -> type[Reply[ModelT]]:
    # Parametrizing a generic model is not free; each reply model is parametrized once.
    return Reply[model]  # type: ignore[valid-type]  # a runtime class as a type argument: mypy cannot follow it


def _parse(model: type[ModelT], body: bytes) -> Reply[ModelT]:
    """The reply as `Reply[model]`, straight from its bytes; one outside the contract is an internal error."""
    try:
        return _reply_type(model).model_validate_json(body)
    except ValidationError as exc:
        log.error("reply outside the contract: %s", exc.errors(include_url=False, include_input=False)[:5],
                  extra={"scope": "gateway.invalid_reply", "model": model.__name__})
        raise GateError(ErrorCode.INTERNAL_ERROR, "the approvals service replied outside the contract") from exc


def _data(reply: Reply[ModelT]) -> ModelT:
    """The reply's data, or its error raised as the GateError it names."""
    if not reply.ok:
        error = reply.error
        if error is None:
            raise GateError(ErrorCode.INTERNAL_ERROR, "command failed")
        raise GateError(_known_code(error.code), error.message)
    if reply.data is None:
        raise GateError(ErrorCode.INTERNAL_ERROR, "the approvals service replied without data")
    return reply.data


def _known_code(code: str) -> ErrorCode:
    """The reply's error code; one this gateway does not know is an internal error (500), as documented."""
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL_ERROR


def _envelope(command: Command, token: str | None, correlation_id: str,
              *, on_behalf: OnBehalf | None = None) -> CommandEnvelope:
    return CommandEnvelope(command=command, token=token, correlation_id=correlation_id, on_behalf=on_behalf)


async def call(state: GatewayState, command: Command, model: type[ModelT], *, token: str | None,
               correlation_id: str, timeout: float | None = None, on_behalf: OnBehalf | None = None) -> ModelT:
    """Send one command and return its reply's data as `model` (the command's `reply_model`); with
    `on_behalf`, a service identity's `token` sends it for that person (Slack decisions)."""
    envelope = _envelope(command, token, correlation_id, on_behalf=on_behalf)
    body = await state.rpc.call(envelope.to_json(), correlation_id=envelope.message_id,
                                timeout=timeout if timeout is not None else state.settings.rpc_timeout_s)
    return _data(_parse(model, body))


@dataclass(frozen=True, slots=True)
class Started(Generic[ModelT]):
    """A command that may start a dispatch: its first reply's data, and the dispatch's outcome if it
    finished within the wait."""

    data: ModelT
    outcome: DispatchOutcome | None
    # The first reply promised a final one that did not come in time: the dispatch still runs.
    still_running: bool


async def call_and_wait(state: GatewayState, command: Command, model: type[ModelT], *, token: str | None,
                        correlation_id: str, wait_s: float) -> Started[ModelT]:
    """Send a command whose reply may promise a follow-up, and wait up to `wait_s` for that final reply."""
    envelope = _envelope(command, token, correlation_id)
    first: list[Reply[ModelT]] = []

    def promises_follow_up(body: bytes) -> bool:
        first.append(_parse(model, body))  # parsed once, kept for below
        return first[0].follow_up

    answer = await state.rpc.request(envelope.to_json(), correlation_id=envelope.message_id,
                                     timeout=state.settings.rpc_timeout_s, follow_up_s=wait_s,
                                     is_follow_up=promises_follow_up)
    reply = first[0] if first else _parse(model, answer.body)
    data = _data(reply)
    if answer.done:
        return Started(data, _data(_parse(DispatchOutcome, answer.body)), False)
    return Started(data, None, reply.follow_up)

