"""The web console: its static assets under /console, its configuration, the token endpoint on the
browser's behalf, and (PJ_ENV=dev only) development tokens for the role picker.

Every response under /console carries strict security headers: a CSP without inline script or style,
no framing, no referrer (the sign-in code must not leak), and no caching of anything with a token.
"""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from pj_common.auth import Role, mint_token
from pj_common.errors import ErrorCode, GateError

from ..console.events import EventHub
from ..console.oidc import OidcClient, TokenGrant
from ..deps import CSRF_HEADER, CallerDep, State
from ..errors import error_responses
from ..settings import ConsoleSettings
from ..state import GatewayState

STATIC = Path(__file__).resolve().parent.parent / "console" / "static"
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\.(html|js|css|svg|png)$")
DEV_TOKEN_TTL_S = 3600

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class ConsoleState:
    """The console's long-lived parts, built in its lifespan."""

    settings: ConsoleSettings
    oidc: OidcClient
    http: httpx.AsyncClient
    events: EventHub

    @classmethod
    def build(cls, settings: ConsoleSettings, gateway: GatewayState) -> "ConsoleState":
        http = httpx.AsyncClient(timeout=5.0, trust_env=False)
        hub = EventHub(gateway.settings.amqp_url, gateway.topology.events, history=settings.console_event_history)
        return cls(settings=settings, oidc=OidcClient(settings, http), http=http, events=hub)


@asynccontextmanager
async def console_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the event hub's broker connection and the HTTP client to the identity provider."""
    console = ConsoleState.build(ConsoleSettings(), app.state.gateway)
    app.state.console = console
    console.events.start()
    await console.events.wait_ready(timeout=5)  # serve even without a broker: streams start once it is back
    try:
        yield
    finally:
        await console.events.stop()
        await console.http.aclose()


async def get_console(request: Request) -> ConsoleState:
    return request.app.state.console  # type: ignore[no-any-return]  # Starlette types app.state as Any


ConsoleDep = Annotated[ConsoleState, Depends(get_console)]

router = APIRouter(prefix="/console", tags=["console"], lifespan=console_lifespan)


async def require_csrf(
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER, examples=["true"],
                                       description="Must be `true` (a browser form cannot set it)")] = None,
) -> None:
    """The console's POSTs carry the CSRF header as every API write does."""
    if csrf != "true":
        raise GateError(ErrorCode.CSRF_REQUIRED, f"header {CSRF_HEADER}: true is required")


Csrf = Depends(require_csrf)


@router.get("", include_in_schema=False)
async def console_root() -> Response:
    return RedirectResponse("/console/", status_code=308, headers=SECURITY_HEADERS)


@router.get("/", include_in_schema=False)
async def console_index() -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers={**SECURITY_HEADERS, **NO_STORE})


@router.get("/assets/{name}", include_in_schema=False)
async def console_asset(name: str) -> Response:
    """One static asset by plain name (no paths: nothing outside the static folder can be asked for)."""
    path = STATIC / name
    if not _ASSET_NAME.match(name) or not path.is_file():
        raise GateError(ErrorCode.NOT_FOUND, "no such console asset")
    return FileResponse(path, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


class ConsoleConfig(BaseModel):
    """What the console needs before sign-in."""

    model_config = ConfigDict(extra="forbid")

    env: str
    devTokens: bool
    signIn: dict[str, Any] | None = Field(description="issuer, clientId, scopes, resource, authorizationEndpoint, "
                                                      "endSessionEndpoint; null when PJ_OIDC_ISSUER is not set")
    roles: list[str]


def _dev_tokens(state: GatewayState) -> bool:
    """Development tokens: only in dev, and only where the gateway holds the secret that signs tokens
    (with a JWKS URL or a public key, tokens come from the identity provider alone)."""
    return state.settings.env == "dev" and state.settings.jwt_secret is not None


@router.get("/config.json", response_model=ConsoleConfig, responses=error_responses(503, 504))
async def console_config(state: State, console: ConsoleDep) -> Response:
    """How to sign in: the OpenID provider's endpoints (from its discovery document), and whether the
    development role picker is offered (PJ_ENV=dev only)."""
    sign_in: dict[str, Any] | None = None
    if console.oidc.configured:
        discovery = await console.oidc.discover()
        sign_in = {"issuer": discovery.issuer, "clientId": console.settings.oidc_client_id,
                   "scopes": console.settings.oidc_scopes, "resource": console.settings.oidc_resource,
                   "authorizationEndpoint": discovery.authorization_endpoint,
                   "endSessionEndpoint": discovery.end_session_endpoint}
    config = ConsoleConfig(env=state.settings.env, devTokens=_dev_tokens(state), signIn=sign_in,
                           roles=[str(r) for r in Role])
    return JSONResponse(config.model_dump(), headers={**SECURITY_HEADERS, **NO_STORE})


class TokenAnswer(BaseModel):
    """The identity provider's token response (RFC 6749 section 5.1), passed on as it came; a refusal is
    the provider's own `{error, error_description}` with its status."""

    model_config = ConfigDict(extra="allow")

    access_token: str
    token_type: str
    expires_in: int | None = None
    refresh_token: str | None = None
    id_token: str | None = None
    scope: str | None = None


@router.post("/auth/token", response_model=TokenAnswer, dependencies=[Csrf],
             responses=error_responses(403, 404, 422, 504))
async def console_token(grant: TokenGrant, console: ConsoleDep) -> Response:
    """The provider's token endpoint on the console's behalf (code + PKCE verifier, or refresh token);
    the provider's answer is passed back as it is, status included."""
    status, body = await console.oidc.token(grant)
    return JSONResponse(body, status_code=status, headers={**SECURITY_HEADERS, **NO_STORE})


class Me(BaseModel):
    """The caller as the gateway verified its token."""

    model_config = ConfigDict(extra="forbid")

    sub: str
    tenant: str
    role: Role


class MeBody(BaseModel):
    """What /console/me answers: the caller under `data`."""

    model_config = ConfigDict(extra="forbid")

    data: Me


@router.get("/me", response_model=MeBody, responses=error_responses(401))
async def console_me(caller: CallerDep) -> Response:
    """Who the token says the caller is (the console shows it and decides which buttons to offer)."""
    me = Me(sub=caller.principal.subject, tenant=caller.principal.tenant, role=caller.principal.role)
    return JSONResponse({"data": me.model_dump(mode="json")}, headers={**SECURITY_HEADERS, **NO_STORE})


class DevTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    sub: str = Field(min_length=1, max_length=200, pattern=r"^[\w.@-]+$")
    tenant: str = Field(default="default", min_length=1, max_length=200, pattern=r"^[\w.-]+$")


@router.post("/dev-token", response_model=TokenAnswer, responses=error_responses(403, 404, 422))
async def dev_token(
    body: DevTokenBody, state: State,
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER, examples=["true"], description="Must be `true`")] = None,
) -> Response:
    """PJ_ENV=dev only: a token for any role, signed with the development secret (404 otherwise)."""
    if not _dev_tokens(state):
        raise GateError(ErrorCode.NOT_FOUND, "development tokens exist only when PJ_ENV=dev with a PJ_JWT_SECRET")
    await require_csrf(csrf)
    settings = state.settings
    token = mint_token(settings.jwt_key, subject=body.sub, tenant=body.tenant, role=body.role,
                       issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl_s=DEV_TOKEN_TTL_S)
    return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": DEV_TOKEN_TTL_S},
                        headers={**SECURITY_HEADERS, **NO_STORE})
