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


ON_BEHALF = ServicePrincipals({"PJ-Slack": ServiceGrant(commands=frozenset({"decide_on_behalf"}),
                                                        tenants=frozenset({"Acme", "Globex"}))})


def refused_on_behalf(service: Principal, *, tenant: str = "acme", role: Role = Role.ADMIN) -> str:
    with pytest.raises(GateError) as info:
        ON_BEHALF.on_behalf(service, subject="alice", tenant=tenant, role=role)
    assert info.value.code is ErrorCode.FORBIDDEN
    return info.value.message


def test_a_permitted_service_decides_for_a_person_of_its_tenants() -> None:
    person = ON_BEHALF.on_behalf(Principal("pj-slack", "globex", Role.SERVICE), subject=" Alice ", tenant="ACME",
                                 role=Role.APPROVER)
    assert person == Principal("alice", "acme", Role.APPROVER)  # canonical, as a token's would be


def test_on_behalf_needs_the_grant() -> None:
    assert "may not send decide_on_behalf" in forbidden(Principal("billing-bot", "acme", Role.SERVICE),
                                                        "decide_on_behalf")
    assert "not configured" in refused_on_behalf(Principal("rogue-bot", "acme", Role.SERVICE))


def test_a_person_may_not_act_on_behalf_of_another() -> None:
    assert "only a service identity" in refused_on_behalf(Principal("mallory", "acme", Role.ADMIN))


def test_on_behalf_only_for_the_grants_tenants_and_never_as_a_service() -> None:
    assert "tenant" in refused_on_behalf(Principal("pj-slack", "acme", Role.SERVICE), tenant="initech")
    assert "people only" in refused_on_behalf(Principal("pj-slack", "acme", Role.SERVICE), role=Role.SERVICE)
