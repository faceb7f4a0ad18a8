"""The one place where error codes become HTTP statuses and the error envelope is written."""

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pj_common.errors import ErrorCode, GateError

STATUS_BY_CODE: dict[str, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.CSRF_REQUIRED: 403,
    ErrorCode.SELF_APPROVAL_FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.UNKNOWN_ACTION: 422,
    ErrorCode.INVALID_PAYLOAD: 422,
    ErrorCode.TENANT_NOT_CONFIGURED: 422,
    ErrorCode.INVALID_STATE: 409,
    ErrorCode.PLAN_CHANGED: 409,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.ALREADY_DECIDED: 409,
    ErrorCode.BROKER_UNAVAILABLE: 503,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
    ErrorCode.INTERNAL_ERROR: 500,
}

_CODE_BY_HTTP_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}

CORRELATION_HEADER = "X-Correlation-Id"

log = logging.getLogger("pj.gateway")


def correlation_id(request: Request) -> str:
    """The request's correlation id: the client's `X-Correlation-Id` if sane, else a new one."""
    cached = getattr(request.state, "correlation_id", None)
    if cached is not None:
        return str(cached)
    given = request.headers.get(CORRELATION_HEADER, "")
    value = given if 0 < len(given) <= 128 and given.isprintable() else str(uuid.uuid4())
    request.state.correlation_id = value
    return value


def success(request: Request, data: Any, status_code: int = 200, **top_level: Any) -> JSONResponse:
    """`{"success": true, "correlationId", "data"}` (plus any top-level fields old clients read)."""
    cid = correlation_id(request)
    body = {"success": True, "correlationId": cid, "data": data, **top_level}
    return JSONResponse(body, status_code=status_code, headers={CORRELATION_HEADER: cid})


def failure(request: Request, code: str, message: str, status_code: int | None = None) -> JSONResponse:
    cid = correlation_id(request)
    status = status_code or STATUS_BY_CODE.get(code, 500)
    body = {"success": False, "correlationId": cid, "error": {"code": code, "message": message}}
    headers = {CORRELATION_HEADER: cid}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GateError)
    async def on_gate_error(request: Request, exc: GateError) -> JSONResponse:
        return failure(request, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return failure(request, ErrorCode.VALIDATION_ERROR, _describe(exc))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Still the envelope and the correlation id, so the client can report it; details go to the log.
        log.exception("unexpected error", extra={"scope": "gateway.unexpected_error",
                                                 "correlationId": correlation_id(request)})
        return failure(request, ErrorCode.INTERNAL_ERROR, "internal error")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_HTTP_STATUS.get(exc.status_code, "http_error")
        return failure(request, code, str(exc.detail), exc.status_code)
