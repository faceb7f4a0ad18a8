"""Signing in from a terminal through an OpenID provider: discovery, the device authorization grant
(RFC 8628) and the refresh token grant (RFC 6749 section 6), over httpx.

    discovery = discover(http, issuer)
    started = start_device_flow(http, discovery, client_id="pj-cli", scope="openid offline_access")
    # show started.user_code and started.verification_uri to the person, then:
    tokens = poll_for_tokens(http, discovery, started, client_id="pj-cli")

What to do with each answer of the token endpoint while the person confirms is `next_step`, a pure
function: the polling loop only sleeps, asks and follows it. A few form posts and JSON answers are all
this needs, hence httpx alone rather than an OAuth library.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ClientError, Forbidden, InvalidRequest, Unauthorized, Unavailable

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL_S = 5.0   # RFC 8628 section 3.2: when the provider names no interval
SLOW_DOWN_STEP_S = 5.0     # RFC 8628 section 3.5: every slow_down adds five seconds, for good
MIN_INTERVAL_S = 1.0       # never hammer a provider that answers interval=0
PROVIDER_TIMEOUT_S = 10.0

# Error codes of a sign-in that fails before any gateway is asked (the OAuth codes pass through as they are).
PROVIDER_UNREACHABLE = "identity_provider_unreachable"
INVALID_DISCOVERY = "invalid_discovery"
INVALID_TOKEN_RESPONSE = "invalid_token_response"
SESSION_EXPIRED = "session_expired"


class Discovery(BaseModel):
    """The parts of the provider's `/.well-known/openid-configuration` a terminal sign-in needs."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    issuer: str
    token_endpoint: str
    device_authorization_endpoint: str | None = None


class DeviceAuthorization(BaseModel):
    """The device authorization response (RFC 8628 section 3.2)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None = None
    expires_in: int
    interval: int | None = None


class TokenSet(BaseModel):
    """A successful token response (RFC 6749 section 5.1)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    access_token: str
    token_type: str = "Bearer"
    expires_in: int | None = None
    refresh_token: str | None = None

    def expires_at(self, now: float) -> float | None:
        """When the access token ends, in the clock `now` is read from (None: the provider did not say)."""
        return now + self.expires_in if self.expires_in is not None else None


# ---------------------------------------------------------------- the polling state machine


@dataclass(frozen=True, slots=True)
class Granted:
    """The person confirmed: the tokens."""

    tokens: TokenSet


@dataclass(frozen=True, slots=True)
class KeepPolling:
    """Not yet: ask again after `interval_s`."""

    interval_s: float


@dataclass(frozen=True, slots=True)
class Refused:
    """It ended without tokens; `code` is the provider's OAuth error code (or ours for a broken answer)."""

    code: str
    message: str


Step = Granted | KeepPolling | Refused

_REFUSALS = {
    "access_denied": "the sign-in was refused at the identity provider",
    "expired_token": "the code expired before the sign-in was confirmed: run `pj login` again",
}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def next_step(status: int, body: bytes, *, interval_s: float) -> Step:
    """What one answer of the token endpoint means while the device flow waits (RFC 8628 section 3.5)."""
    answer = _json_object(body)
    if status == 200:
        try:
            return Granted(TokenSet.model_validate(answer))
        except ValidationError:
            return Refused(INVALID_TOKEN_RESPONSE, "the identity provider's token answer has no access token")
    error = str(answer.get("error") or f"http_{status}")
    if error == "authorization_pending":
        return KeepPolling(interval_s)
    if error == "slow_down":
        return KeepPolling(interval_s + SLOW_DOWN_STEP_S)
    described = answer.get("error_description")
    message = _REFUSALS.get(error) or (str(described) if described else f"the identity provider answered {status}")
    return Refused(error, message)


def refusal_error(refused: Refused) -> ClientError:
    """The exception (and so the exit status) of a sign-in that ended without tokens."""
    if refused.code == "access_denied":
        return Forbidden(refused.code, refused.message)
    if refused.code == INVALID_TOKEN_RESPONSE:
        return Unavailable(refused.code, refused.message)
    return Unauthorized(refused.code, refused.message)


# ---------------------------------------------------------------- talking to the provider


