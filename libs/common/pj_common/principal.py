"""Who is calling: the roles the system knows and the principal a verified token yields."""

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    APPROVER = "approver"
    OPERATOR = "operator"
    VIEWER = "viewer"
    # A program, not a person: limited by approvals to the commands and tenants PJ_SERVICE_PRINCIPALS
    # names for its subject, and to the actions whose catalog `requesters` list `service`.
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: subject, tenant and role, all taken from a verified token.

    A principal built by `TokenVerifier` holds the canonical form of its subject and tenant
    (pj_common.identity), so comparing two of them compares people, not spellings.
    """

    subject: str
    tenant: str
    role: Role

    @property
    def sees_whole_tenant(self) -> bool:
        """Admins, approvers (who decide them) and viewers read every approval of their tenant;
        operators and services only their own."""
        return self.role in (Role.ADMIN, Role.APPROVER, Role.VIEWER)
