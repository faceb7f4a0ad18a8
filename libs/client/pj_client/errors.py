"""What a call can fail with: one exception class per outcome a caller acts on, each carrying the stable
error code (pj_common.errors.ErrorCode, or the gateway's own code for an HTTP-level refusal) and the HTTP
status when the failure came over HTTP.

The command line turns each class into its exit code (`ExitCode`), so a script can tell "not found"
from "someone else won the race" without reading the message.
"""

from enum import IntEnum
from typing import ClassVar

from pj_common.errors import ErrorCode


class ExitCode(IntEnum):
    """The `pj` command's exit statuses, one per outcome a script may branch on."""

    OK = 0
    FAILURE = 1        # an unexpected server error, or a dispatch that ended dispatch_failed
    USAGE = 2          # bad arguments or input (click's own usage errors exit 2 as well)
    NOT_FOUND = 3
    CONFLICT = 4       # the approval's state does not allow it, or someone else won the race
    FORBIDDEN = 5      # no valid token, or the caller may not do this
    UNAVAILABLE = 6    # the gateway or a backend is away, or the outcome is unknown (retry)


class ClientError(Exception):
    """A call the system refused or could not answer.

    `code` is the stable error code (an `ErrorCode` when the system sent one it documents), `status`
    the HTTP status (None over AMQP or when no answer came), `correlation_id` the id that finds the
    request in the services' logs.
    """

    exit_code: ClassVar[ExitCode] = ExitCode.FAILURE

    def __init__(self, code: ErrorCode | str, message: str, *, status: int | None = None,
                 correlation_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.correlation_id = correlation_id

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code}{where}: {self.message}"


class Unauthorized(ClientError):
    """No valid bearer token (missing, expired, wrong key): log in again."""

    exit_code = ExitCode.FORBIDDEN


class Forbidden(ClientError):
    """The caller's role, separation of duties or the CSRF rule forbids it."""

    exit_code = ExitCode.FORBIDDEN


class NotFound(ClientError):
    """No such approval visible to the caller (another tenant's looks exactly like a missing one)."""

    exit_code = ExitCode.NOT_FOUND


class Conflict(ClientError):
    """The approval's state does not allow it: not pending, already decided, plan changed, or a
    requestId reused for another request."""

    exit_code = ExitCode.CONFLICT


class InvalidRequest(ClientError):
    """The request does not match the contract: unknown action, invalid payload, bad parameter."""

    exit_code = ExitCode.USAGE


class Unavailable(ClientError):
    """The gateway, the broker or the database did not answer. For an upstream timeout the outcome is
    unknown, not failed: retry (an execute with the same requestId)."""

    exit_code = ExitCode.UNAVAILABLE


class ServerError(ClientError):
    """An unexpected error on the server (logged there with the correlation id)."""


CLASS_BY_CODE: dict[str, type[ClientError]] = {
    ErrorCode.UNAUTHORIZED: Unauthorized,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.CSRF_REQUIRED: Forbidden,
    ErrorCode.SELF_APPROVAL_FORBIDDEN: Forbidden,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.VALIDATION_ERROR: InvalidRequest,
    ErrorCode.UNKNOWN_ACTION: InvalidRequest,
    ErrorCode.INVALID_PAYLOAD: InvalidRequest,
    ErrorCode.TENANT_NOT_CONFIGURED: InvalidRequest,
    ErrorCode.INVALID_STATE: Conflict,
    ErrorCode.PLAN_CHANGED: Conflict,
    ErrorCode.IDEMPOTENCY_CONFLICT: Conflict,
    ErrorCode.ALREADY_DECIDED: Conflict,
    ErrorCode.BROKER_UNAVAILABLE: Unavailable,
    ErrorCode.DATABASE_UNAVAILABLE: Unavailable,
    ErrorCode.UPSTREAM_TIMEOUT: Unavailable,
    ErrorCode.INTERNAL_ERROR: ServerError,
    # The gateway's HTTP limits, refused before any command is sent (by their values: not every
    # release of pj_common names them).
    "bad_request": InvalidRequest,
    "payload_too_large": InvalidRequest,
    "uri_too_long": InvalidRequest,
    "unsupported_media_type": InvalidRequest,
    "headers_too_large": InvalidRequest,
    "rate_limited": Unavailable,  # come back later (Retry-After), as for a backend that is away
}


def _class_by_status(status: int | None) -> type[ClientError]:
    """For a code this client does not know (a newer server, a proxy in between): the HTTP status decides."""
    if status is None:
        return ServerError
    known: dict[int, type[ClientError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict}
    if status in known:
        return known[status]
    if status in (502, 503, 504):
        return Unavailable
    return InvalidRequest if 400 <= status < 500 else ServerError


def _known_code(code: str) -> ErrorCode | str:
    try:
        return ErrorCode(code)
    except ValueError:
        return code


def error_from(code: str, message: str, *, status: int | None = None,
               correlation_id: str | None = None) -> ClientError:
    """The exception for one error answer: chosen by its code, or by its HTTP status for an unknown code."""
    cls = CLASS_BY_CODE.get(code) or _class_by_status(status)
    return cls(_known_code(code), message, status=status, correlation_id=correlation_id)


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit status of the command line for an exception that ended a command."""
    if isinstance(error, ClientError):
        return error.exit_code
    return ExitCode.FAILURE
