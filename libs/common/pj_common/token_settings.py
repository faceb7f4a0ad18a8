"""Settings of the processes that verify tokens (the gateway and approvals), read from `PJ_JWT_*`.

Exactly one key source: `PJ_JWT_SECRET` (HS256: whoever holds it can mint tokens, so for development and
simple set-ups), `PJ_JWT_PUBLIC_KEY` / `PJ_JWT_PUBLIC_KEY_FILE` (a PEM public key), or `PJ_JWT_JWKS_URL`
(an identity provider's keys). With a public key or a JWKS URL the process cannot mint a token at all.
"""

import ipaddress
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import jwt
from pydantic import Field, SecretStr, model_validator

from .auth import DEFAULT_MAX_TTL_S, ClaimMapping, TokenVerifier
from .jwks import JwksKeys, KeySource, PublicKey, SharedSecret, StaticPublicKey, algorithms_for, load_public_key
from .messages import Command
from .principal import Role
from .service_identity import DECIDE_ON_BEHALF, ServiceGrant, ServicePrincipals
from .settings import DEV_JWT_SECRET, MIN_SECRET_LENGTH, CommonSettings

# What a JWKS URL verifies unless PJ_JWT_ALGORITHMS says otherwise: each JWKS key verifies only the one
# algorithm of its own type (PyJWK), so naming several here confuses nothing.
DEFAULT_JWKS_ALGORITHMS = ("RS256", "ES256", "EdDSA")
COMMAND_NAMES = frozenset(str(model.model_fields["name"].default)
                          for model in get_args(get_args(Command)[0])) | {DECIDE_ON_BEHALF}
