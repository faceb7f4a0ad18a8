"""What `pj login` does before it stores a token: find the identity provider (a flag, else the one the
gateway's console signs in with), and run the device flow with the person at the terminal.

The protocol itself is `pj_client.oidc`; this module is the conversation around it.
"""

import time
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from .config import SignIn
from .oidc import DeviceAuthorization, discover, poll_for_tokens, provider_client, start_device_flow

DEFAULT_LOGIN_SCOPE = "openid profile offline_access"


def gateway_sign_in(target: str) -> dict[str, Any]:
    """The OpenID provider the gateway's console signs in with (`signIn` of /console/config.json), or {}."""
    try:
        response = httpx.get(f"{target}/console/config.json", timeout=5.0)
        sign_in = response.json().get("signIn") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return {}  # an older gateway, or none there yet: the issuer must come from --issuer
    return sign_in if isinstance(sign_in, dict) and sign_in.get("issuer") else {}


def with_offline_access(scopes: str) -> str:
    """The console's scopes, plus offline_access: a terminal needs a refresh token to outlive one access token."""
    names = scopes.split()
    return " ".join([*names, "offline_access"] if "offline_access" not in names else names)


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    """Where `pj login` signs in, and what it asks for."""

    issuer: str
    client_id: str
    scope: str
    resource: str | None


def choose_provider(console: dict[str, Any], *, issuer: str | None, client_id: str) -> ProviderChoice | None:
    """--issuer (or PJ_OIDC_ISSUER), else the gateway's own provider (`console`: what `gateway_sign_in`
    found); None when neither names one. The scopes (and RFC 8707 resource) are the console's when it
    signs in at the same provider."""
    chosen = (issuer or str(console.get("issuer") or "")).rstrip("/")
    if not chosen:
        return None
    same = str(console.get("issuer") or "").rstrip("/") == chosen
    scopes = with_offline_access(str(console["scopes"])) if same and console.get("scopes") else DEFAULT_LOGIN_SCOPE
    resource = str(console["resource"]) if same and console.get("resource") else None
    return ProviderChoice(issuer=chosen, client_id=client_id, scope=scopes, resource=resource)


def show_code(err: Console, started: DeviceAuthorization) -> None:
    """The code and the page to confirm it on (the provider's words: escaped, never read as markup)."""
    minutes = max(1, started.expires_in // 60)
    code = escape(started.user_code)
    if started.verification_uri_complete:
        err.print(f"To sign in, open this page in a browser and check that it shows the code [bold]{code}[/]:"
                  f"\n  {escape(started.verification_uri_complete)}", highlight=False)
    else:
        err.print(f"To sign in, open this page in a browser and enter the code [bold]{code}[/]:"
                  f"\n  {escape(started.verification_uri)}", highlight=False)
    err.print(f"Waiting for you to confirm (the code expires in {minutes} min; Ctrl-C gives up)...", highlight=False)


def device_sign_in(choice: ProviderChoice, err: Console) -> tuple[str, SignIn] | None:
    """The device flow at the provider: the access token and how to renew it; None when it offers no device flow."""
    with provider_client() as http:
        discovery = discover(http, choice.issuer)
        if discovery.device_authorization_endpoint is None:
            err.print(f"{escape(choice.issuer)} offers no device sign-in (its discovery document has no "
                      "device_authorization_endpoint): paste a token from it instead.", highlight=False)
            return None
        started = start_device_flow(http, discovery, client_id=choice.client_id, scope=choice.scope,
                                    resource=choice.resource)
        show_code(err, started)
        tokens = poll_for_tokens(http, discovery, started, client_id=choice.client_id)
    # Counted from the answer: renewal starts RENEW_EARLY_S before the end, which covers its latency.
    sign_in = SignIn(issuer=discovery.issuer, client_id=choice.client_id, token_endpoint=discovery.token_endpoint,
                     refresh_token=tokens.refresh_token, expires_at=tokens.expires_at(time.time()))
    return tokens.access_token, sign_in
