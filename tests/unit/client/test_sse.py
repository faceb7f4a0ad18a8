"""pj_client.sse: the gateway's event stream decoded, and its control events (ready, end, expired, resync)."""

import contextlib
import json

import httpx
import pytest

from pj_client.errors import Unauthorized
from pj_client.sse import ServerSentEvent, SseDecoder, _Listener, gateway_events

EVENT = {"schemaVersion": 1, "eventId": "1042", "type": "approval.decided",
         "approvalId": "c16206b0-db8b-4441-b186-a4032785cb7c", "tenantId": "acme", "actionId": "notify.webhook",
         "actor": "alice", "fromStatus": "pending", "toStatus": "approved", "occurredAt": "2025-01-01T12:00:00Z",
         "correlationId": None, "note": "ok"}


def decode(text: str) -> list[ServerSentEvent]:
    decoder = SseDecoder()
    return [e for e in (decoder.feed(line) for line in text.split("\n")) if e is not None]


def test_events_are_dispatched_by_a_blank_line() -> None:
    stream = ("retry: 2000\nevent: ready\ndata: {\"tenant\": \"acme\"}\n\n"
              ": a comment keeps the connection open\n\n"
              "event: approval\nid: 1042\ndata: {\"a\":\ndata: 1}\n\n"
              "data: no event name\n\n"
              "event: half written")
    assert decode(stream) == [
        ServerSentEvent("ready", '{"tenant": "acme"}', None),
        ServerSentEvent("approval", '{"a":\n1}', "1042"),
        # the id stays until another one comes, as the standard says
        ServerSentEvent("message", "no event name", "1042"),
    ]


def test_the_listener_yields_approvals_and_remembers_the_last_id() -> None:
    ready: list[str] = []
    listener = _Listener(on_ready=lambda: ready.append("ready"))
    assert listener.take(ServerSentEvent("ready", "{}")) is None
    assert listener.take(ServerSentEvent("ready", "{}")) is None  # a reconnection is not news
    event = listener.take(ServerSentEvent("approval", json.dumps(EVENT), "1042"))
    assert event is not None and (event.type, event.to_status, event.note) == ("approval.decided", "approved", "ok")
    assert listener.last_event_id == "1042" and ready == ["ready"]
    assert listener.take(ServerSentEvent("approval", '{"not": "an event"}', "1043")) is None
    assert listener.last_event_id == "1042"


def test_end_asks_for_a_reconnection_and_expired_for_a_new_token() -> None:
    resyncs: list[str] = []
    listener = _Listener(on_resync=resyncs.append)
    listener.take(ServerSentEvent("resync", '{"reason": "buffer"}'))
    assert resyncs == ['{"reason": "buffer"}'] and not listener.ended
    listener.take(ServerSentEvent("end", "{}"))
    assert listener.ended
    with pytest.raises(Unauthorized, match="log in again"):
        listener.take(ServerSentEvent("expired", "{}"))


def sse_body(*events: tuple[str, str, str | None]) -> bytes:
    lines = []
    for name, data, event_id in events:
        lines += [f"event: {name}", *([f"id: {event_id}"] if event_id else []), f"data: {data}", ""]
    return ("\n".join(lines) + "\n").encode()


def approval_event(event_id: str, to: str) -> str:
    return json.dumps({**EVENT, "eventId": event_id, "toStatus": to})


async def test_the_stream_reconnects_after_end_with_the_last_event_id() -> None:
    asked_after: list[str | None] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t-1"
        asked_after.append(request.headers.get("Last-Event-ID"))
        if len(asked_after) == 1:
            body = sse_body(("ready", "{}", None), ("approval", approval_event("7", "approved"), "7"),
                            ("end", "{}", None))
        else:  # the replay repeats what the first stream sent: shown once
            body = sse_body(("ready", "{}", None), ("approval", approval_event("7", "approved"), "7"),
                            ("approval", approval_event("8", "rejected"), "8"))
        return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})

    ready: list[bool] = []
    events = gateway_events("http://gate.test", "t-1", on_ready=lambda: ready.append(True),
                            transport=httpx.MockTransport(gateway))
    async with contextlib.aclosing(events):
        seen = [await anext(events), await anext(events)]
    assert [(e.event_id, e.to_status) for e in seen] == [("7", "approved"), ("8", "rejected")]
    assert asked_after == [None, "7"] and ready == [True]


async def test_a_refused_token_ends_the_watch() -> None:
    def gateway(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"success": False, "correlationId": "c",
                                         "error": {"code": "unauthorized", "message": "token expired"}})

    events = gateway_events("http://gate.test", "old", transport=httpx.MockTransport(gateway))
    async with contextlib.aclosing(events):
        with pytest.raises(Unauthorized, match="token expired"):
            await anext(events)
