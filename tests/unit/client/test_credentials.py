"""pj_client.credentials: a stored access token is renewed with its refresh token once it has (nearly)
expired, the config file keeps mode 0600, and a pasted token is never touched."""

import json
import stat
from pathlib import Path

import httpx
import pytest

from pj_client.config import SignIn, StoredConfig, load, save
from pj_client.credentials import RENEW_EARLY_S, current, needs_renewal
from pj_client.errors import Unauthorized

NOW = 1_800_000_000.0
SIGN_IN = SignIn(issuer="https://id.example", client_id="pj-cli", token_endpoint="https://id.example/token",
                 refresh_token="rt-1", expires_at=NOW + 300)


def signed_in(expires_at: float | None) -> StoredConfig:
    return StoredConfig(url="http://gate", token="at-1", sign_in=SIGN_IN.model_copy(update={"expires_at": expires_at}))


def test_renewal_only_near_the_end_and_only_with_a_refresh_token() -> None:
    assert not needs_renewal(signed_in(NOW + 300), now=NOW)
    assert needs_renewal(signed_in(NOW + RENEW_EARLY_S - 1), now=NOW)
    assert needs_renewal(signed_in(NOW - 1), now=NOW)
    assert not needs_renewal(signed_in(None), now=NOW)  # lifetime unknown: used until the gateway refuses it
    assert not needs_renewal(StoredConfig(url="http://gate", token="pasted"), now=NOW)
    no_refresh = StoredConfig(token="at", sign_in=SIGN_IN.model_copy(update={"refresh_token": None,
                                                                            "expires_at": NOW - 1}))
    assert not needs_renewal(no_refresh, now=NOW)


class TokenEndpoint:
    def __init__(self, status: int, answer: dict[str, object]) -> None:
        self.status, self.answer = status, answer
        self.forms: list[str] = []

    def client(self) -> httpx.Client:
        def handle(request: httpx.Request) -> httpx.Response:
            self.forms.append(request.content.decode())
            return httpx.Response(self.status, json=self.answer)
        return httpx.Client(transport=httpx.MockTransport(handle))


def test_an_expired_token_is_renewed_and_stored_privately(tmp_path: Path) -> None:
    path = tmp_path / "pj" / "config.json"
    save(path, signed_in(NOW - 10))
    endpoint = TokenEndpoint(200, {"access_token": "at-2", "token_type": "Bearer", "expires_in": 300,
                                   "refresh_token": "rt-2"})
    fresh = current(path, clock=lambda: NOW, http=endpoint.client)
    assert fresh.token == "at-2" and fresh.sign_in is not None
    assert fresh.sign_in.refresh_token == "rt-2" and fresh.sign_in.expires_at == NOW + 300
    assert load(path) == fresh
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert endpoint.forms == ["grant_type=refresh_token&refresh_token=rt-1&client_id=pj-cli"]
    assert current(path, clock=lambda: NOW, http=endpoint.client) == fresh  # fresh now: not asked again
    assert len(endpoint.forms) == 1


def test_a_provider_that_does_not_rotate_keeps_the_refresh_token(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    save(path, signed_in(NOW - 10))
    endpoint = TokenEndpoint(200, {"access_token": "at-2", "token_type": "Bearer", "expires_in": 60})
    fresh = current(path, clock=lambda: NOW, http=endpoint.client)
    assert fresh.sign_in is not None and fresh.sign_in.refresh_token == "rt-1"


def test_a_refused_refresh_keeps_the_file_and_says_to_sign_in_again(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    save(path, signed_in(NOW - 10))
    before = path.read_text()
    endpoint = TokenEndpoint(400, {"error": "invalid_grant"})
    with pytest.raises(Unauthorized) as refused:
        current(path, clock=lambda: NOW, http=endpoint.client)
    assert refused.value.code == "session_expired"
    assert path.read_text() == before


def test_a_config_written_before_sign_in_existed_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"url": "http://gate", "token": "pasted"}))
    assert current(path, clock=lambda: NOW) == StoredConfig(url="http://gate", token="pasted")
