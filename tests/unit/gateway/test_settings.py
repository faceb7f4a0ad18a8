"""Gateway settings: the runbook's METRICS_TOKEN is honoured, from the environment or a file."""

from pathlib import Path

import pytest

from pj_gateway.settings import GatewaySettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PJ_METRICS_TOKEN", "METRICS_TOKEN", "PJ_METRICS_TOKEN_FILE", "METRICS_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PJ_ENV", "dev")


def token_of(settings: GatewaySettings) -> str | None:
    return settings.metrics_token.get_secret_value() if settings.metrics_token is not None else None


def test_no_metrics_token_by_default() -> None:
    assert GatewaySettings().metrics_token is None


def test_the_runbooks_metrics_token_name_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_TOKEN", "from-runbook")
    assert token_of(GatewaySettings()) == "from-runbook"


def test_pj_metrics_token_wins_over_the_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_TOKEN", "alias")
    monkeypatch.setenv("PJ_METRICS_TOKEN", "prefixed")
    assert token_of(GatewaySettings()) == "prefixed"


@pytest.mark.parametrize("variable", ["PJ_METRICS_TOKEN_FILE", "METRICS_TOKEN_FILE"])
def test_either_name_may_come_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str) -> None:
    secret = tmp_path / "metrics"
    secret.write_text("from-file\n")
    monkeypatch.setenv(variable, str(secret))
    settings = GatewaySettings()
    assert token_of(settings) == "from-file"
    assert "from-file" in settings.secret_values()


def test_an_unreadable_file_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METRICS_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="METRICS_TOKEN_FILE"):
        GatewaySettings()


def test_an_explicit_value_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_TOKEN", "env")
    assert token_of(GatewaySettings(metrics_token="given")) == "given"


def test_cors_is_off_unless_origins_are_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GatewaySettings().cors_origins == []
    monkeypatch.setenv("PJ_CORS_ORIGINS", " https://a.example.com, http://localhost:5173 ,")
    assert GatewaySettings().cors_origins == ["https://a.example.com", "http://localhost:5173"]


@pytest.mark.parametrize("origins", ["*", "null", "https://a.example.com,*", "a.example.com"])
def test_cors_refuses_anything_but_origins(monkeypatch: pytest.MonkeyPatch, origins: str) -> None:
    monkeypatch.setenv("PJ_CORS_ORIGINS", origins)
    with pytest.raises(ValueError, match="PJ_CORS_ORIGINS"):
        GatewaySettings()
