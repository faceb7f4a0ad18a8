"""pj_client.oidc: what each answer of the token endpoint means while the device flow waits (RFC 8628
section 3.5), the polling loop bounded by the code's lifetime, and discovery's issuer check."""

import json
from typing import Any

import httpx
import pytest

from pj_client.errors import Forbidden, InvalidRequest, Unauthorized, Unavailable
from pj_client.oidc import (
    DEVICE_CODE_GRANT,
    DeviceAuthorization,
    Discovery,
    Granted,
    KeepPolling,
    Refused,
    TokenSet,
    discover,
    next_step,
    poll_for_tokens,
    refresh,
)

ISSUER = "https://id.example"
DISCOVERY = Discovery(issuer=ISSUER, token_endpoint=f"{ISSUER}/token",
                      device_authorization_endpoint=f"{ISSUER}/device/auth")


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_a_token_answer_grants() -> None:
    step = next_step(200, body(access_token="at", token_type="Bearer", expires_in=300, refresh_token="rt"),
                     interval_s=5)
    assert step == Granted(TokenSet(access_token="at", expires_in=300, refresh_token="rt"))
    assert isinstance(step, Granted) and step.tokens.expires_at(1000.0) == 1300.0


def test_authorization_pending_keeps_the_interval() -> None:
    assert next_step(400, body(error="authorization_pending"), interval_s=5) == KeepPolling(5)


def test_slow_down_adds_five_seconds_each_time() -> None:
    assert next_step(400, body(error="slow_down"), interval_s=5) == KeepPolling(10)
    assert next_step(400, body(error="slow_down"), interval_s=10) == KeepPolling(15)


@pytest.mark.parametrize("error", ["access_denied", "expired_token", "invalid_grant", "invalid_client"])
def test_every_other_error_ends_the_flow_with_its_code(error: str) -> None:
    step = next_step(400, body(error=error, error_description="why"), interval_s=5)
    assert isinstance(step, Refused) and step.code == error and step.message


def test_an_answer_that_is_no_oauth_json_ends_the_flow() -> None:
    assert next_step(502, b"<html>bad gateway</html>", interval_s=5) == Refused(
        "http_502", "the identity provider answered 502")
    assert isinstance(next_step(200, body(token_type="Bearer"), interval_s=5), Refused)  # no access token


class Provider:
    """The token endpoint's answers, one per poll, and the times they were asked at."""

    def __init__(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        self.answers = answers
        self.asked_at: list[float] = []
        self.forms: list[str] = []
        self.now = 0.0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.asked_at.append(self.now)
        self.forms.append(request.content.decode())
        status, answer = self.answers.pop(0)
        return httpx.Response(status, json=answer)

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def poll(self, *, expires_in: int = 600, interval: int | None = None) -> TokenSet:
        started = DeviceAuthorization(device_code="dc", user_code="ABCD-EFGH", verification_uri=f"{ISSUER}/device",
                                      expires_in=expires_in, interval=interval)
        with httpx.Client(transport=httpx.MockTransport(self.handle)) as http:
            return poll_for_tokens(http, DISCOVERY, started, client_id="pj-cli", clock=lambda: self.now,
                                   sleep=self.sleep)


PENDING = (400, {"error": "authorization_pending"})
GRANTED = (200, {"access_token": "at", "token_type": "Bearer", "expires_in": 60})


def test_polls_every_interval_until_granted_and_slows_down_when_asked() -> None:
    provider = Provider([PENDING, (400, {"error": "slow_down"}), PENDING, GRANTED])
    assert provider.poll(interval=2).access_token == "at"
    assert provider.asked_at == [2, 4, 11, 18]  # slow_down: 2 s became 7 s for the rest of the flow
    assert f"grant_type={DEVICE_CODE_GRANT.replace(':', '%3A')}" in provider.forms[0]
    assert "device_code=dc" in provider.forms[0] and "client_id=pj-cli" in provider.forms[0]


def test_five_seconds_when_the_provider_names_no_interval() -> None:
    provider = Provider([PENDING, GRANTED])
    provider.poll()
    assert provider.asked_at == [5, 10]


def test_gives_up_when_the_code_expires_without_asking_past_it() -> None:
    provider = Provider([PENDING] * 10)
    with pytest.raises(Unauthorized) as ended:
        provider.poll(expires_in=12, interval=5)
    assert ended.value.code == "expired_token"
    assert provider.asked_at == [5, 10]


def test_a_refusal_at_the_provider_is_forbidden() -> None:
    provider = Provider([PENDING, (400, {"error": "access_denied"})])
    with pytest.raises(Forbidden) as ended:
        provider.poll(interval=1)
    assert ended.value.code == "access_denied"


def test_an_expired_code_reported_by_the_provider_ends_the_flow() -> None:
    with pytest.raises(Unauthorized) as ended:
        Provider([(400, {"error": "expired_token"})]).poll(interval=1)
    assert ended.value.code == "expired_token" and "pj login" in ended.value.message


def serve(status: int, answer: dict[str, Any]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda _request: httpx.Response(status, json=answer)))


def test_discovery_names_the_issuer_it_was_asked_for() -> None:
    document = {"issuer": ISSUER, "token_endpoint": f"{ISSUER}/token"}
    with serve(200, document) as http:
        assert discover(http, ISSUER + "/").device_authorization_endpoint is None
    with serve(200, {**document, "issuer": "https://elsewhere.example"}) as http, pytest.raises(InvalidRequest):
        discover(http, ISSUER)
    with serve(404, {}) as http, pytest.raises(Unavailable):
        discover(http, ISSUER)


def test_a_refused_refresh_token_means_signing_in_again() -> None:
    with serve(400, {"error": "invalid_grant", "error_description": "grant request is invalid"}) as http, \
            pytest.raises(Unauthorized) as ended:
        refresh(http, token_endpoint=f"{ISSUER}/token", client_id="pj-cli", refresh_token="old")
    assert ended.value.code == "session_expired" and "grant request is invalid" in ended.value.message


def test_an_unreachable_provider_is_unavailable() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with httpx.Client(transport=httpx.MockTransport(down)) as http, pytest.raises(Unavailable) as ended:
        discover(http, ISSUER)
    assert ended.value.code == "identity_provider_unreachable"
