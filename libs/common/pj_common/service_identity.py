"""Service identities: programs that send commands straight to RabbitMQ with a token of role `service`.

Each is limited to the commands and tenants its entry names (PJ_SERVICE_PRINCIPALS); approvals checks
every command against it, whatever path the command took. An action must also list `service` among its
catalog `requesters` before a service may request it.

A grant may also name `decide_on_behalf`: the service then sends decisions for people (the gateway's Slack
interactions, with the person in the envelope's `onBehalf`), for the tenants of its grant only, and
approvals applies every rule as for that person.
"""

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from .errors import ErrorCode, GateError
from .identity import IdentityError, canonical_identity
from .principal import Principal, Role

# Not a command: the permission to send `decide` for a named person (CommandEnvelope.on_behalf).
DECIDE_ON_BEHALF = "decide_on_behalf"


class ServiceGrant(BaseModel):
    """What one service identity may do: command names (`execute`, `get_approval`, ...) and tenants."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    commands: frozenset[str] = Field(min_length=1)
    tenants: frozenset[str] = Field(min_length=1)


class ServicePrincipals:
    """The configured service identities, keyed by their canonical subject."""

    def __init__(self, grants: Mapping[str, ServiceGrant] | None = None, *, case_insensitive: bool = True) -> None:
        def canonical(value: str) -> str:
            return canonical_identity(value, case_insensitive=case_insensitive)

        self._case_insensitive = case_insensitive
        self._grants = {
            canonical(subject): ServiceGrant(commands=grant.commands,
                                             tenants=frozenset(canonical(t) for t in grant.tenants))
            for subject, grant in (grants or {}).items()
        }

    def authorize(self, principal: Principal, command: str) -> None:
        """Raise `GateError(forbidden)` unless `principal` may send `command`.

        People (every role but `service`) pass. A service passes only for a command and a tenant of its
        grant; a subject that has a grant is a service whatever role its token claims, so a misconfigured
        identity provider cannot lift a service's limits.
        """
        grant = self._grants.get(principal.subject)
        if principal.role is not Role.SERVICE and grant is None:
            return
        if grant is None:
            raise GateError(ErrorCode.FORBIDDEN, "this service identity is not configured (PJ_SERVICE_PRINCIPALS)")
        if principal.role is not Role.SERVICE:
            raise GateError(ErrorCode.FORBIDDEN, "a service identity's token must carry the service role")
        if command not in grant.commands:
            raise GateError(ErrorCode.FORBIDDEN, f"this service identity may not send {command}")
        if principal.tenant not in grant.tenants:
            raise GateError(ErrorCode.FORBIDDEN, "this service identity may not act for this tenant")

    def on_behalf(self, service: Principal, *, subject: str, tenant: str, role: Role) -> Principal:
        """The person `service` decides for, as approvals then treats them; `GateError(forbidden)` unless
        the service's grant names `decide_on_behalf` and the person's tenant, and the person is a person."""
        self.authorize(service, DECIDE_ON_BEHALF)
        grant = self._grants.get(service.subject)
        if grant is None or service.role is not Role.SERVICE:  # authorize passes people: they may not do this
            raise GateError(ErrorCode.FORBIDDEN, "only a service identity may act on behalf of someone")
        if role is Role.SERVICE:
            raise GateError(ErrorCode.FORBIDDEN, "a service identity acts on behalf of people only")
        try:
            person = Principal(subject=canonical_identity(subject, case_insensitive=self._case_insensitive),
                               tenant=canonical_identity(tenant, case_insensitive=self._case_insensitive), role=role)
        except IdentityError as exc:
            raise GateError(ErrorCode.VALIDATION_ERROR, f"onBehalf: the subject or tenant {exc}") from None
        if person.tenant not in grant.tenants:
            raise GateError(ErrorCode.FORBIDDEN, "this service identity may not act for this tenant")
        return person
