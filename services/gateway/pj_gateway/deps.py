"""Request dependencies, named once: the state, and the authenticated caller."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from pj_common.auth import Principal
from pj_common.errors import ErrorCode, GateError

from .errors import correlation_id
from .state import GatewayState

CSRF_HEADER = "X-PuddleJumper-Request"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def get_state(request: Request) -> GatewayState:
    # async: a plain def would be run in a worker thread on every request.
    return request.app.state.gateway  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller: its principal, its raw token (approvals verifies it again) and correlation id."""

    principal: Principal
    token: str
    correlation_id: str


async def get_caller(request: Request, state: Annotated[GatewayState, Depends(get_state)]) -> Caller:
    """Verify the bearer token, then (for state-changing methods) the CSRF header."""
    cid = correlation_id(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise GateError(ErrorCode.UNAUTHORIZED, "missing bearer token")
    principal = state.verifier.verify(token.strip())
    if request.method in _UNSAFE and request.headers.get(CSRF_HEADER) != "true":
        raise GateError(ErrorCode.CSRF_REQUIRED, f"header {CSRF_HEADER}: true is required")
    return Caller(principal, token.strip(), cid)


State = Annotated[GatewayState, Depends(get_state)]
CallerDep = Annotated[Caller, Depends(get_caller)]