KNOWN_ALGORITHMS = frozenset(jwt.algorithms.get_default_algorithms()) - {"none"}


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class TokenSettings(CommonSettings):
    """Token verification: the key source, the pinned algorithms, issuer and audience, the claims that
    carry role and tenant, and the limits every token must meet."""

    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_url: str | None = None
    # Comma-separated; default: HS256 with a secret, the key's own with a public key, RS256,ES256,EdDSA with a JWKS.
    jwt_algorithms: str | None = None
    # Required in every token when set (always outside dev); empty turns the check off in dev.
    jwt_issuer: str = "puddlejumper"
    jwt_audience: str = "pj-approval-gate"
    # Dotted paths reach nested claims (Keycloak: realm_access.roles).
    jwt_role_claim: str = "role"
    jwt_tenant_claim: str = "tenant"
    # The identity provider's role or group names -> ours, as JSON: {"pj-admins": "admin", ...}.
    jwt_role_map: dict[str, Role] = Field(default_factory=dict)
    jwt_max_ttl_s: float = Field(default=DEFAULT_MAX_TTL_S, gt=0)
    # Alice and alice are one person (and one tenant) unless the identity provider tells them apart.
    identity_case_insensitive: bool = True

    @model_validator(mode="after")
    def _one_key_source(self) -> "TokenSettings":
        sources = [name for name, given in (("PJ_JWT_SECRET", self.jwt_secret is not None),
                                            ("PJ_JWT_PUBLIC_KEY", self.jwt_public_key is not None),
                                            ("PJ_JWT_PUBLIC_KEY_FILE", self.jwt_public_key_file is not None),
                                            ("PJ_JWT_JWKS_URL", self.jwt_jwks_url is not None)) if given]
        if len(sources) > 1:
            raise ValueError(f"set only one token key source, not {' and '.join(sources)}")
        if not sources:
            if self.env != "dev":
                raise ValueError("no token key: set PJ_JWT_SECRET, PJ_JWT_PUBLIC_KEY(_FILE) or PJ_JWT_JWKS_URL "
                                 "(required unless PJ_ENV=dev, where a development secret is used)")
            self.jwt_secret = SecretStr(DEV_JWT_SECRET)
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"PJ_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters (HS256 key)")
        if self.env != "dev" and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError("PJ_JWT_ISSUER and PJ_JWT_AUDIENCE are required unless PJ_ENV=dev")
        self._check_jwks_url()
        self._check_algorithms()
        return self

    def _check_jwks_url(self) -> None:
        if self.jwt_jwks_url is None:
            return
        parts = urlsplit(self.jwt_jwks_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("PJ_JWT_JWKS_URL must be an http(s) URL")
        if parts.scheme == "http" and self.env != "dev" and not _is_loopback(parts.hostname):
            raise ValueError("PJ_JWT_JWKS_URL must use https unless PJ_ENV=dev (or it is on this host)")

    def _check_algorithms(self) -> None:
        chosen = self.algorithms
        unknown = sorted(set(chosen) - KNOWN_ALGORITHMS)
        if unknown or not chosen:
            raise ValueError(f"PJ_JWT_ALGORITHMS: unknown or refused {unknown or 'empty list'}; "
                             f"known: {', '.join(sorted(KNOWN_ALGORITHMS))}")
        symmetric = {alg for alg in chosen if alg.startswith("HS")}
        if self.jwt_secret is not None and symmetric != set(chosen):
            raise ValueError("PJ_JWT_ALGORITHMS: a secret verifies HS256/HS384/HS512 only")
        if self.jwt_secret is None and symmetric:
            # The confusion attack: HS256 "signed" with the public key, which everyone has.
            raise ValueError("PJ_JWT_ALGORITHMS: HS* algorithms need PJ_JWT_SECRET, never a public key")
        key = self.public_key
        if key is not None and not set(chosen) <= set(algorithms_for(key)):
            raise ValueError(f"PJ_JWT_ALGORITHMS: this public key verifies only {', '.join(algorithms_for(key))}")

    @property
    def public_key(self) -> PublicKey | None:
        """The configured public key, loaded (ValueError with the reason if it is not a usable one)."""
        pem = self.jwt_public_key
        if self.jwt_public_key_file is not None:
            try:
                pem = self.jwt_public_key_file.read_text()
            except OSError as exc:
                raise ValueError(f"PJ_JWT_PUBLIC_KEY_FILE: cannot read {self.jwt_public_key_file}: "
                                 f"{exc.strerror}") from exc
        if pem is None:
            return None
        try:
            return load_public_key(pem)
        except ValueError as exc:
            raise ValueError(f"PJ_JWT_PUBLIC_KEY: {exc}") from exc

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The pinned signing algorithms."""
        if self.jwt_algorithms:
            return tuple(alg.strip() for alg in self.jwt_algorithms.split(",") if alg.strip())
        if self.jwt_secret is not None:
            return ("HS256",)
        key = self.public_key
        return algorithms_for(key)[:1] if key is not None else DEFAULT_JWKS_ALGORITHMS

    @property
    def jwt_key(self) -> str:
        """The HS256 secret that signs tokens (`make token`, tests); ValueError without one."""
        if self.jwt_secret is None:
            raise ValueError("minting a token needs PJ_JWT_SECRET (HS256): with a public key or a JWKS URL "
                             "tokens come from the identity provider")
        return self.jwt_secret.get_secret_value()

    def key_source(self, *, jwks_refresh_interval_s: float = 60.0) -> KeySource:
        """The key source these settings name."""
        if self.jwt_jwks_url is not None:
            return JwksKeys(self.jwt_jwks_url, min_refresh_interval_s=jwks_refresh_interval_s)
        if self.jwt_secret is not None:
            return SharedSecret(self.jwt_secret.get_secret_value())
        key = self.public_key
        assert key is not None  # one key source is set (the validator)
        return StaticPublicKey(key)

    def token_verifier(self, **key_options: Any) -> TokenVerifier:
        """The verifier these settings describe."""
        claims = ClaimMapping(role_claim=self.jwt_role_claim, tenant_claim=self.jwt_tenant_claim,
                              role_map=dict(self.jwt_role_map), case_insensitive=self.identity_case_insensitive)
        return TokenVerifier(self.key_source(**key_options), self.jwt_issuer, self.jwt_audience,
                             algorithms=self.algorithms, claims=claims, max_ttl_s=self.jwt_max_ttl_s)


class ServiceIdentitySettings(TokenSettings):
    """Token settings plus the service identities approvals enforces on every command."""

    # Service subject -> {"commands": [...], "tenants": [...]}, as JSON.
    service_principals: dict[str, ServiceGrant] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_commands(self) -> "ServiceIdentitySettings":
        for subject, grant in self.service_principals.items():
            unknown = sorted(grant.commands - COMMAND_NAMES)
            if unknown:
                raise ValueError(f"PJ_SERVICE_PRINCIPALS: {subject!r} names unknown commands {unknown}; "
                                 f"known: {', '.join(sorted(COMMAND_NAMES))}")
        self.service_identities()  # every subject and tenant must be a usable identity
        return self

    def service_identities(self) -> ServicePrincipals:
        return ServicePrincipals(self.service_principals, case_insensitive=self.identity_case_insensitive)
