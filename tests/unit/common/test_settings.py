"""Settings every process shares (pj_common.settings); token settings are in test_token_settings.py."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from pj_common.settings import CommonSettings
from pj_common.token_settings import TokenSettings
from pj_dispatcher.settings import DispatcherSettings

SIGNING = "d" * 40


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from no PJ_* configuration, whatever the surrounding shell exports."""
    for name in ("PJ_JWT_SECRET", "PJ_JWT_SECRET_FILE", "PJ_ENV", "PJ_JWT_ISSUER", "PJ_JWT_AUDIENCE", "PJ_AMQP_URL",
                 "PJ_AMQP_PREFIX", "PJ_LOG_LEVEL", "PJ_DISPATCH_SIGNING_KEY", "GITHUB_DISPATCH_TOKEN",
                 "PJ_WEBHOOK_SECRET", "PJ_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = CommonSettings()
    assert (settings.env, settings.amqp_prefix, settings.log_level) == ("prod", "pj", "INFO")


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_ENV", "dev")
    monkeypatch.setenv("PJ_AMQP_PREFIX", "pjt-123")
    settings = CommonSettings()
    assert (settings.env, settings.amqp_prefix) == ("dev", "pjt-123")


def test_unknown_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_ENV", "staging")
    with pytest.raises(ValidationError):
        CommonSettings()


def test_common_settings_hold_no_token_key() -> None:
    """Every process reads these; a token key among them would reach the dispatcher too."""
    assert not [name for name in CommonSettings.model_fields if name.startswith("jwt")]


def test_the_dispatcher_holds_no_token_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """It talks to hostile upstream servers and verifies no token: it starts in prod without one, and a
    PJ_JWT_SECRET in its environment is not read into its settings."""
    assert not [name for name in DispatcherSettings.model_fields if name.startswith("jwt")]
    monkeypatch.setenv("PJ_DISPATCH_SIGNING_KEY", SIGNING)
    settings = DispatcherSettings()
    monkeypatch.setenv("PJ_JWT_SECRET", "j" * 40)
    assert "j" * 40 not in DispatcherSettings().secret_values()
    assert settings.env == "prod"


def test_secrets_can_come_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "jwt").write_text("j" * 40 + "\n")
    (tmp_path / "gh").write_text("ghp-from-file\n")
    (tmp_path / "signing").write_text(SIGNING + "\n")
    monkeypatch.setenv("PJ_DISPATCH_SIGNING_KEY_FILE", str(tmp_path / "signing"))
    monkeypatch.setenv("PJ_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    monkeypatch.setenv("GITHUB_DISPATCH_TOKEN_FILE", str(tmp_path / "gh"))
    assert TokenSettings().jwt_key == "j" * 40
    settings = DispatcherSettings()
    assert settings.signing_key == SIGNING
    assert settings.github_token is not None and settings.github_token.get_secret_value() == "ghp-from-file"
    assert "ghp-from-file" not in repr(settings)  # SecretStr keeps it out of logs and reprs
    monkeypatch.setenv("GITHUB_DISPATCH_TOKEN", "direct")  # a value given directly wins over the file
    token = DispatcherSettings().github_token
    assert token is not None and token.get_secret_value() == "direct"


def test_unreadable_secret_file_stops_with_its_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PJ_DISPATCH_SIGNING_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError) as err:
        DispatcherSettings()
    assert "PJ_DISPATCH_SIGNING_KEY_FILE" in str(err.value)


def test_configuration_errors_never_print_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from pj_common.settings import describe_settings_error

    monkeypatch.setenv("PJ_DISPATCH_SIGNING_KEY", "short-but-secret")
    monkeypatch.setenv("GITHUB_DISPATCH_TOKEN", "ghp_SUPERSECRET")
    with pytest.raises(ValidationError) as err:
        DispatcherSettings()
    text = describe_settings_error(err.value)
    assert "at least 32" in text
    assert "short-but-secret" not in text and "ghp_SUPERSECRET" not in text


def test_dispatch_signing_key_is_required_outside_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    from pj_common.settings import DEV_DISPATCH_SIGNING_KEY, DispatchSigningSettings

    monkeypatch.setenv("PJ_ENV", "prod")
    with pytest.raises(ValidationError, match="PJ_DISPATCH_SIGNING_KEY"):
        DispatchSigningSettings()
    monkeypatch.setenv("PJ_ENV", "dev")
    assert DispatchSigningSettings().signing_key == DEV_DISPATCH_SIGNING_KEY
    monkeypatch.setenv("PJ_DISPATCH_SIGNING_KEY", "short")
    with pytest.raises(ValidationError, match="at least"):
        DispatchSigningSettings()
