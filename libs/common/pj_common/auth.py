"""Bearer-token verification, the same in the gateway and in every command consumer.

A token is refused unless: it is at most MAX_TOKEN_BYTES long; its header names an allowed algorithm
and no key of its own (`jku`, `x5u`, `jwk`, `x5c`: a token must never choose the key that verifies
it) and no `crit` extension; its signature verifies with the configured key (a secret, a public key
or the identity provider's JWKS); it carries `sub`, `exp` and `iat` (and `iss` and `aud` when they
are configured: always outside dev); it is valid now (30 s leeway) and lives no longer than the
maximum lifetime; and its subject, tenant and role are usable (pj_common.claims). Every refusal is
`GateError(unauthorized)` with a fixed message that never repeats the token.
"""

import time
from collections.abc import Sequence
from typing import Any

import jwt

from .claims import ClaimMapping
from .errors import ErrorCode, GateError
from .jwks import KeySource, SharedSecret
from .principal import Principal, Role

__all__ = ["ClaimMapping", "Principal", "Role", "TokenVerifier", "mint_token", "token_claims"]

MAX_TOKEN_BYTES = 8 * 1024
LEEWAY_S = 30
DEFAULT_MAX_TTL_S = 24 * 3600
# Header parameters that would let a token name its own verification key, or demand extensions we do not
# implement: refused whatever their value.
REFUSED_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})

_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidIssuerError, "token has the wrong issuer"),
    (jwt.InvalidAudienceError, "token has the wrong audience"),
    (jwt.InvalidAlgorithmError, "token algorithm is not allowed"),
    (jwt.InvalidSignatureError, "token signature does not verify"),
    (jwt.InvalidKeyError, "token algorithm does not fit the key"),
    (jwt.exceptions.InvalidSubjectError, "token claim sub is not a string"),
    (jwt.InvalidIssuedAtError, "token claim iat is not a number"),
)


def _refusal(exc: jwt.PyJWTError) -> str:
    """A fixed message per kind of failure: PyJWT's own messages may quote parts of the token."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim} claim"
    for kind, message in _REFUSALS:
        if isinstance(exc, kind):
            return message
    return "malformed token"


class TokenVerifier:
    """Verifies JWTs for one issuer and audience with one key source.

    `keys` is a KeySource, or a string taken as the HS256 secret. A token verified once is remembered
    (bounded) until it expires: a client sends the same token with every request, and each command is
    verified by the gateway and again by approvals.
    """

    CACHE_SIZE = 4096

    def __init__(
        self,
        keys: KeySource | str,
        issuer: str | None,
        audience: str | None,
        *,
        algorithms: Sequence[str] = ("HS256",),
        claims: ClaimMapping | None = None,
        max_ttl_s: float = DEFAULT_MAX_TTL_S,
        leeway_s: float = LEEWAY_S,
    ) -> None:
        if any(alg.lower() == "none" for alg in algorithms) or not algorithms:
            raise ValueError("a verifier needs at least one signing algorithm, and never 'none'")
        self.keys: KeySource = SharedSecret(keys) if isinstance(keys, str) else keys
        self._issuer = issuer or None
        self._audience = audience or None
        self._algorithms = list(algorithms)
        self._claims = claims or ClaimMapping()
        self._max_ttl_s = max_ttl_s
        self._leeway_s = leeway_s
        required = ["sub", "exp", "iat"]
        required += ["iss"] if self._issuer else []
        required += ["aud"] if self._audience else []
        self._options: Any = {"require": required, "verify_aud": self._audience is not None}
        self._verified: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str | None) -> Principal:
        """Return the token's principal, or raise `GateError(unauthorized)`."""
        if not token:
            raise GateError(ErrorCode.UNAUTHORIZED, "missing bearer token")
        known = self._verified.get(token)
        if known is not None:
            if time.time() < known[1]:
                return known[0]
            del self._verified[token]
        principal, expires = self._decode(token)
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # oldest first: dicts keep insertion order
        self._verified[token] = (principal, expires)
        return principal

    async def prepare(self, token: str | None) -> None:
        """Load what `verify(token)` will need (a JWKS refresh for an unknown key id), without blocking
        the event loop; a token that cannot be read is left for `verify` to refuse."""
        if not token or token in self._verified or len(token) > MAX_TOKEN_BYTES:
            return
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return
        await self.keys.prepare(header)

    def _header(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_BYTES:
            raise GateError(ErrorCode.UNAUTHORIZED, f"token is larger than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise GateError(ErrorCode.UNAUTHORIZED, "malformed token") from None
        refused = sorted(REFUSED_HEADERS & header.keys())
        if refused:
            raise GateError(ErrorCode.UNAUTHORIZED, f"token header may not carry {', '.join(refused)}")
        if header.get("alg") not in self._algorithms:
            raise GateError(ErrorCode.UNAUTHORIZED, "token algorithm is not allowed")
        return header

    def _decode(self, token: str) -> tuple[Principal, float]:
        key = self.keys.key_for(self._header(token))
        try:
            claims = jwt.decode(token, key, algorithms=self._algorithms, issuer=self._issuer,
                                audience=self._audience, leeway=self._leeway_s, options=self._options)
        except jwt.PyJWTError as exc:
            raise GateError(ErrorCode.UNAUTHORIZED, _refusal(exc)) from None
        except (TypeError, ValueError):
            # PyJWT's HMAC refuses a public-key object this way: a token whose algorithm does not fit the key.
            raise GateError(ErrorCode.UNAUTHORIZED, "token algorithm does not fit the key") from None
        # PyJWT has checked that both are integers.
        expires, issued = float(claims["exp"]), float(claims["iat"])
        if expires - issued > self._max_ttl_s:
            raise GateError(ErrorCode.UNAUTHORIZED,
                            f"token lifetime exceeds the maximum of {self._max_ttl_s:g} s (PJ_JWT_MAX_TTL_S)")
        return self._claims.principal(claims), expires


def token_claims(*, subject: str, tenant: str, role: Role | str, issuer: str, audience: str,
                 ttl_s: int = 3600) -> dict[str, Any]:
    """The claims `TokenVerifier` expects, issued now (tests sign them with any key and algorithm)."""
    now = int(time.time())
    return {"sub": subject, "tenant": tenant, "role": str(Role(role)), "iss": issuer, "aud": audience,
            "iat": now, "exp": now + ttl_s}


def mint_token(
    key: str, *, subject: str, tenant: str, role: Role | str, issuer: str, audience: str, ttl_s: int = 3600
) -> str:
    """Sign an HS256 token with the claims `TokenVerifier` expects (for `make token` and tests)."""
    claims = token_claims(subject=subject, tenant=tenant, role=role, issuer=issuer, audience=audience, ttl_s=ttl_s)
    return jwt.encode(claims, key, algorithm="HS256")
