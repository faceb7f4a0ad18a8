"""Error codes shared by every service: the stable part of every error the system reports."""

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable machine-readable codes; the gateway maps each to one HTTP status."""

    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    CSRF_REQUIRED = "csrf_required"
    SELF_APPROVAL_FORBIDDEN = "self_approval_forbidden"
    NOT_FOUND = "not_found"
    VALIDATION_ERROR = "validation_error"
    UNKNOWN_ACTION = "unknown_action"
    INVALID_PAYLOAD = "invalid_payload"
    TENANT_NOT_CONFIGURED = "tenant_not_configured"
    INVALID_STATE = "invalid_state"
    PLAN_CHANGED = "plan_changed"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    ALREADY_DECIDED = "already_decided"
    BROKER_UNAVAILABLE = "broker_unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    INTERNAL_ERROR = "internal_error"
    # The gateway's HTTP limits (docs/security.md): refused before any command is sent.
    BAD_REQUEST = "bad_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    URI_TOO_LONG = "uri_too_long"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    HEADERS_TOO_LARGE = "headers_too_large"
    RATE_LIMITED = "rate_limited"


class GateError(Exception):
    """An expected failure with a stable code; it crosses service boundaries as a reply error."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
