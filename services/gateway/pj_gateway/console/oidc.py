"""The gateway's side of the console's sign-in: discovery, and the token endpoint on the browser's behalf.

The browser runs the authorization code flow with PKCE (it holds the verifier); the gateway only reads
the provider's discovery document and forwards the code or refresh token to the token endpoint, adding
the client secret when one is configured, so the secret never reaches the browser.
"""

import time
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from pj_common.errors import ErrorCode, GateError

from ..settings import ConsoleSettings

DISCOVERY_TTL_S = 300.0


@dataclass(frozen=True, slots=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    end_session_endpoint: str | None


class TokenGrant(BaseModel):
    """What the console may send to the token endpoint through the gateway."""

    model_config = ConfigDict(extra="forbid")

    grant_type: str
    code: str | None = None
    code_verifier: str | None = None
    redirect_uri: str | None = None
    refresh_token: str | None = None

    def form(self) -> dict[str, str]:
        """The form fields of this grant; only the two grants a console uses pass."""
        if self.grant_type == "authorization_code" and self.code and self.code_verifier and self.redirect_uri:
            return {"grant_type": self.grant_type, "code": self.code, "code_verifier": self.code_verifier,
                    "redirect_uri": self.redirect_uri}
        if self.grant_type == "refresh_token" and self.refresh_token:
            return {"grant_type": self.grant_type, "refresh_token": self.refresh_token}
        raise GateError(ErrorCode.VALIDATION_ERROR,
                        "expected an authorization_code grant (code, code_verifier, redirect_uri) "
                        "or a refresh_token grant (refresh_token)")


class OidcClient:
    """Discovery (cached) and token requests for the one configured issuer."""

    def __init__(self, settings: ConsoleSettings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http
        self._discovery: tuple[Discovery, float] | None = None

    @property
    def configured(self) -> bool:
        return self._settings.oidc_issuer is not None

    async def discover(self) -> Discovery:
        """The issuer's endpoints, read at most every DISCOVERY_TTL_S; 503 when the provider is unreachable."""
        if self._discovery is not None and time.monotonic() < self._discovery[1]:
            return self._discovery[0]
        issuer = (self._settings.oidc_issuer or "").rstrip("/")
        if not issuer:
            raise GateError(ErrorCode.NOT_FOUND, "sign-in is not configured (PJ_OIDC_ISSUER)")
        try:
            r = await self._http.get(f"{issuer}/.well-known/openid-configuration")
            r.raise_for_status()
            doc: dict[str, Any] = r.json()
            found = Discovery(issuer=str(doc["issuer"]), authorization_endpoint=str(doc["authorization_endpoint"]),
                              token_endpoint=str(doc["token_endpoint"]),
                              end_session_endpoint=doc.get("end_session_endpoint"))
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise GateError(ErrorCode.UPSTREAM_TIMEOUT,
                            f"the identity provider's discovery document could not be read ({type(exc).__name__})"
                            ) from exc
        if found.issuer.rstrip("/") != issuer:  # OpenID Connect Discovery 1.0, section 4.3
            raise GateError(ErrorCode.UPSTREAM_TIMEOUT, "the discovery document names another issuer")
        self._discovery = (found, time.monotonic() + DISCOVERY_TTL_S)
        return found

    async def token(self, grant: TokenGrant) -> tuple[int, dict[str, Any]]:
        """Forward one grant to the token endpoint; the provider's status and JSON answer."""
        form = {**grant.form(), "client_id": self._settings.oidc_client_id}
        secret = self._settings.oidc_client_secret
        if secret is not None:
            form["client_secret"] = secret.get_secret_value()
        endpoint = (await self.discover()).token_endpoint
        try:
            r = await self._http.post(endpoint, data=form, headers={"Accept": "application/json"})
            body: dict[str, Any] = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise GateError(ErrorCode.UPSTREAM_TIMEOUT,
                            f"the identity provider's token endpoint did not answer ({type(exc).__name__})") from exc
        return r.status_code, body
