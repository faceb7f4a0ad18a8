"""The gateway verifying an identity provider's RS256 tokens end to end: keys from a real JWKS endpoint
on 127.0.0.1, the token passed on to approvals unchanged, forged and unknown-key tokens refused."""

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from pj_common.jwks import JwksKeys
from pj_common.messages import PendingCount
from tests.integration.gateway.conftest import FakeApprovals, Gateway, GatewayFactory, ok
from tests.support.jwks_server import JwksEndpoint, SigningKey, jwks_endpoint

ISSUER = "https://idp.test/realms/pj"
PENDING = "/api/approvals/count/pending"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("idp-key-1")


@pytest.fixture
def idp(key: SigningKey) -> Iterator[JwksEndpoint]:
    with jwks_endpoint(key) as endpoint:
        yield endpoint


@pytest.fixture
async def gateway(approvals: FakeApprovals, gateway_factory: GatewayFactory,
                  idp: JwksEndpoint) -> AsyncIterator[Gateway]:
    """A gateway in prod with the provider's JWKS and no secret at all."""
    async with gateway_factory(jwt_secret=None, jwt_jwks_url=idp.url, jwt_issuer=ISSUER) as started:
        yield started


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_an_rs256_token_from_the_provider_is_accepted(
        gateway: Gateway, approvals: FakeApprovals, idp: JwksEndpoint, key: SigningKey) -> None:
    assert idp.fetches == 1  # at start, before any request
    approvals.answer("count_pending", ok(PendingCount(pending_count=2)))
    token = key.token(subject="Alice", role="viewer", issuer=ISSUER)
    r = await gateway.client.get(PENDING, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"pendingCount": 2}
    assert [envelope.token for envelope in approvals.received] == [token]  # approvals verifies it again
    assert isinstance(gateway.state.verifier.keys, JwksKeys)
    assert idp.fetches == 1
    for _ in range(3):  # later requests use the cached key
        assert (await gateway.client.get(PENDING, headers=bearer(token))).status_code == 200
    assert idp.fetches == 1


async def test_a_token_of_an_unknown_key_is_401(gateway: Gateway, approvals: FakeApprovals) -> None:
    stranger = SigningKey("not-published")
    r = await gateway.client.get(PENDING, headers=bearer(stranger.token(issuer=ISSUER)))
    assert r.status_code == 401
    assert r.json()["error"] == {"code": "unauthorized", "message": "token signed by an unknown key"}
    assert approvals.received == []


async def test_hs256_forged_with_the_public_key_is_401(
        gateway: Gateway, approvals: FakeApprovals, key: SigningKey) -> None:
    public = key.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = jwt.decode(key.token(role="admin", issuer=ISSUER), options={"verify_signature": False})
    signing_input = (f"{b64(json.dumps({'alg': 'HS256', 'kid': key.kid}).encode())}."
                     f"{b64(json.dumps(claims).encode())}")
    forged = f"{signing_input}.{b64(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())}"
    r = await gateway.client.get(PENDING, headers=bearer(forged))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert forged not in r.text
    assert approvals.received == []


async def test_a_token_of_another_issuer_is_401(gateway: Gateway, approvals: FakeApprovals, key: SigningKey) -> None:
    r = await gateway.client.get(PENDING, headers=bearer(key.token(issuer="https://evil.test")))
    assert r.status_code == 401 and r.json()["error"]["message"] == "token has the wrong issuer"
    assert approvals.received == []
