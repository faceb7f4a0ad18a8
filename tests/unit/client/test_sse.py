"""pj_client.sse: the gateway's event stream decoded, and its control events (ready, end, expired, resync)."""

import json

import pytest

from pj_client.errors import Unauthorized
from pj_client.sse import ServerSentEvent, SseDecoder, _Listener

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
