"""GET /api/events: lifecycle events of the caller's tenant as Server-Sent Events (the console's live view).

The stream is read with the bearer token in the Authorization header (never in the URL). It ends when
the token expires, so a stream never outlives the right to read it, and after STREAM_MAX_S in any case:
a stopping gateway (uvicorn) waits for open responses before it shuts down, and proxies drop idle
long-lived connections. The client reconnects at once with its token and Last-Event-ID, and gets what
it missed meanwhile.
"""

import asyncio
import time
from collections.abc import AsyncIterable
from typing import Annotated

import jwt
from fastapi import APIRouter, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent

from pj_common.errors import GateError
from pj_common.messages import ApprovalEvent, ApprovalView, GetApproval

from ..console.events import EventHub, Resync
from ..deps import Caller, CallerDep, State
from ..errors import error_responses
from ..rpc import call
from ..state import GatewayState
from .console import ConsoleDep

router = APIRouter(prefix="/api", tags=["events"])

RETRY_MS = 2000  # how long a browser waits before reconnecting
STREAM_MAX_S = 55.0


def token_expiry(token: str) -> float:
    """The `exp` of a token the caller dependency has already verified (read again, not re-verified)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims.get("exp", time.time()))


_STREAM = {"content": {"text/event-stream": {"schema": {
    "type": "string",
    "description": "Server-Sent Events: `ready`, `approval` (an ApprovalEvent as JSON, id = eventId), `resync`, "
                   "`expired`, `end`"}}}}


@router.get("/events", response_class=EventSourceResponse,
            responses={200: _STREAM, **error_responses(400, 401, 414, 422, 429, 431, 500, 503, 504,
                                                       by_reference=True)})
async def events(
    *, caller: CallerDep, console: ConsoleDep, state: State,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)] = None,
) -> AsyncIterable[ServerSentEvent]:
    """`approval` events (the contract's ApprovalEvent, id = eventId) of the caller's tenant; operators get
    their own requests' only. `resync`: events may have been missed, reload. `expired` (the token) or
    `end` (after STREAM_MAX_S) close the stream: reconnect with Last-Event-ID."""
    yield ServerSentEvent(event="ready", data={"tenant": caller.principal.tenant}, retry=RETRY_MS)
    expires = token_expiry(caller.token)
    ends = min(expires, time.time() + STREAM_MAX_S)
    stream = console.events.subscribe(caller.principal, last_event_id)
    try:
        while True:
            try:
                # Not asyncio.timeout around the loop: it would cancel whatever runs while this generator
                # is suspended at a yield.
                item = await asyncio.wait_for(anext(stream), max(ends - time.time(), 0))
            except TimeoutError:
                if ends >= expires:
                    yield ServerSentEvent(event="expired", data={"reason": "token expired"})
                else:
                    yield ServerSentEvent(event="end", data={"reason": "reconnect with Last-Event-ID"})
                return
            if isinstance(item, Resync) or await _may_see(state, caller, item, hub=console.events):
                yield _to_sse(item)
    finally:
        await stream.aclose()


async def _may_see(state: GatewayState, caller: Caller, event: ApprovalEvent, *, hub: EventHub) -> bool:
    """The hub's answer, or, where it does not know the requester, approvals' (with the caller's token:
    an approval the caller may not read is not found)."""
    known = hub.visible(caller.principal, event)
    if known is not None:
        return known
    try:
        approval = await call(state, GetApproval(approval_id=event.approval_id), ApprovalView, token=caller.token,
                              correlation_id=caller.correlation_id)
    except GateError:
        return False
    hub.remember_owner(approval.id, approval.operator_id)
    return approval.operator_id == caller.principal.subject


def _to_sse(item: ApprovalEvent | Resync) -> ServerSentEvent:
    if isinstance(item, Resync):
        return ServerSentEvent(event="resync", data={"reason": item.reason})
    return ServerSentEvent(event="approval", id=item.event_id, raw_data=item.to_json().decode())
