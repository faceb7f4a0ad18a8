"""Lifecycle events through the gateway: `GET /api/events`, Server-Sent Events of the caller's tenant
(operators: their own requests), read with the bearer token like any API call.

The gateway ends a stream after about a minute (`end`) and when the token expires (`expired`); the
reader reconnects after `end` with `Last-Event-ID`, so the gateway replays what came meanwhile. A
`resync` means events may have been missed (the gateway's buffer did not reach back far enough).
"""

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import httpx
from pydantic import ValidationError

from pj_common.errors import ErrorCode
from pj_common.messages import ApprovalEvent

from .api import raise_for_error
from .errors import Unauthorized, Unavailable
from .events import RecentIds

# Reconnections in a row that found no stream before giving up (each after `end` is not counted).
MAX_FAILED_CONNECTS = 5


@dataclass
class ServerSentEvent:
    """One event of a text/event-stream."""

    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass
class SseDecoder:
    """Turns the lines of a text/event-stream into events (the WHATWG rules this stream needs: `event`,
    `data` lines joined with newlines, `id`, comments and `retry` ignored, a blank line dispatches)."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line (without its line break); return the event a blank line completes."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data, self._event, self._data = self._event, self._data, "", []
        if not data:
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data), id=self._id)


@dataclass
class _Listener:
    """What one watcher has seen across reconnections, and what it does with the control events."""

    on_ready: Callable[[], None] | None = None
    on_resync: Callable[[str], None] | None = None
    last_event_id: str | None = None
    ready: bool = False
    ended: bool = False

    def take(self, sse: ServerSentEvent) -> ApprovalEvent | None:
        """The approval event `sse` carries; a control event is handled here (`end` sets `ended`)."""
        if sse.event == "approval":
            try:
                event = ApprovalEvent.model_validate_json(sse.data)
            except ValidationError:
                return None  # not an event of this contract: nothing to show
            self.last_event_id = sse.id or event.event_id
            return event
        if sse.event == "ready" and not self.ready:
            self.ready = True
            if self.on_ready is not None:
                self.on_ready()
        elif sse.event == "resync" and self.on_resync is not None:
            self.on_resync(sse.data)
        elif sse.event == "expired":
            raise Unauthorized(ErrorCode.UNAUTHORIZED, "the token expired while watching: log in again")
        elif sse.event == "end":
            self.ended = True
        return None


async def _stream(http: httpx.AsyncClient, listener: _Listener) -> AsyncGenerator[ApprovalEvent, None]:
    """One connection's events, until the gateway ends the stream."""
    headers = {"Accept": "text/event-stream"}
    if listener.last_event_id:
        headers["Last-Event-ID"] = listener.last_event_id
    listener.ended = False
    async with http.stream("GET", "/api/events", headers=headers) as response:
        if response.status_code != 200:
            raise_for_error(response.status_code, await response.aread())
        decoder = SseDecoder()
        async for line in response.aiter_lines():
            sse = decoder.feed(line)
            event = None if sse is None else listener.take(sse)
            if event is not None:
                yield event
            if listener.ended:
                return


async def gateway_events(base_url: str, token: str | None, *, on_ready: Callable[[], None] | None = None,
                         on_resync: Callable[[str], None] | None = None,
                         transport: httpx.AsyncBaseTransport | None = None) -> AsyncGenerator[ApprovalEvent, None]:
    """Yield the caller's events as they happen, reconnecting after each stream ends, until the caller
    stops iterating. A gateway that cannot be reached MAX_FAILED_CONNECTS times in a row raises
    `Unavailable`; a refused token raises `Unauthorized`."""
    listener = _Listener(on_ready=on_ready, on_resync=on_resync)
    seen = RecentIds()
    failures = 0
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # No read timeout beyond the gateway's own stream length: an idle stream is normal.
    timeout = httpx.Timeout(10.0, read=120.0)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, transport=transport) as http:
        while True:
            try:
                async for event in _stream(http, listener):
                    failures = 0
                    if seen.first_time(event.event_id):
                        yield event
                failures = 0
            except httpx.TransportError as exc:
                failures += 1
                if failures >= MAX_FAILED_CONNECTS:
                    raise Unavailable("gateway_unreachable", f"lost the event stream of {base_url}: {exc!r}"
                                      ) from exc
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
