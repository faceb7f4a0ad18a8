"""An identity provider's key endpoint on 127.0.0.1: serves a JWKS document the test can rotate, and
counts the fetches (what the once-a-minute refresh limit bounds)."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from pj_common.auth import Role, token_claims
from tests.support.local_http import serving


@dataclass
class SigningKey:
    """One RSA key pair of the identity provider, with its key id."""

    kid: str
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK, as an identity provider publishes it."""
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def token(self, *, subject: str = "alice", tenant: str = "acme", role: Role | str = Role.ADMIN,
              issuer: str = "https://idp.test", audience: str = "pj-approval-gate", ttl_s: int = 300) -> str:
        claims = token_claims(subject=subject, tenant=tenant, role=role, issuer=issuer, audience=audience,
                              ttl_s=ttl_s)
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})


@dataclass
class JwksEndpoint:
    """What the endpoint serves now, and how often it was asked."""

    url: str = ""
    keys: list[SigningKey] = field(default_factory=list)
    fetches: int = 0
    delay_s: float = 0.0  # a slow identity provider
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, *keys: SigningKey) -> None:
        """Serve exactly these keys from now on (a key rotation)."""
        with self._lock:
            self.keys = list(keys)

    def document(self) -> bytes:
        with self._lock:
            self.fetches += 1
            return json.dumps({"keys": [key.jwk() for key in self.keys]}).encode()


@contextmanager
def jwks_endpoint(*keys: SigningKey) -> Iterator[JwksEndpoint]:
    """Serve `keys` as a JWKS document at <url> on 127.0.0.1 until the block ends."""
    endpoint = JwksEndpoint(keys=list(keys))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(endpoint.delay_s)
            body = endpoint.document()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return

    with serving(Handler) as base_url:
        endpoint.url = f"{base_url}/protocol/openid-connect/certs"
        yield endpoint
