"""The one place where error codes become HTTP statuses and the envelopes are written."""

import logging
import uuid
from typing import Any

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pj_common.errors import ErrorCode, GateError

from .envelope import ErrorEnvelope

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
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.URI_TOO_LONG: 414,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.RATE_LIMITED: 429,
}

# What a 503 tells a client to wait: the services reconnect to the broker and the database with a
# back-off of at most 5 s, so a retry this much later is likely to find them back.
UNAVAILABLE_RETRY_AFTER_S = 2

_CODE_BY_HTTP_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                        405: "method_not_allowed"}

_STATUS_MEANING = {
    400: "The HTTP server could not parse the request",
    401: "No valid bearer token",
    403: "The caller may not do this",
    404: "No such approval visible to the caller",
    409: "The approval's state does not allow it",
    413: "The body is over PJ_MAX_BODY_BYTES",
    414: "The request target is over PJ_MAX_URL_BYTES",
    415: "The body is not JSON",
    422: "The request does not match the contract",
    429: "Over a rate limit; `Retry-After` says when to retry",
    431: "The headers are over PJ_MAX_HEADER_BYTES",
    500: "Unexpected error (logged with the correlation id)",
    503: "A backend is unavailable; `Retry-After` says when to retry",
    504: "No reply in time: the outcome is unknown, not failed",
}

# What any request may get before its route runs: an unparsable request, a URL or headers over the
# limits, a client over its authentication-failure budget; and an unexpected error.
EVERY_ROUTE_ERRORS = (400, 414, 429, 431, 500)
# What a request with a body may get too: a body over the limit, or not JSON.
BODY_ERRORS = (413, 415, 422)

CORRELATION_HEADER = "X-Correlation-Id"
JSON_REQUIRED = "Content-Type must be application/json"

log = logging.getLogger("pj.gateway")


def choose_correlation_id(given: str) -> str:
    """The client's correlation id if sane (1-128 printable characters), else a new one."""
    return given if 0 < len(given) <= 128 and given.isprintable() else str(uuid.uuid4())


def correlation_id(request: Request) -> str:
    """The request's correlation id (chosen once per request, by the middleware or here)."""
    cached = getattr(request.state, "correlation_id", None)
    if cached is not None:
        return str(cached)
    value = choose_correlation_id(request.headers.get(CORRELATION_HEADER, ""))
    request.state.correlation_id = value
    return value


def success(request: Request, data: BaseModel, *, status_code: int = 200, **top_level: str | bool) -> Response:
    """`{"success": true, "correlationId", "data"}` (plus any top-level fields old clients read),
    serialized once, straight from the reply model."""
    cid = correlation_id(request)
    body = pydantic_core.to_json({"success": True, "correlationId": cid, "data": data, **top_level}, by_alias=True)
    return Response(body, status_code=status_code, media_type="application/json",
                    headers={CORRELATION_HEADER: cid})


def failure(request: Request, code: str, message: str, *, status_code: int | None = None,
            retry_after_s: int | None = None) -> JSONResponse:
    """`{"success": false, "correlationId", "error": {code, message}}` with the code's status."""
    cid = correlation_id(request)
    status = status_code or STATUS_BY_CODE.get(code, 500)
    body = {"success": False, "correlationId": cid, "error": {"code": code, "message": _scrub(request, message)}}
    headers = {CORRELATION_HEADER: cid}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if retry_after_s is None and status == 503:
        retry_after_s = UNAVAILABLE_RETRY_AFTER_S
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(body, status_code=status, headers=headers)


def _scrub(request: Request, message: str) -> str:
    """The message without the caller's bearer token: an error relayed from a service that echoed its
    input (a command envelope carries the token) must not hand the token back in a response body."""
    authorization = request.headers.get("authorization", "")
    token = authorization.partition(" ")[2].strip()
    if len(token) >= 8 and token in message:
        return message.replace(token, "[token]")
    return message


def error_responses(*statuses: int, by_reference: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses: the error envelope, and which codes each carries.

    `by_reference` for a route whose own responses are not JSON (its response class would otherwise
    be taken for the errors' media type too).
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        codes = ", ".join(f"`{code}`" for code, mapped in STATUS_BY_CODE.items() if mapped == status)
        response: dict[str, Any] = {"description": f"{_STATUS_MEANING[status]}: {codes}"}
        if by_reference:
            response["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
        else:
            response["model"] = ErrorEnvelope
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}
        responses[status] = response
    return responses


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type header names JSON (`application/json` or `application/*+json`)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _not_json(request: Request, exc: RequestValidationError) -> bool:
    # FastAPI hands a body it did not parse as JSON (no or another Content-Type) to validation as bytes.
    return isinstance(exc.body, bytes | bytearray) and not is_json_media_type(request.headers.get("content-type"))


def _describe(exc: RequestValidationError) -> str:
    # Never the input: a 422 must not hand back what was sent (a token, a whole command envelope).
    errors = [{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in exc.errors()]
    parts = []
    for err in errors[:5]:
        # A location may be a key the client sent: shortened, so it cannot carry much back.
        where = ".".join(str(p)[:64] for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the gateway as the error envelope, with the status its code maps to."""

    @app.exception_handler(GateError)
    async def on_gate_error(request: Request, exc: GateError) -> JSONResponse:
        # A rate limit (ratelimit.RateLimited) says when to come back.
        return failure(request, exc.code, exc.message, retry_after_s=getattr(exc, "retry_after_s", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if _not_json(request, exc):  # a form post to a JSON route (request_limits lets forms through)
            return failure(request, ErrorCode.UNSUPPORTED_MEDIA_TYPE, JSON_REQUIRED)
        return failure(request, ErrorCode.VALIDATION_ERROR, _describe(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_HTTP_STATUS.get(exc.status_code, "http_error")
        return failure(request, code, str(exc.detail), status_code=exc.status_code)


class UnexpectedErrors:
    """An unexpected exception becomes the 500 envelope here and goes no further.

    Not an `exception_handler(Exception)`: Starlette runs that one in its outermost middleware, which
    answers and then re-raises to the server, and uvicorn closes the connection, so the client's next
    request on that keep-alive connection failed with ECONNRESET. Pure ASGI, like every middleware here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            request = Request(scope)
            # Still the envelope and the correlation id, so the client can report it; details go to the log.
            log.exception("unexpected error", extra={"scope": "gateway.unexpected_error",
                                                     "correlationId": correlation_id(request)})
            if started:  # half a response went out: only closing the connection ends it
                raise
            await failure(request, ErrorCode.INTERNAL_ERROR, "internal error")(scope, receive, send)
