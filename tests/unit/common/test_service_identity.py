"""Service identities (pj_common.service_identity): a `service` token runs only its named commands for its tenants."""

import pytest

from pj_common.errors import ErrorCode, GateError
from pj_common.principal import Principal, Role
from pj_common.service_identity import ServiceGrant, ServicePrincipals

GRANTS = ServicePrincipals({"Billing-Bot": ServiceGrant(commands=frozenset({"execute"}),
                                                        tenants=frozenset({"Acme"}))})


def forbidden(principal: Principal, command: str) -> str:
    with pytest.raises(GateError) as info:
        GRANTS.authorize(principal, command)
    assert info.value.code is ErrorCode.FORBIDDEN
    return info.value.message


def test_a_service_runs_its_command_for_its_tenant() -> None:
    GRANTS.authorize(Principal("billing-bot", "acme", Role.SERVICE), "execute")  # canonical forms match


def test_a_service_is_refused_another_command() -> None:
    assert "may not send decide" in forbidden(Principal("billing-bot", "acme", Role.SERVICE), "decide")


def test_a_service_is_refused_another_tenant() -> None:
    assert "tenant" in forbidden(Principal("billing-bot", "globex", Role.SERVICE), "execute")


def test_an_unconfigured_service_is_refused() -> None:
    assert "not configured" in forbidden(Principal("rogue-bot", "acme", Role.SERVICE), "execute")


def test_a_service_subject_claiming_a_person_role_is_refused() -> None:
    """An identity provider that hands the service an admin role does not lift its limits."""
    assert "service role" in forbidden(Principal("billing-bot", "acme", Role.ADMIN), "dispatch")


@pytest.mark.parametrize("role", [Role.ADMIN, Role.APPROVER, Role.OPERATOR, Role.VIEWER])
def test_people_are_not_limited_here(role: Role) -> None:
    GRANTS.authorize(Principal("alice", "acme", role), "decide")
