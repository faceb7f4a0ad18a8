"""Token signing keys: a shared secret (HS256, for development), a configured public key, or the JWKS
document of an identity provider, cached and refreshed by key id.

Verification stays synchronous and fast: it only looks keys up. Fetching the JWKS is asynchronous
(httpx), done at start and again when a token names a key id the cache lacks or the cache is old,
and never more often than once per `min_refresh_interval_s`: a stream of tokens with made-up key ids
costs the identity provider one request a minute, not one per token.
"""

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .errors import ErrorCode, GateError

log = logging.getLogger("pj.auth.jwks")

# A JWKS document is a few keys; anything much larger is not one.
MAX_JWKS_BYTES = 256 * 1024
# Asymmetric key types only: a symmetric ("oct") key published in a JWKS would be a secret everyone knows.
PUBLIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


class KeySource(Protocol):
    """Where a token's verification key comes from."""

    def key_for(self, header: Mapping[str, Any]) -> Any:
        """The key that verifies a token with this (unverified) header; `GateError` if there is none."""
        ...

    async def prepare(self, header: Mapping[str, Any]) -> None:
        """Make sure `key_for(header)` has what it needs (a JWKS fetch, at most once a minute)."""
        ...


class SharedSecret:
    """The HS256 secret of development set-ups: whoever holds it can mint tokens."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def key_for(self, header: Mapping[str, Any]) -> Any:
        return self._secret

    async def prepare(self, header: Mapping[str, Any]) -> None:
        return None


def load_public_key(pem: str) -> PublicKey:
    """A PEM public key (RSA, EC, Ed25519 or Ed448); ValueError for anything else, a private key included."""
    try:
        key = serialization.load_pem_public_key(pem.strip().encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM public key (a private key or certificate is refused)") from exc
    if not isinstance(key, PublicKey):
        raise ValueError(f"unsupported public key type {type(key).__name__}")
    return key


def algorithms_for(key: PublicKey) -> tuple[str, ...]:
    """The JWS algorithms a public key of this type verifies."""
    if isinstance(key, rsa.RSAPublicKey):
        return ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ({"secp256r1": ("ES256",), "secp384r1": ("ES384",), "secp521r1": ("ES512",),
                 "secp256k1": ("ES256K",)}.get(key.curve.name, ()))
    return ("EdDSA",)


class StaticPublicKey:
    """One configured public key (PJ_JWT_PUBLIC_KEY): verifies, can never mint."""

    def __init__(self, key: PublicKey | str) -> None:
        self.key = load_public_key(key) if isinstance(key, str) else key

    def key_for(self, header: Mapping[str, Any]) -> Any:
        return self.key

    async def prepare(self, header: Mapping[str, Any]) -> None:
        return None


def parse_jwks(document: Any) -> dict[str | None, jwt.PyJWK]:
    """Key id -> key, of the usable signing keys of a JWKS document. A key without a key id is kept
    (under None) only when it is the document's one key: otherwise a token could not say which it means."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no keys list)")
    keys: dict[str | None, jwt.PyJWK] = {}
    entries = [k for k in document["keys"] if isinstance(k, dict) and k.get("kty") in PUBLIC_KEY_TYPES
               and k.get("use", "sig") == "sig"]
    for entry in entries:
        kid = entry.get("kid")
        if kid is None and len(entries) > 1:
            continue
        try:
            keys[kid if isinstance(kid, str) else None] = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            log.warning("JWKS key %r skipped: %s", kid, exc, extra={"scope": "auth.jwks.key_skipped"})
    if not keys:
        raise ValueError("the JWKS document has no usable signing key")
    return keys


class JwksKeys:
    """The signing keys of a JWKS URL, cached by key id.

    `prepare` fetches when a token's key id is unknown (the caller waits for it), or in the background
    when the cache is older than `max_age_s` (the caller goes on with the cached key); at most once per
    `min_refresh_interval_s`, and callers arriving during a fetch wait for it instead of starting another.
    A failed fetch keeps the keys it had.
    """

    def __init__(
        self,
        url: str,
        *,
        min_refresh_interval_s: float = 60.0,
        max_age_s: float = 3600.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._min_refresh_interval_s = min_refresh_interval_s
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[bool] | None = None
        self.fetches = 0  # requests made to the URL: what the once-a-minute limit bounds

    @property
    def key_ids(self) -> frozenset[str | None]:
        return frozenset(self._keys)

    def key_for(self, header: Mapping[str, Any]) -> Any:
        key = self._keys.get(_kid(header))
        if key is None:
            raise GateError(ErrorCode.UNAUTHORIZED, "token signed by an unknown key")
        return key

    async def prepare(self, header: Mapping[str, Any]) -> None:
        if _kid(header) not in self._keys:
            await self.refresh()
        elif self._fetched_at is not None and self._clock() - self._fetched_at > self._max_age_s and (
                self._background is None or self._background.done()):
            # Old but known: verify with it now, and pick up withdrawn keys without making anyone wait.
            self._background = asyncio.create_task(self.refresh(), name="jwks-refresh")

    async def start(self) -> None:
        """The first fetch, at process start (a failure is logged; tokens then trigger the next one)."""
        await self.refresh()

    async def stop(self) -> None:
        """Cancel a background refresh still running (at process stop)."""
        task, self._background = self._background, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    async def refresh(self) -> bool:
        """Fetch the document again unless that was tried less than `min_refresh_interval_s` ago; True if
        this call replaced the keys."""
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._min_refresh_interval_s:
                return False
            self._attempted_at = now
            try:
                keys = parse_jwks(await self._fetch())
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("JWKS fetch from %s failed: %s", self.url, exc, extra={"scope": "auth.jwks.failed"})
                return False
            self._keys, self._fetched_at = keys, self._clock()
            log.info("JWKS keys loaded: %s", ", ".join(sorted(str(k) for k in keys)),
                     extra={"scope": "auth.jwks.loaded"})
            return True

    async def _fetch(self) -> Any:
        self.fetches += 1
        async with httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False) as client, \
                client.stream("GET", self.url, headers={"Accept": "application/json"}) as response:
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the JWKS document is larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)


def _kid(header: Mapping[str, Any]) -> str | None:
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None
