"""Bearer-token verification, the same in the gateway and in every command consumer."""

import time
from dataclasses import dataclass
from enum import StrEnum

import jwt

from .errors import ErrorCode, GateError


class Role(StrEnum):
    ADMIN = "admin"
    APPROVER = "approver"
    OPERATOR = "operator"
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: subject, tenant and role, all taken from a verified token."""

    subject: str
    tenant: str
    role: Role

    @property
    def sees_whole_tenant(self) -> bool:
        """Admins, approvers (who decide them) and viewers read every approval of their tenant;
        operators only their own."""
        return self.role in (Role.ADMIN, Role.APPROVER, Role.VIEWER)


class TokenVerifier:
    """Verifies HS256 JWTs for one issuer and audience.

    A token verified once is remembered (bounded) until it expires: a client sends the same token
    with every request, and each command is verified by the gateway and again by approvals.
    """

    CACHE_SIZE = 4096

    def __init__(self, key: str, issuer: str, audience: str) -> None:
        self._key = key
        self._issuer = issuer
        self._audience = audience
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

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise GateError(ErrorCode.UNAUTHORIZED, "token expired") from exc
        except jwt.PyJWTError as exc:
            raise GateError(ErrorCode.UNAUTHORIZED, f"invalid token: {exc}") from exc
        sub, tenant, role = claims.get("sub"), claims.get("tenant"), claims.get("role")
        if not isinstance(sub, str) or not sub or not isinstance(tenant, str) or not tenant:
            raise GateError(ErrorCode.UNAUTHORIZED, "token lacks the sub or tenant claim")
        try:
            # A missing or non-string role is as unknown as a misspelt one.
            return Principal(subject=sub, tenant=tenant, role=Role(str(role))), float(claims["exp"])
        except ValueError as exc:
            raise GateError(ErrorCode.UNAUTHORIZED, f"token has unknown role {role!r}") from exc


def mint_token(
    key: str, *, subject: str, tenant: str, role: Role | str, issuer: str, audience: str, ttl_s: int = 3600
) -> str:
    """Sign a token with the claims `TokenVerifier` expects (for `make token`, tests and services)."""
    now = int(time.time())
    claims = {
        "sub": subject,
        "tenant": tenant,
        "role": str(Role(role)),
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, key, algorithm="HS256")
