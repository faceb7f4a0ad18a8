"""The HTTP server: uvicorn with httptools, and limits on the request head that uvicorn lacks.

uvicorn's httptools protocol buffers a request line and headers of any size, and answers a request it
cannot parse with plain text. This protocol refuses a request target over PJ_MAX_URL_BYTES (414) and
headers over PJ_MAX_HEADER_BYTES (431) while they arrive, and answers those and unparsable requests
(400) with the gateway's error envelope. The connection then closes: the parser cannot resync.
"""

import json
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pj_common.errors import ErrorCode

from .errors import CORRELATION_HEADER, STATUS_BY_CODE
from .settings import GatewaySettings

_REASONS = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class HeadTooLarge(Exception):
    """Raised from a parser callback (httptools wraps it in an HttpParserError, which uvicorn answers)."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing oversized heads as they arrive (limits set per subclass)."""

    max_url = 8192
    max_headers = 16384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusal = ErrorCode.BAD_REQUEST
        self._in_head = True
        self._head_bytes = 0
        self._header_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            # Bytes of a head not parsed yet: httptools buffers one header whole before reporting it.
            # Only up to the blank line that ends the head: a body written with it is not head.
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end
            if self._head_bytes > self.max_url + self.max_headers + 1024:
                self._refusal = ErrorCode.HEADERS_TOO_LARGE
                self.send_400_response("")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.max_url:
            self._refusal = ErrorCode.URI_TOO_LONG
            raise HeadTooLarge("request target")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self.max_headers:
            self._refusal = ErrorCode.HEADERS_TOO_LARGE
            raise HeadTooLarge("headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        # Every refusal of the server itself, as the envelope (never uvicorn's plain text).
        self.transport.write(refusal_bytes(self._refusal))
        self.transport.close()


def limited_protocol(settings: GatewaySettings) -> type[HttpToolsProtocol]:
    """The protocol class with this gateway's URL and header limits."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,),
                {"max_url": settings.max_url_bytes, "max_headers": settings.max_header_bytes})


def refusal_bytes(code: ErrorCode) -> bytes:
    """A whole HTTP response: the error envelope with this code's status, closing the connection."""
    status = STATUS_BY_CODE[code]
    correlation_id = str(uuid.uuid4())
    messages = {ErrorCode.URI_TOO_LONG: "the request target is too long",
                ErrorCode.HEADERS_TOO_LARGE: "the request headers are too large"}
    body = json.dumps({"success": False, "correlationId": correlation_id,
                       "error": {"code": code, "message": messages.get(code, "the request could not be parsed")}})
    head = (f"HTTP/1.1 {status} ".encode() + _REASONS[status] + b"\r\n"
            + b"content-type: application/json\r\n"
            + f"{CORRELATION_HEADER.lower()}: {correlation_id}\r\n".encode()
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode())
    return head + body.encode()


def server_config(app: FastAPI, settings: GatewaySettings, **overrides: Any) -> uvicorn.Config:
    """How the gateway is served: uvloop, httptools with the head limits, no uvicorn access log (the
    gateway writes its own)."""
    options: dict[str, Any] = {
        "host": settings.gateway_host, "port": settings.gateway_port, "loop": "uvloop",
        "http": limited_protocol(settings), "access_log": False, "log_config": None,
        # The same bound if someone serves the gateway with `http="h11"` instead.
        "h11_max_incomplete_event_size": settings.max_url_bytes + settings.max_header_bytes,
        **overrides,
    }
    return uvicorn.Config(app, **options)
