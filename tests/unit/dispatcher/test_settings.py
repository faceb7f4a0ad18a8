"""Dispatcher settings (pj_dispatcher.settings): connector base URLs are https outside dev."""

import pytest
from pydantic import ValidationError

from pj_common.settings import describe_settings_error
from pj_dispatcher.settings import DispatcherSettings

SIGNING = "d" * 40
URL_SETTINGS = ("PJ_WEBHOOK_URL", "PJ_GITHUB_API_URL", "PJ_GRAPH_API_URL", "PJ_GRAPH_LOGIN_URL", "PJ_SLACK_API_URL")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prod with a signing key and no connector URL, whatever the surrounding shell (`make run`) exports."""
    for name in (*URL_SETTINGS, "PJ_ENV", "PJ_CONNECTOR_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PJ_DISPATCH_SIGNING_KEY", SIGNING)


def test_the_default_api_urls_are_https_and_accepted_in_prod() -> None:
    settings = DispatcherSettings()
    assert settings.env == "prod" and not settings.connector_allow_http
    assert all(url.startswith("https://") for url in (settings.github_api_url, settings.graph_api_url,
                                                      settings.graph_login_url, settings.slack_api_url))


@pytest.mark.parametrize("env_name", URL_SETTINGS)
def test_http_is_refused_in_prod_with_a_message_naming_the_setting_not_the_value(
        env_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name, "http://user:hunter2-password@api.example.com/v1")
    with pytest.raises(ValidationError) as err:
        DispatcherSettings()
    text = describe_settings_error(err.value)
    assert f"{env_name} must be an https:// URL outside dev" in text and "PJ_CONNECTOR_ALLOW_HTTP=1" in text
    assert "hunter2" not in text and "api.example.com" not in text


@pytest.mark.parametrize("env_name", URL_SETTINGS)
def test_http_is_accepted_in_dev_or_when_explicitly_allowed(env_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name, "http://127.0.0.1:9099/hook")
    monkeypatch.setenv("PJ_ENV", "dev")
    DispatcherSettings()
    monkeypatch.setenv("PJ_ENV", "prod")
    monkeypatch.setenv("PJ_CONNECTOR_ALLOW_HTTP", "1")
    assert DispatcherSettings().connector_allow_http


@pytest.mark.parametrize("url", ["ftp://files.example.com/x", "file:///etc/passwd", "gopher://x/", "//no-scheme/x",
                                 "https:///no-host", "api.example.com/v1"])
def test_other_schemes_and_hostless_urls_are_refused_even_in_dev(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_ENV", "dev")
    monkeypatch.setenv("PJ_WEBHOOK_URL", url)
    with pytest.raises(ValidationError, match="PJ_WEBHOOK_URL must"):
        DispatcherSettings()
