"""Shared settings and the JWT secret rule (pj_common.settings)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from pj_common.settings import DEV_JWT_SECRET, CommonSettings

EXPLICIT = "explicit-secret-0123456789abcdefghijklmnopqrstuv"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from no PJ_* configuration, whatever the surrounding shell exports."""
    for name in ("PJ_JWT_SECRET", "PJ_ENV", "PJ_JWT_ISSUER", "PJ_JWT_AUDIENCE", "PJ_AMQP_URL",
                 "PJ_AMQP_PREFIX", "PJ_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)


def test_prod_without_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_ENV", "prod")
    with pytest.raises(ValidationError) as info:
        CommonSettings()
    assert "PJ_JWT_SECRET" in str(info.value)


def test_default_env_is_prod_so_no_secret_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        CommonSettings()
    assert "PJ_JWT_SECRET" in str(info.value)


def test_dev_without_secret_uses_the_dev_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_ENV", "dev")
    settings = CommonSettings()
    assert settings.env == "dev"
    assert settings.jwt_key == DEV_JWT_SECRET
    assert DEV_JWT_SECRET == "pj-dev-secret-do-not-use-in-production-0123456789"


@pytest.mark.parametrize("env", ["prod", "dev"])
def test_explicit_secret_is_used(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("PJ_ENV", env)
    monkeypatch.setenv("PJ_JWT_SECRET", EXPLICIT)
    settings = CommonSettings()
    assert settings.env == env
    assert settings.jwt_key == EXPLICIT
    assert settings.jwt_key != DEV_JWT_SECRET


def test_secret_is_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_JWT_SECRET", EXPLICIT)
    settings = CommonSettings()
    assert EXPLICIT not in repr(settings)
    assert EXPLICIT not in str(settings)


def test_unknown_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_ENV", "staging")
    monkeypatch.setenv("PJ_JWT_SECRET", EXPLICIT)
    with pytest.raises(ValidationError):
        CommonSettings()


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_JWT_SECRET", EXPLICIT)
    settings = CommonSettings()
    assert settings.env == "prod"
    assert settings.jwt_issuer == "puddlejumper"
    assert settings.jwt_audience == "pj-approval-gate"
    assert settings.amqp_prefix == "pj"


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_ENV", "dev")
    monkeypatch.setenv("PJ_JWT_ISSUER", "iss-x")
    monkeypatch.setenv("PJ_JWT_AUDIENCE", "aud-y")
    monkeypatch.setenv("PJ_AMQP_PREFIX", "pjt-123")
    settings = CommonSettings()
    assert (settings.jwt_issuer, settings.jwt_audience, settings.amqp_prefix) == ("iss-x", "aud-y", "pjt-123")


def test_keyword_secret_wins_over_dev_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_ENV", "prod")
    settings = CommonSettings(jwt_secret=EXPLICIT)
    assert settings.jwt_key == EXPLICIT


def test_short_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_ENV", "prod")
    monkeypatch.setenv("PJ_JWT_SECRET", "short")
    with pytest.raises(ValidationError) as err:
        CommonSettings()
    assert "at least 32" in str(err.value)


def test_secrets_can_come_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pj_dispatcher.settings import DispatcherSettings

    for name in ("PJ_JWT_SECRET", "GITHUB_DISPATCH_TOKEN", "PJ_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "jwt").write_text("j" * 40 + "\n")
    (tmp_path / "gh").write_text("ghp-from-file\n")
    (tmp_path / "signing").write_text("d" * 40 + "\n")
    monkeypatch.setenv("PJ_ENV", "prod")
    monkeypatch.setenv("PJ_DISPATCH_SIGNING_KEY_FILE", str(tmp_path / "signing"))
    monkeypatch.setenv("PJ_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    monkeypatch.setenv("GITHUB_DISPATCH_TOKEN_FILE", str(tmp_path / "gh"))
    settings = DispatcherSettings()
    assert settings.jwt_key == "j" * 40
    assert settings.signing_key == "d" * 40
    assert settings.github_token is not None and settings.github_token.get_secret_value() == "ghp-from-file"
    assert "ghp-from-file" not in repr(settings)  # SecretStr keeps it out of logs and reprs
    monkeypatch.setenv("GITHUB_DISPATCH_TOKEN", "direct")  # a value given directly wins over the file
    token = DispatcherSettings().github_token
    assert token is not None and token.get_secret_value() == "direct"


def test_unreadable_secret_file_stops_with_its_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PJ_ENV", "prod")
    monkeypatch.delenv("PJ_JWT_SECRET", raising=False)
    monkeypatch.setenv("PJ_JWT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError) as err:
        CommonSettings()
    assert "PJ_JWT_SECRET_FILE" in str(err.value)


def test_configuration_errors_never_print_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from pj_common.settings import describe_settings_error

    monkeypatch.setenv("PJ_ENV", "prod")
    monkeypatch.setenv("PJ_JWT_SECRET", "short-but-secret")
    monkeypatch.setenv("GITHUB_DISPATCH_TOKEN", "ghp_SUPERSECRET")
    from pj_dispatcher.settings import DispatcherSettings

    with pytest.raises(ValidationError) as err:
        DispatcherSettings()
    text = describe_settings_error(err.value)
    assert "at least 32" in text
    assert "short-but-secret" not in text and "ghp_SUPERSECRET" not in text


def test_dispatch_signing_key_is_required_outside_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    from pj_common.settings import DEV_DISPATCH_SIGNING_KEY, DispatchSigningSettings

    monkeypatch.setenv("PJ_JWT_SECRET", "s" * 32)
    monkeypatch.delenv("PJ_DISPATCH_SIGNING_KEY", raising=False)
    monkeypatch.setenv("PJ_ENV", "prod")
    with pytest.raises(ValidationError, match="PJ_DISPATCH_SIGNING_KEY"):
        DispatchSigningSettings()
    monkeypatch.setenv("PJ_ENV", "dev")
    assert DispatchSigningSettings().signing_key == DEV_DISPATCH_SIGNING_KEY
    monkeypatch.setenv("PJ_DISPATCH_SIGNING_KEY", "short")
    with pytest.raises(ValidationError, match="at least"):
        DispatchSigningSettings()
