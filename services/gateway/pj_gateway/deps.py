"""Request dependencies, named once: the state, the authenticated caller, and the CSRF check."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pj_common.auth import Principal
from pj_common.errors import ErrorCode, GateError

from .errors import correlation_id
from .state import GatewayState

CSRF_HEADER = "X-PuddleJumper-Request"

# auto_error=False: a missing token is our `unauthorized` envelope, not FastAPI's own 401 body.
bearer = HTTPBearer(auto_error=False, description="A JWT from the identity provider (PJ_JWT_JWKS_URL or "
                                                    "PJ_JWT_PUBLIC_KEY), or signed with PJ_JWT_SECRET (`make token`)")


async def get_state(request: Request) -> GatewayState:
    # async: a plain def would be run in a worker thread on every request.
    return request.app.state.gateway  # type: ignore[no-any-return]  # Starlette types app.state as Any


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller: its principal, its raw token (approvals verifies it again) and correlation id."""

    principal: Principal
    token: str
    correlation_id: str


async def get_caller(
    request: Request,
    state: Annotated[GatewayState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """Verify the bearer token."""
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise GateError(ErrorCode.UNAUTHORIZED, "missing bearer token")
    # A JWKS key id seen for the first time is fetched here, asynchronously; verify itself is synchronous.
    await state.verifier.prepare(token)
    caller = Caller(state.verifier.verify(token), token, correlation_id(request))
    request.state.caller = caller  # for the access log line
    return caller


async def get_writer(
    caller: Annotated[Caller, Depends(get_caller)],
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER, examples=["true"],
                                       description="Must be `true` on every state-changing request")] = None,
) -> Caller:
    """A caller allowed to change state: verified token first, then the CSRF header (a browser form
    cannot set it)."""
    if csrf != "true":
        raise GateError(ErrorCode.CSRF_REQUIRED, f"header {CSRF_HEADER}: true is required")
    return caller


State = Annotated[GatewayState, Depends(get_state)]
CallerDep = Annotated[Caller, Depends(get_caller)]
WriterDep = Annotated[Caller, Depends(get_writer)]
