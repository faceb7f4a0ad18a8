"""Outgoing notification webhooks, signed as the webhook connector signs its calls.

`X-PJ-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` with `X-PJ-Timestamp`, so one
receiver verifies both. The connector's `sign` lives in the dispatcher, which services may not import;
these four lines are its copy.
"""

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from . import DeliveryFailed


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, what receivers verify."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookSender:
    def __init__(self, http: httpx.AsyncClient, *, secret: str | None) -> None:
        self._http = http
        self._secret = secret

    async def post(self, url: str, payload: dict[str, Any], *, idempotency_key: str) -> None:
        """POST the signed JSON; a receiver dedupes on Idempotency-Key (the same notice, the same key)."""
        if not self._secret:
            raise DeliveryFailed("PJ_NOTIFIER_WEBHOOK_SECRET is not set", permanent=True)
        body = json.dumps(payload, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-PJ-Timestamp": timestamp,
                   "X-PJ-Signature": sign(self._secret, timestamp, body), "Idempotency-Key": idempotency_key}
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"webhook: {type(exc).__name__}: {exc}", permanent=False) from exc
        if response.is_success:
            return
        retryable = response.status_code in (408, 425, 429) or response.status_code >= 500
        raise DeliveryFailed(f"webhook: HTTP {response.status_code}", permanent=not retryable)
