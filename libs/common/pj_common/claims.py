"""From a verified token's claims to a principal: which claims carry the role and the tenant, how an
identity provider's groups or roles map to ours, and the canonical form of subject and tenant."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, GateError
from .identity import IdentityError, canonical_identity
from .principal import Principal, Role

# An unknown role value is named in the error (it helps whoever maps an IdP's groups), cut to this.
_SHOWN_VALUE_LENGTH = 40
_ROLE_NAMES = frozenset(role.value for role in Role)


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim named `path`, or the one a dotted path leads to (`realm_access.roles`); None if absent.

    A claim whose own name has dots (Auth0's namespaced `https://example.com/roles`) is found first.
    """
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_VALUE_LENGTH else text[:_SHOWN_VALUE_LENGTH] + "..."


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """Where the role and the tenant are in a token, and how the IdP's role names map to ours.

    Without `role_map` the role claim must hold one of our role names. With it, only the values it
    maps count (an IdP group that happens to be called `admin` is not our admin unless mapped). The
    claim may be a string or a list (Keycloak's `realm_access.roles`, Entra ID's `roles`, Okta's
    `groups`); its values must come down to exactly one of our roles: a token that maps to two is
    refused rather than given the stronger one.
    """

    role_claim: str = "role"
    tenant_claim: str = "tenant"
    role_map: Mapping[str, Role] = field(default_factory=dict)
    case_insensitive: bool = True

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        """The principal the claims name; `GateError(unauthorized)` if they do not name one."""
        subject = self._identity(claims.get("sub"), "sub")
        tenant = self._identity(claim_at(claims, self.tenant_claim), self.tenant_claim)
        return Principal(subject=subject, tenant=tenant, role=self.role(claims))

    def role(self, claims: Mapping[str, Any]) -> Role:
        """The one role the role claim maps to."""
        raw = claim_at(claims, self.role_claim)
        values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        names = [v for v in values if isinstance(v, str)]
        if self.role_map:
            roles = {self.role_map[n] for n in names if n in self.role_map}
        else:
            roles = {Role(n) for n in names if n in _ROLE_NAMES}
        if len(roles) == 1:
            return roles.pop()
        if not roles:
            raise GateError(ErrorCode.UNAUTHORIZED, f"token has unknown role {_shown(raw)} "
                            f"(claim {self.role_claim!r})")
        raise GateError(ErrorCode.UNAUTHORIZED, "token maps to several roles "
                        f"({', '.join(sorted(roles))}); give the identity one")

    def _identity(self, value: object, claim: str) -> str:
        try:
            return canonical_identity(value, case_insensitive=self.case_insensitive)
        except IdentityError as exc:
            if value is None:
                raise GateError(ErrorCode.UNAUTHORIZED, f"token lacks the {claim} claim") from None
            raise GateError(ErrorCode.UNAUTHORIZED, f"token claim {claim} {exc}") from None