def _send(http: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return http.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise Unavailable(PROVIDER_UNREACHABLE, f"cannot reach the identity provider at {url}: {exc!r}") from exc


def discover(http: httpx.Client, issuer: str) -> Discovery:
    """The provider's discovery document; its `issuer` must be the one asked for (OpenID Discovery 4.3)."""
    issuer = issuer.rstrip("/")
    url = f"{issuer}/.well-known/openid-configuration"
    response = _send(http, "GET", url, follow_redirects=True)
    if response.status_code != 200:
        raise Unavailable(INVALID_DISCOVERY, f"{url} answered {response.status_code}", status=response.status_code)
    try:
        found = Discovery.model_validate(_json_object(response.content))
    except ValidationError as exc:
        raise InvalidRequest(INVALID_DISCOVERY, f"{url} is not an OpenID discovery document: "
                                                f"{exc.errors(include_url=False)[0]['msg']}") from exc
    if found.issuer.rstrip("/") != issuer:
        # A document naming another issuer could send our tokens to someone else's endpoints.
        raise InvalidRequest(INVALID_DISCOVERY, f"{url} names issuer {found.issuer}, not {issuer}")
    return found


def start_device_flow(http: httpx.Client, discovery: Discovery, *, client_id: str, scope: str,
                      resource: str | None = None) -> DeviceAuthorization:
    """Ask for a device code and the user code the person confirms in a browser."""
    endpoint = discovery.device_authorization_endpoint
    if endpoint is None:
        raise InvalidRequest("device_flow_unsupported", f"{discovery.issuer} offers no device authorization")
    form = {"client_id": client_id, "scope": scope, **({"resource": resource} if resource else {})}
    response = _send(http, "POST", endpoint, data=form)
    answer = _json_object(response.content)
    if response.status_code != 200:
        # e.g. invalid_client: the provider does not know this client, or not for the device grant.
        code = str(answer.get("error") or f"http_{response.status_code}")
        raise InvalidRequest(code, str(answer.get("error_description") or f"{endpoint} answered "
                                                                           f"{response.status_code}"),
                             status=response.status_code)
    try:
        return DeviceAuthorization.model_validate(answer)
    except ValidationError as exc:
        raise Unavailable(INVALID_TOKEN_RESPONSE, f"{endpoint} gave no usable device code") from exc


def poll_for_tokens(http: httpx.Client, discovery: Discovery, started: DeviceAuthorization, *, client_id: str,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> TokenSet:
    """Ask the token endpoint every `interval` until the person confirmed, refused, or the code expired."""
    deadline = clock() + started.expires_in
    interval = max(float(started.interval or DEFAULT_INTERVAL_S), MIN_INTERVAL_S)
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": started.device_code, "client_id": client_id}
    while clock() + interval <= deadline:  # bounded: every turn sleeps at least MIN_INTERVAL_S
        sleep(interval)
        response = _send(http, "POST", discovery.token_endpoint, data=form)
        step = next_step(response.status_code, response.content, interval_s=interval)
        if isinstance(step, Granted):
            return step.tokens
        if isinstance(step, Refused):
            raise refusal_error(step)
        interval = step.interval_s
    raise refusal_error(Refused("expired_token", _REFUSALS["expired_token"]))


def refresh(http: httpx.Client, *, token_endpoint: str, client_id: str, refresh_token: str) -> TokenSet:
    """A new access token for the refresh token; a refused one means signing in again."""
    response = _send(http, "POST", token_endpoint, data={
        "grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id})
    step = next_step(response.status_code, response.content, interval_s=0)
    if isinstance(step, Granted):
        return step.tokens
    if isinstance(step, Refused) and step.code == INVALID_TOKEN_RESPONSE:
        raise refusal_error(step)
    reason = step.message if isinstance(step, Refused) else "the provider asked to wait"
    raise Unauthorized(SESSION_EXPIRED, f"the sign-in could not be renewed: {reason}",
                       status=response.status_code)


def provider_client() -> httpx.Client:
    """The HTTP client for the identity provider."""
    return httpx.Client(timeout=PROVIDER_TIMEOUT_S, headers={"Accept": "application/json", "User-Agent": "pj-client"})
