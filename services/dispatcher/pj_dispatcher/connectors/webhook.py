"""Signed webhook: POST JSON with an HMAC-SHA256 signature and an idempotency key."""

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from .base import ApiConnector, Operation, StepContext, StepOutput, permanent
from .http_errors import classify_status, classify_transport


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, what receivers verify."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


# RFC 6598 carrier-grade NAT space: not "private" to the ipaddress module, but never a public target.
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")


async def refuse_private_target(url: str) -> None:
    """SSRF guard: refuse hosts that resolve to private, loopback, link-local or reserved addresses."""
    host = urlsplit(url).hostname
    if not host:
        raise permanent("invalid_target", f"webhook URL has no host: {url!r}")
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise permanent("invalid_target", f"cannot resolve webhook host {host!r}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if (address.is_private or address.is_loopback or address.is_link_local or address.is_reserved
                or address.is_multicast or address.is_unspecified or address in _SHARED_ADDRESS_SPACE):
            raise permanent("target_not_allowed",
                            f"webhook host {host!r} resolves to non-public address {address}; "
                            "set PJ_WEBHOOK_ALLOW_PRIVATE=1 to allow it")


class WebhookConnector(ApiConnector):
    name = "webhook"

    def __init__(self, client: httpx.AsyncClient, *, url: str | None, secret: SecretStr | None,
                 allow_private: bool) -> None:
        self._client = client
        self._url = url
        self._secret = secret
        self._allow_private = allow_private

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
        if not self._allow_private:
            await refuse_private_target(self._url)
        body = json.dumps({"approvalId": ctx.approval_id, "actionId": ctx.action_id,
                           "payload": ctx.step.params.get("body")}, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-PJ-Timestamp": timestamp,
            "X-PJ-Signature": sign(self._secret.get_secret_value(), timestamp, body),
            "Idempotency-Key": ctx.idempotency_key,
        }
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise classify_transport(exc, "webhook") from exc
        if response.is_redirect:
            raise permanent("redirect_refused", f"webhook answered {response.status_code} redirect; not followed",
                            response.status_code)
        if not response.is_success:
            raise classify_status(response, "webhook")
        return StepOutput(result={"status": response.status_code}, http_status=response.status_code)
