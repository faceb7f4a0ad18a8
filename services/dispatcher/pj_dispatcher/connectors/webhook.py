"""Signed webhook: POST JSON with an HMAC-SHA256 signature and an idempotency key.

The URL is the operator's, but what its host resolves to is whoever runs its DNS: each attempt resolves
the host once, checks every address (pj_dispatcher.connectors.addresses) and connects to a checked
address itself, with the URL's Host header and TLS server name, so a second lookup cannot rebind the
connection to an internal address.
"""

import hashlib
import hmac
import json
import time
from collections.abc import Mapping

import httpx
from pydantic import SecretStr

from .addresses import IPAddress, Resolver, TargetRefused, resolve_checked, system_resolver
from .base import ApiConnector, Operation, StepContext, StepOutput, permanent
from .http_errors import classify_status, classify_transport


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, what receivers verify."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookConnector(ApiConnector):
    name = "webhook"

    def __init__(self, client: httpx.AsyncClient, *, url: str | None, secret: SecretStr | None,
                 allow_private: bool, resolve: Resolver = system_resolver) -> None:
        self._client = client
        self._url = url
        self._secret = secret
        self._allow_private = allow_private
        self._resolve = resolve

    def missing_settings(self) -> list[str]:
        missing: list[str] = []
        if not self._url:
            missing.append("PJ_WEBHOOK_URL")
        if self._secret is None:
            missing.append("PJ_WEBHOOK_SECRET")
        return missing

    def operations(self) -> Mapping[str, Operation]:
        return {"post": self._post}

    def secrets(self) -> tuple[str | None, ...]:
        # The secret only signs and is never sent, but a receiver might still echo it back.
        return (self._secret.get_secret_value() if self._secret is not None else None,)

    async def _post(self, ctx: StepContext) -> StepOutput:
        assert self._url is not None and self._secret is not None  # checked by missing_settings
        url = httpx.URL(self._url)
        addresses = await self._checked_addresses(url)
        body = json.dumps({"approvalId": ctx.approval_id, "actionId": ctx.action_id,
                           "payload": ctx.step.params.get("body")}, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-PJ-Timestamp": timestamp,
            "X-PJ-Signature": sign(self._secret.get_secret_value(), timestamp, body),
            "Idempotency-Key": ctx.idempotency_key,
            "Host": url.netloc.decode("ascii"),  # the URL's, not the address connected to
        }
        response = await self._send_pinned(url, addresses, body=body, headers=headers)
        if response.is_redirect:
            raise permanent("redirect_refused", f"webhook answered {response.status_code} redirect; not followed",
                            response.status_code)
        if not response.is_success:
            raise classify_status(response, "webhook")
        return StepOutput(result={"status": response.status_code}, http_status=response.status_code)

    async def _checked_addresses(self, url: httpx.URL) -> list[IPAddress]:
        if not url.host:
            raise permanent("invalid_target", "webhook URL has no host")
        try:
            return await resolve_checked(url.host, url.port or (443 if url.scheme == "https" else 80),
                                         resolve=self._resolve, allow_private=self._allow_private)
        except TargetRefused as exc:
            raise permanent(exc.code, f"webhook: {exc.message}") from exc

    async def _send_pinned(self, url: httpx.URL, addresses: list[IPAddress], *, body: bytes,
                           headers: dict[str, str]) -> httpx.Response:
        """POST to the first of `addresses` that accepts a connection; never to any other address."""
        last: httpx.ConnectError | None = None
        for address in addresses:
            # The certificate is checked against the URL's host, as if it had been connected to by name.
            # The client's pool keys connections by address; the webhook has one URL, so a pooled
            # connection to this address was always made under this name.
            extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
            request = self._client.build_request("POST", url.copy_with(host=str(address)), content=body,
                                                 headers=headers, extensions=extensions)
            try:
                return await self._client.send(request, follow_redirects=False)
            except httpx.ConnectError as exc:
                last = exc  # nothing was sent: the next checked address may be tried
            except httpx.HTTPError as exc:
                raise classify_transport(exc, "webhook") from exc
        assert last is not None  # resolve_checked returns at least one address
        raise classify_transport(last, "webhook") from last
