"""Signatures on the messages that make things happen: dispatch orders (approvals -> dispatcher) and
step reports (dispatcher -> approvals).

The signature is an HMAC-SHA256 of the message body's exact bytes, carried in an AMQP header, so
nothing has to be re-serialized to check it. Only approvals and the dispatchers hold the key
(PJ_DISPATCH_SIGNING_KEY); the gateway does not. Whoever can publish to the broker without the key
cannot make a dispatcher run anything, nor change an approval with a forged report.
"""

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

SIGNATURE_HEADER = "x-pj-signature"
_PREFIX = "sha256="


def sign(body: bytes, key: str) -> str:
    """The header value that signs `body` with `key`."""
    return _PREFIX + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def signature_headers(body: bytes, key: str) -> dict[str, str]:
    """The AMQP headers that carry `body`'s signature."""
    return {SIGNATURE_HEADER: sign(body, key)}


def is_signed(body: bytes, headers: Mapping[str, Any] | None, key: str) -> bool:
    """True when `headers` carry a valid signature of `body` by `key` (constant-time comparison)."""
    given = (headers or {}).get(SIGNATURE_HEADER)
    if isinstance(given, bytes):
        given = given.decode("ascii", "replace")
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given, sign(body, key))
