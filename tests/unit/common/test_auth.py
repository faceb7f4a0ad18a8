"""Bearer-token minting and verification (pj_common.auth)."""

import time
from typing import Any

import jwt
import pytest

from pj_common.auth import Principal, Role, TokenVerifier, mint_token
from pj_common.errors import ErrorCode, GateError

# HS256 keys of at least 32 bytes: shorter ones make PyJWT warn (and warnings are errors here).
SECRET = "unit-test-secret-0123456789abcdefghijklmnop"
OTHER_SECRET = "another-secret-0123456789abcdefghijklmnopqrs"
ISSUER = "puddlejumper"
AUDIENCE = "pj-approval-gate"


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(SECRET, ISSUER, AUDIENCE)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "alice", "tenant": "acme", "role": "approver", "iss": ISSUER,
                              "aud": AUDIENCE, "iat": now, "exp": now + 600}
    for key, value in overrides.items():
        if value is _DROP:
            claims.pop(key)
        else:
            claims[key] = value
    return claims


_DROP = object()


def _encode(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _assert_unauthorized(verifier: TokenVerifier, token: str | None) -> GateError:
    with pytest.raises(GateError) as info:
        verifier.verify(token)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    return info.value


@pytest.mark.parametrize("role", list(Role))
def test_round_trip(verifier: TokenVerifier, role: Role) -> None:
    token = mint_token(SECRET, subject="alice", tenant="acme", role=role, issuer=ISSUER, audience=AUDIENCE)
    principal = verifier.verify(token)
    assert principal == Principal(subject="alice", tenant="acme", role=role)
    assert principal.role is role


def test_round_trip_with_role_as_string(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, subject="svc", tenant="t1", role="operator", issuer=ISSUER, audience=AUDIENCE)
    assert verifier.verify(token) == Principal("svc", "t1", Role.OPERATOR)


def test_minted_claims(verifier: TokenVerifier) -> None:
    before = int(time.time())
    token = mint_token(SECRET, subject="alice", tenant="acme", role=Role.ADMIN, issuer=ISSUER,
                       audience=AUDIENCE, ttl_s=120)
    after = int(time.time())
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert claims["sub"] == "alice"
    assert claims["tenant"] == "acme"
    assert claims["role"] == "admin"
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert before <= claims["iat"] <= after
    assert claims["exp"] == claims["iat"] + 120


def test_mint_token_rejects_unknown_role() -> None:
    with pytest.raises(ValueError):
        mint_token(SECRET, subject="a", tenant="t", role="superuser", issuer=ISSUER, audience=AUDIENCE)


def test_hand_crafted_valid_token(verifier: TokenVerifier) -> None:
    assert verifier.verify(_encode(_claims())) == Principal("alice", "acme", Role.APPROVER)


def test_expired_token(verifier: TokenVerifier) -> None:
    now = int(time.time())
    error = _assert_unauthorized(verifier, _encode(_claims(iat=now - 7200, exp=now - 3600)))
    assert error.message == "token expired"


def test_minted_token_with_negative_ttl_is_expired(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, subject="a", tenant="t", role=Role.ADMIN, issuer=ISSUER, audience=AUDIENCE,
                       ttl_s=-60)
    assert _assert_unauthorized(verifier, token).message == "token expired"


def test_wrong_secret(verifier: TokenVerifier) -> None:
    error = _assert_unauthorized(verifier, _encode(_claims(), key=OTHER_SECRET))
    assert error.message.startswith("invalid token")


def test_wrong_issuer(verifier: TokenVerifier) -> None:
    _assert_unauthorized(verifier, _encode(_claims(iss="someone-else")))


def test_wrong_audience(verifier: TokenVerifier) -> None:
    _assert_unauthorized(verifier, _encode(_claims(aud="other-audience")))


def test_verifier_bound_to_other_audience_rejects(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, subject="a", tenant="t", role=Role.ADMIN, issuer=ISSUER, audience=AUDIENCE)
    _assert_unauthorized(TokenVerifier(SECRET, ISSUER, "other-audience"), token)
    _assert_unauthorized(TokenVerifier(SECRET, "other-issuer", AUDIENCE), token)


@pytest.mark.parametrize("claim", ["exp", "sub", "iss", "aud"])
def test_missing_required_claim(verifier: TokenVerifier, claim: str) -> None:
    _assert_unauthorized(verifier, _encode(_claims(**{claim: _DROP})))


def test_missing_tenant_claim(verifier: TokenVerifier) -> None:
    error = _assert_unauthorized(verifier, _encode(_claims(tenant=_DROP)))
    assert "tenant" in error.message


@pytest.mark.parametrize("tenant", ["", 42, None, ["acme"]])
def test_bad_tenant_claim(verifier: TokenVerifier, tenant: Any) -> None:
    _assert_unauthorized(verifier, _encode(_claims(tenant=tenant)))


def test_empty_subject(verifier: TokenVerifier) -> None:
    _assert_unauthorized(verifier, _encode(_claims(sub="")))


@pytest.mark.parametrize("role", ["superuser", "Admin", "", None, 1])
def test_unknown_role(verifier: TokenVerifier, role: Any) -> None:
    error = _assert_unauthorized(verifier, _encode(_claims(role=role)))
    assert "unknown role" in error.message


def test_missing_role(verifier: TokenVerifier) -> None:
    error = _assert_unauthorized(verifier, _encode(_claims(role=_DROP)))
    assert "unknown role" in error.message


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(verifier: TokenVerifier, token: str | None) -> None:
    assert _assert_unauthorized(verifier, token).message == "missing bearer token"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "not a jwt at all", "eyJhbGciOiJIUzI1NiJ9..", "...."])
def test_garbage_token(verifier: TokenVerifier, token: str) -> None:
    assert _assert_unauthorized(verifier, token).message.startswith("invalid token")


def test_tampered_payload(verifier: TokenVerifier) -> None:
    good = _encode(_claims(role="viewer"))
    admin = _encode(_claims(role="admin"))
    header, _, signature = good.split(".")
    _, admin_payload, _ = admin.split(".")
    _assert_unauthorized(verifier, f"{header}.{admin_payload}.{signature}")


def test_unsigned_alg_none_token(verifier: TokenVerifier) -> None:
    _assert_unauthorized(verifier, jwt.encode(_claims(role="admin"), None, algorithm="none"))


def test_other_hmac_algorithm_rejected() -> None:
    # Only HS256 is accepted, even when signed with the verifier's own key.
    long_key = SECRET * 2  # >= 64 bytes, so HS512 does not warn about the key length
    verifier = TokenVerifier(long_key, ISSUER, AUDIENCE)
    assert verifier.verify(_encode(_claims(), key=long_key)) == Principal("alice", "acme", Role.APPROVER)
    _assert_unauthorized(verifier, _encode(_claims(), key=long_key, algorithm="HS512"))


@pytest.mark.parametrize(
    ("role", "whole"),
    [(Role.ADMIN, True), (Role.VIEWER, True), (Role.APPROVER, True), (Role.OPERATOR, False)],
)
def test_sees_whole_tenant(role: Role, whole: bool) -> None:
    assert Principal(subject="x", tenant="t", role=role).sees_whole_tenant is whole


def test_principal_is_frozen() -> None:
    principal = Principal(subject="x", tenant="t", role=Role.VIEWER)
    with pytest.raises(AttributeError):
        principal.role = Role.ADMIN  # type: ignore[misc]  # the frozen assignment under test
