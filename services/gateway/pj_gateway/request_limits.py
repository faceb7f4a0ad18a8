"""What one request may carry, checked before any route or model sees it.

Pure ASGI, so the body is counted as it arrives: a lying or absent `Content-Length` (chunked
upload) cannot get a larger body in. A JSON body is checked once here (UTF-8, depth, string length,
control characters, non-finite numbers) and then replayed to the route unchanged, so pydantic only
ever sees a document the rest of the system can store and send.

A form post (`application/x-www-form-urlencoded`, as Slack sends its interactions) is only size-limited
here: a route that reads forms checks them itself, and a JSON route refuses one with 415.
"""

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pj_common.errors import ErrorCode

from .errors import failure, is_json_media_type
from .settings import GatewaySettings

# C0 and C1 control characters but tab, newline and carriage return; and lone surrogates, which
# JSON's \ud800 escapes can smuggle in and which no UTF-8 encoder (PostgreSQL's, the broker's) accepts.
_FORBIDDEN_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Refusal:
    code: ErrorCode
    message: str
    status: int


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NotFinite(f"{name} is not a number JSON allows")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key: parsers disagree on which wins, so the document means nothing certain.
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _DuplicateKey("a key appears twice in one object")
    return document


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to infinity without passing through parse_constant
        raise _NotFinite("a number out of range")
    return value


def check_json(body: bytes, *, max_depth: int, max_string: int) -> str | None:
    """Why this body is not a JSON document the gateway accepts, or None when it is."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not valid UTF-8"
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                              object_pairs_hook=_unique_keys)
    except RecursionError:
        return f"JSON nested deeper than {max_depth} levels"
    except _NotFinite as exc:
        return f"non-finite number refused: {exc}"
    except _DuplicateKey as exc:
        return f"the body is ambiguous: {exc}"
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        return f"the body is not JSON: {str(exc).split(':', 1)[0]}"
    return _check_values(document, max_depth=max_depth, max_string=max_string)


def _check_values(document: Any, *, max_depth: int, max_string: int) -> str | None:
    # Iterative: a document is at most PJ_MAX_BODY_BYTES, but recursion depth is not ours to spend.
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= max_depth:
                return f"JSON nested deeper than {max_depth} levels"
            items: Iterable[Any] = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
            if isinstance(value, dict):
                stack.extend((key, depth + 1) for key in value)
        elif isinstance(value, str):
            if len(value) > max_string:
                return f"a JSON string longer than {max_string} characters"
            if _FORBIDDEN_CHARACTERS.search(value):
                return "control characters are not allowed in JSON strings"
    return None


class RequestLimits:
    """Refuses, with the error envelope, a request over the URL, header or body limits (414, 431,
    413), a body that is not JSON (415) and a JSON body the contract cannot hold (422)."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_head(scope)
            if scope["method"] not in _BODY_METHODS:
                await self.app(scope, receive, send)
                return
            body = await self._read_body(receive)
            self._check_body(scope, body)
        except _Refused as refused:
            r = refused.refusal
            await failure(Request(scope), r.code, r.message, status_code=r.status)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _check_head(self, scope: Scope) -> None:
        # The server refuses far larger heads before this (pj_gateway.server); this keeps the same
        # limits under any ASGI server.
        target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
        if target > self.settings.max_url_bytes:
            raise _Refused(Refusal(ErrorCode.URI_TOO_LONG, "the request target is too long", 414))
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if sum(len(name) + len(value) for name, value in headers) > self.settings.max_header_bytes:
            raise _Refused(Refusal(ErrorCode.HEADERS_TOO_LARGE, "the request headers are too large", 431))
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > self.settings.max_body_bytes:
                raise _Refused(self._too_large())

    def _too_large(self) -> Refusal:
        return Refusal(ErrorCode.PAYLOAD_TOO_LARGE, f"the body is over {self.settings.max_body_bytes} bytes", 413)

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:
                raise _Refused(self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _check_body(self, scope: Scope, body: bytes) -> None:
        if not body:
            return
        content_type = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"content-type"), None)
        if _is_form(content_type):
            return
        if not is_json_media_type(content_type):
            raise _Refused(Refusal(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json", 415))
        reason = check_json(body, max_depth=self.settings.max_json_depth, max_string=self.settings.max_json_string)
        if reason is not None:
            raise _Refused(Refusal(ErrorCode.VALIDATION_ERROR, reason, 422))


def _is_form(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, as one message; then the client's own messages (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
