"""The bench's HTTP clients: a lean asyncio HTTP/1.1 keep-alive client (the default) and httpx.

The load generator shares the machine's cores with the system it measures, so every millisecond of its
own CPU is taken from the system. httpx costs ~0.75 ms of CPU per request here; this client is one
`asyncio.Protocol` per connection (one connection per in-flight worker), writes each request in one
`write()`, and parses only what the gateway sends: a status line, headers and a Content-Length body
(chunked bodies are decoded too, in case an answer ever streams). No redirects, cookies, TLS or proxies.

Both clients answer `Response(status, body)`; `Response.json()` decodes the body.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

_CRLF2 = b"\r\n\r\n"
_encode_json = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps builds an encoder per call


class HttpFailure(Exception):
    """No answer: the connection failed, closed early, timed out or sent something unparsable."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client(Protocol):
    async def request(self, method: str, path: str, *, headers: dict[str, str], body: Any = None) -> Response: ...

    async def aclose(self) -> None: ...


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time (the worker that owns it awaits each answer)."""

    __slots__ = (
        "_buffer",
        "_chunked",
        "_close_after",
        "_head_end",
        "_length",
        "_status",
        "_waiter",
        "closed",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self._head_end = -1
        self._length = -1
        self._chunked = False
        self._status = 0
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:  # requests are written whole: never wait for an ACK before sending
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpFailure(f"connection closed: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        try:
            response = self._parse()
        except (ValueError, IndexError) as exc:
            self._waiter.set_exception(HttpFailure(f"unparsable response: {exc!r}"))
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        if response is not None:
            self._waiter.set_result(response)

    def _parse_head(self, head: bytes) -> None:
        """Status, body framing and keep-alive from the (lower-cased) status line and headers."""
        self._status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 17)
            self._length = int(head[at + 17: stop if stop > 0 else len(head)])
        elif b"\r\ntransfer-encoding:" in head and b"chunked" in head:
            self._chunked = True
        elif self._status in (204, 304) or 100 <= self._status < 200:
            self._length = 0
        else:  # no length: the body runs to the end of the connection, which we do not support
            raise ValueError("response without Content-Length or chunked encoding")
        self._close_after = b"\r\nconnection: close" in head

    def _parse(self) -> Response | None:
        buf = self._buffer
        if self._head_end < 0:
            end = buf.find(_CRLF2)
            if end < 0:
                return None
            self._head_end = end + 4
            self._parse_head(bytes(buf[:end]).lower())
        start = self._head_end
        if self._chunked:
            body, consumed = _dechunk(buf, start)
            if body is None:
                return None
            end = consumed
        else:
            end = start + self._length
            if len(buf) < end:
                return None
            body = bytes(buf[start:end])
        del buf[:end]
        response = Response(self._status, body)
        if self._close_after:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._reset()
        return response

    async def exchange(self, request: bytes, *, timeout: float) -> Response:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        self.transport.write(request)  # headers and body in one write
        timer = loop.call_later(timeout, _expire, waiter, timeout)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _expire(waiter: asyncio.Future[Response], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(HttpFailure(f"no response within {timeout:g} s"))


def _dechunk(buf: bytearray, start: int) -> tuple[bytes | None, int]:
    """The body of a complete chunked message in buf[start:], and where it ends; (None, 0) if incomplete."""
    parts: list[bytes] = []
    at = start
    while True:
        line_end = buf.find(b"\r\n", at)
        if line_end < 0:
            return None, 0
        size = int(bytes(buf[at:line_end]).split(b";", 1)[0], 16)
        if size == 0:
            trailer_end = buf.find(_CRLF2, line_end)
            if trailer_end < 0:
                return None, 0
            return b"".join(parts), trailer_end + 4
        chunk_start = line_end + 2
        if len(buf) < chunk_start + size + 2:
            return None, 0
        parts.append(bytes(buf[chunk_start:chunk_start + size]))
        at = chunk_start + size + 2


class LeanClient:
    """HTTP/1.1 keep-alive to one host over one connection, reconnecting when the server closes it.

    Give each in-flight worker its own client: a client serves one request at a time.
    """

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port URLs are supported: {base_url}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._timeout = timeout
        self._prefix = parts.path.rstrip("/")
        self._host_header = f"Host: {parts.netloc}\r\n".encode()
        self._conn: _Connection | None = None
        self.requests = 0
        self.connects = 0

    async def _connection(self) -> _Connection:
        if self._conn is None or self._conn.closed:
            loop = asyncio.get_running_loop()
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(_Connection, self._host, self._port), self._timeout)
            except (OSError, TimeoutError) as exc:
                raise HttpFailure(f"connect failed: {exc!r}") from exc
            self._conn = conn
            self.connects += 1
        return self._conn

    async def request(self, method: str, path: str, *, headers: dict[str, str], body: Any = None) -> Response:
        """Send one request (a JSON body if `body` is not None) and read its whole answer."""
        payload = b"" if body is None else _encode_json(body).encode()
        lines = [f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode(), self._host_header]
        lines.extend(f"{k}: {v}\r\n".encode() for k, v in headers.items())
        if body is not None:
            lines.append(b"Content-Type: application/json\r\n")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(payload)}\r\n".encode())
        lines.append(b"\r\n")
        lines.append(payload)
        conn = await self._connection()
        self.requests += 1
        try:
            return await conn.exchange(b"".join(lines), timeout=self._timeout)
        except HttpFailure:
            if conn.transport is not None:
                conn.transport.close()
            conn.closed = True
            raise

    async def aclose(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None


class HttpxClient:
    """httpx.AsyncClient behind the same interface, for comparison (`--client httpx`)."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, connections: int = 1) -> None:
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, http1=True, http2=False,
                                         trust_env=False, verify=False)  # plain http to 127.0.0.1: no TLS context
        self._errors: tuple[type[Exception], ...] = (httpx.HTTPError,)
        self.requests = 0
        self.connects = 0

    async def request(self, method: str, path: str, *, headers: dict[str, str], body: Any = None) -> Response:
        self.requests += 1
        try:
            response = await self._client.request(method, path, headers=headers, json=body)
        except self._errors as exc:
            raise HttpFailure(type(exc).__name__) from exc
        return Response(response.status_code, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()


def skip_failed_sniffio_import() -> bool:
    """Spare httpx in this process httpcore's failed `import sniffio` on every request.

    httpcore 1.0's `current_async_library()` runs `import sniffio` each time it makes a lock or event and
    answers "asyncio" when that fails; anyio 4.x no longer installs sniffio, so every call scans sys.path
    for it (a quarter of the driver's CPU at 32 connections). Give the fallback's answer directly. The
    services are started as installed.
    """
    try:
        import sniffio  # noqa: F401
    except ImportError:
        from httpcore import _synchronization

        if callable(getattr(_synchronization, "current_async_library", None)):
            _synchronization.current_async_library = lambda: "asyncio"
            return True
    return False


CLIENT_KINDS = ("lean", "httpx", "httpx-shared")


def make_clients(kind: str, base_url: str, count: int, *, timeout: float = 30.0) -> list[Client]:
    """`count` clients of one connection each (lean, httpx), or one httpx pool of `count` (httpx-shared)."""
    if kind == "lean":
        return [LeanClient(base_url, timeout=timeout) for _ in range(count)]
    if kind == "httpx":
        return [HttpxClient(base_url, timeout=timeout) for _ in range(count)]
    if kind == "httpx-shared":
        return [HttpxClient(base_url, timeout=timeout, connections=count)]
    raise ValueError(f"unknown client {kind!r}; choose from {', '.join(CLIENT_KINDS)}")
