"""pj_client.errors: each error code and HTTP status becomes the exception and exit status of its outcome."""

import pytest

from pj_client.errors import (
    ClientError,
    Conflict,
    ExitCode,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServerError,
    Unauthorized,
    Unavailable,
    error_from,
    exit_code_for,
)
from pj_common.errors import ErrorCode

# Every code the system documents, with the exit status the command line promises for it.
EXPECTED_EXIT: dict[str, ExitCode] = {
    ErrorCode.UNAUTHORIZED: ExitCode.FORBIDDEN,
    ErrorCode.FORBIDDEN: ExitCode.FORBIDDEN,
    ErrorCode.CSRF_REQUIRED: ExitCode.FORBIDDEN,
    ErrorCode.SELF_APPROVAL_FORBIDDEN: ExitCode.FORBIDDEN,
    ErrorCode.NOT_FOUND: ExitCode.NOT_FOUND,
    ErrorCode.VALIDATION_ERROR: ExitCode.USAGE,
    ErrorCode.UNKNOWN_ACTION: ExitCode.USAGE,
    ErrorCode.INVALID_PAYLOAD: ExitCode.USAGE,
    ErrorCode.TENANT_NOT_CONFIGURED: ExitCode.USAGE,
    ErrorCode.INVALID_STATE: ExitCode.CONFLICT,
    ErrorCode.PLAN_CHANGED: ExitCode.CONFLICT,
    ErrorCode.IDEMPOTENCY_CONFLICT: ExitCode.CONFLICT,
    ErrorCode.ALREADY_DECIDED: ExitCode.CONFLICT,
    ErrorCode.BROKER_UNAVAILABLE: ExitCode.UNAVAILABLE,
    ErrorCode.DATABASE_UNAVAILABLE: ExitCode.UNAVAILABLE,
    ErrorCode.UPSTREAM_TIMEOUT: ExitCode.UNAVAILABLE,
    ErrorCode.INTERNAL_ERROR: ExitCode.FAILURE,
    "bad_request": ExitCode.USAGE,
    "payload_too_large": ExitCode.USAGE,
    "uri_too_long": ExitCode.USAGE,
    "unsupported_media_type": ExitCode.USAGE,
    "headers_too_large": ExitCode.USAGE,
    "rate_limited": ExitCode.UNAVAILABLE,
}


def test_the_exit_statuses_are_the_documented_numbers() -> None:
    assert [(e.name, e.value) for e in ExitCode] == [
        ("OK", 0), ("FAILURE", 1), ("USAGE", 2), ("NOT_FOUND", 3), ("CONFLICT", 4), ("FORBIDDEN", 5),
        ("UNAVAILABLE", 6)]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_has_its_exit_status(code: ErrorCode) -> None:
    """A code added to ErrorCode without a decision here fails (KeyError in EXPECTED_EXIT)."""
    error = error_from(code.value, "message", status=418)
    assert exit_code_for(error) == EXPECTED_EXIT[code]
    assert error.code is code  # the known code comes back as the enum member, not a bare string
    assert (error.message, error.status) == ("message", 418)


@pytest.mark.parametrize(("status", "cls"), [
    (401, Unauthorized), (403, Forbidden), (404, NotFound), (405, InvalidRequest), (409, Conflict),
    (422, InvalidRequest), (429, InvalidRequest), (500, ServerError), (502, Unavailable), (503, Unavailable),
    (504, Unavailable), (None, ServerError),
])
def test_an_unknown_code_is_judged_by_its_http_status(status: int | None, cls: type[ClientError]) -> None:
    error = error_from("method_not_allowed", "nope", status=status, correlation_id="c-1")
    assert type(error) is cls
    assert error.code == "method_not_allowed" and error.correlation_id == "c-1"


def test_the_code_wins_over_the_status() -> None:
    # A proxy may rewrite statuses; the gateway's code is the stable part.
    assert type(error_from("not_found", "gone", status=500)) is NotFound


def test_the_message_names_code_and_status() -> None:
    assert str(error_from("invalid_state", "approval is not pending", status=409)) == (
        "invalid_state (HTTP 409): approval is not pending")
    assert str(error_from("upstream_timeout", "no reply")) == "upstream_timeout: no reply"


def test_any_other_exception_exits_1() -> None:
    assert exit_code_for(RuntimeError("boom")) == ExitCode.FAILURE
