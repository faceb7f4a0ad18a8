"""pj_client.signin: which provider `pj login` signs in at and what it asks for, and how it shows the code."""

from rich.console import Console

from pj_client.oidc import DeviceAuthorization
from pj_client.signin import DEFAULT_LOGIN_SCOPE, ProviderChoice, choose_provider, show_code, with_offline_access

CONSOLE = {"issuer": "https://id.example/realms/pj", "clientId": "pj-console", "scopes": "openid profile pj",
           "resource": "urn:pj-approval-gate"}


def test_the_gateways_provider_with_its_scopes_and_a_refresh_token() -> None:
    assert choose_provider(CONSOLE, issuer=None, client_id="pj-cli") == ProviderChoice(
        issuer="https://id.example/realms/pj", client_id="pj-cli", scope="openid profile pj offline_access",
        resource="urn:pj-approval-gate")


def test_the_flag_wins_and_takes_the_consoles_scopes_only_for_the_same_provider() -> None:
    same = choose_provider(CONSOLE, issuer="https://id.example/realms/pj/", client_id="mine")
    assert same is not None and same.scope == "openid profile pj offline_access" and same.client_id == "mine"
    other = choose_provider(CONSOLE, issuer="https://other.example", client_id="pj-cli")
    assert other == ProviderChoice(issuer="https://other.example", client_id="pj-cli", scope=DEFAULT_LOGIN_SCOPE,
                                   resource=None)


def test_no_provider_when_neither_names_one() -> None:
    assert choose_provider({}, issuer=None, client_id="pj-cli") is None
    assert choose_provider({}, issuer="", client_id="pj-cli") is None


def test_offline_access_is_added_once() -> None:
    assert with_offline_access("openid offline_access") == "openid offline_access"
    assert with_offline_access("openid") == "openid offline_access"


def test_the_code_and_page_are_shown_as_the_provider_sent_them() -> None:
    console = Console(record=True, width=200, force_terminal=False)
    show_code(console, DeviceAuthorization(device_code="dc", user_code="BCDF-[b]X", expires_in=600,
                                           verification_uri="https://id.example/device?x=[red]"))
    text = console.export_text()
    assert "enter the code BCDF-[b]X" in text and "https://id.example/device?x=[red]" in text
    assert "expires in 10 min" in text
