"""Bearer-token minting and verification (pj_common.auth): every refusal is attacked by a test."""

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pj_common.auth import MAX_TOKEN_BYTES, ClaimMapping, Principal, Role, TokenVerifier, mint_token, token_claims
from pj_common.errors import ErrorCode, GateError
from pj_common.jwks import StaticPublicKey

# HS256 keys of at least 32 bytes: shorter ones make PyJWT warn (and warnings are errors here).
SECRET = "unit-test-secret-0123456789abcdefghijklmnop"
OTHER_SECRET = "another-secret-0123456789abcdefghijklmnopqrs"
ISSUER = "puddlejumper"
AUDIENCE = "pj-approval-gate"


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(SECRET, ISSUER, AUDIENCE)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: Any) -> str:
    return str(key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode())


@pytest.fixture
def rsa_verifier(rsa_key: rsa.RSAPrivateKey) -> TokenVerifier:
    return TokenVerifier(StaticPublicKey(public_pem(rsa_key)), ISSUER, AUDIENCE, algorithms=["RS256"])


_DROP = object()


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


def _encode(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256",
            headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_signed(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes) -> str:
    """An HS256 token signed by hand, with any header and any bytes as the key (PyJWT refuses some)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _assert_unauthorized(verifier: TokenVerifier, token: str | None) -> GateError:
    with pytest.raises(GateError) as info:
        verifier.verify(token)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    for part in (token or "").split("."):  # the message never repeats the token, nor any part of it
        assert len(part) < 8 or part not in info.value.message
    return info.value


# ---------------------------------------------------------------- what verifies


@pytest.mark.parametrize("role", list(Role))
def test_round_trip(verifier: TokenVerifier, role: Role) -> None:
    token = mint_token(SECRET, subject="alice", tenant="acme", role=role, issuer=ISSUER, audience=AUDIENCE)
    principal = verifier.verify(token)
    assert principal == Principal(subject="alice", tenant="acme", role=role)
    assert principal.role is role


def test_minted_claims() -> None:
    before = int(time.time())
    token = mint_token(SECRET, subject="alice", tenant="acme", role=Role.ADMIN, issuer=ISSUER,
                       audience=AUDIENCE, ttl_s=120)
    after = int(time.time())
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert {k: claims[k] for k in ("sub", "tenant", "role", "iss", "aud")} == {
        "sub": "alice", "tenant": "acme", "role": "admin", "iss": ISSUER, "aud": AUDIENCE}
    assert before <= claims["iat"] <= after
    assert claims["exp"] == claims["iat"] + 120


def test_mint_token_rejects_unknown_role() -> None:
    with pytest.raises(ValueError):
        mint_token(SECRET, subject="a", tenant="t", role="superuser", issuer=ISSUER, audience=AUDIENCE)


def test_rs256_with_a_public_key(rsa_key: rsa.RSAPrivateKey, rsa_verifier: TokenVerifier) -> None:
    token = _encode(_claims(role="admin"), rsa_key, "RS256")
    assert rsa_verifier.verify(token) == Principal("alice", "acme", Role.ADMIN)


@pytest.mark.parametrize(("private", "algorithm"), [
    (ec.generate_private_key(ec.SECP256R1()), "ES256"),
    (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
])
def test_es256_and_eddsa_with_a_public_key(private: Any, algorithm: str) -> None:
    verifier = TokenVerifier(StaticPublicKey(public_pem(private)), ISSUER, AUDIENCE, algorithms=[algorithm])
    assert verifier.verify(_encode(_claims(), private, algorithm)).role is Role.APPROVER


def test_leeway_of_30_seconds(verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert verifier.verify(_encode(_claims(exp=now - 10, iat=now - 100)))  # expired 10 s ago: clock skew
    assert verifier.verify(_encode(_claims(iat=now + 10, nbf=now + 10)))  # a clock 10 s ahead


def test_without_issuer_and_audience_configured_they_are_not_required() -> None:
    dev = TokenVerifier(SECRET, None, None)
    assert dev.verify(_encode(_claims(iss=_DROP, aud=_DROP))).subject == "alice"


# ---------------------------------------------------------------- attacks: each one refused


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(verifier: TokenVerifier, alg: str) -> None:
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(role="admin")).encode())
    _assert_unauthorized(verifier, f"{header}.{payload}.")
    _assert_unauthorized(verifier, jwt.encode(_claims(role="admin"), None, algorithm="none"))


def test_a_verifier_never_accepts_none_as_an_algorithm() -> None:
    with pytest.raises(ValueError, match="none"):
        TokenVerifier(SECRET, ISSUER, AUDIENCE, algorithms=["HS256", "none"])


def test_hs256_signed_with_the_rsa_public_key(rsa_key: rsa.RSAPrivateKey, rsa_verifier: TokenVerifier) -> None:
    """Algorithm confusion: the public key is public, so an HMAC "signed" with it must never verify."""
    forged = _hand_signed({"alg": "HS256", "typ": "JWT"}, _claims(role="admin"), public_pem(rsa_key).encode())
    assert _assert_unauthorized(rsa_verifier, forged).message == "token algorithm is not allowed"
    # Even a verifier wrongly configured to allow HS256 next to the public key refuses it (PyJWT will not
    # take a PEM public key as an HMAC secret).
    confused = TokenVerifier(StaticPublicKey(public_pem(rsa_key)), ISSUER, AUDIENCE, algorithms=["RS256", "HS256"])
    _assert_unauthorized(confused, forged)


def test_rs256_token_refused_by_a_secret_verifier(rsa_key: rsa.RSAPrivateKey, verifier: TokenVerifier) -> None:
    _assert_unauthorized(verifier, _encode(_claims(), rsa_key, "RS256"))


def test_other_hmac_algorithm_refused() -> None:
    long_key = SECRET * 2  # >= 64 bytes, so HS512 does not warn about the key length
    verifier = TokenVerifier(long_key, ISSUER, AUDIENCE)
    assert verifier.verify(_encode(_claims(), key=long_key)) == Principal("alice", "acme", Role.APPROVER)
    _assert_unauthorized(verifier, _encode(_claims(), key=long_key, algorithm="HS512"))


def test_wrong_secret(verifier: TokenVerifier) -> None:
    error = _assert_unauthorized(verifier, _encode(_claims(), key=OTHER_SECRET))
    assert error.message == "token signature does not verify"


def test_tampered_payload(verifier: TokenVerifier) -> None:
    header, _, signature = _encode(_claims(role="viewer")).split(".")
    _, admin_payload, _ = _encode(_claims(role="admin")).split(".")
    _assert_unauthorized(verifier, f"{header}.{admin_payload}.{signature}")


def test_expired(verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert _assert_unauthorized(verifier, _encode(_claims(iat=now - 7200, exp=now - 3600))).message == "token expired"
    token = mint_token(SECRET, subject="a", tenant="t", role=Role.ADMIN, issuer=ISSUER, audience=AUDIENCE, ttl_s=-60)
    assert _assert_unauthorized(verifier, token).message == "token expired"


def test_not_yet_valid(verifier: TokenVerifier) -> None:
    now = int(time.time())
    error = _assert_unauthorized(verifier, _encode(_claims(nbf=now + 120)))
    assert "not valid yet" in error.message


def test_issued_in_the_future_beyond_leeway(verifier: TokenVerifier) -> None:
    now = int(time.time())
    error = _assert_unauthorized(verifier, _encode(_claims(iat=now + 120, exp=now + 600)))
    assert "not valid yet" in error.message


def test_lifetime_over_the_maximum() -> None:
    verifier = TokenVerifier(SECRET, ISSUER, AUDIENCE, max_ttl_s=3600)
    now = int(time.time())
    assert verifier.verify(_encode(_claims(iat=now, exp=now + 3600)))
    error = _assert_unauthorized(verifier, _encode(_claims(iat=now, exp=now + 3601)))
    assert "lifetime" in error.message


@pytest.mark.parametrize(("claim", "value"), [("iss", "someone-else"), ("aud", "other-audience"),
                                              ("aud", ["other", "audiences"])])
def test_wrong_issuer_or_audience(verifier: TokenVerifier, claim: str, value: Any) -> None:
    error = _assert_unauthorized(verifier, _encode(_claims(**{claim: value})))
    assert error.message == f"token has the wrong {'issuer' if claim == 'iss' else 'audience'}"


def test_audience_list_with_ours_verifies(verifier: TokenVerifier) -> None:
    assert verifier.verify(_encode(_claims(aud=["account", AUDIENCE]))).subject == "alice"


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "iss", "aud", "tenant"])
def test_missing_claim(verifier: TokenVerifier, claim: str) -> None:
    error = _assert_unauthorized(verifier, _encode(_claims(**{claim: _DROP})))
    assert error.message == f"token lacks the {claim} claim"


@pytest.mark.parametrize("role", ["superuser", "Admin", "", None, 1, ["superuser"], {"admin": True}])
def test_unknown_role(verifier: TokenVerifier, role: Any) -> None:
    assert "unknown role" in _assert_unauthorized(verifier, _encode(_claims(role=role))).message


def test_missing_role(verifier: TokenVerifier) -> None:
    assert "unknown role" in _assert_unauthorized(verifier, _encode(_claims(role=_DROP))).message


@pytest.mark.parametrize("header", [
    {"jku": "https://attacker.example/jwks.json"},
    {"x5u": "https://attacker.example/cert.pem"},
    {"jwk": {"kty": "oct", "k": _b64(SECRET.encode())}},
    {"x5c": ["MIIB..."]},
    {"crit": ["exp"]},
])
def test_headers_that_name_a_key_are_refused(verifier: TokenVerifier, header: dict[str, Any]) -> None:
    """Even correctly signed: a token must never choose the key that verifies it."""
    error = _assert_unauthorized(verifier, _encode(_claims(), headers=header))
    # PyJWT itself refuses a `crit` it does not implement, before our own check.
    assert error.message.startswith("token header may not carry") or "crit" in header


def test_oversized_token(verifier: TokenVerifier) -> None:
    small = _encode(_claims(pad="x" * (MAX_TOKEN_BYTES // 2)))
    assert verifier.verify(small).subject == "alice"
    big = _encode(_claims(pad="x" * MAX_TOKEN_BYTES))
    assert len(big) > MAX_TOKEN_BYTES
    assert "larger than" in _assert_unauthorized(verifier, big).message


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(verifier: TokenVerifier, token: str | None) -> None:
    assert _assert_unauthorized(verifier, token).message == "missing bearer token"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "not a jwt at all", "eyJhbGciOiJIUzI1NiJ9..", "...."])
def test_garbage_token(verifier: TokenVerifier, token: str) -> None:
    assert _assert_unauthorized(verifier, token).message in (
        "malformed token", "token algorithm is not allowed", "token signature does not verify")


@pytest.mark.parametrize(("field", "value"), [
    ("sub", ""), ("sub", "   "), ("sub", 42), ("sub", "al\x00ice"), ("sub", "a\u202eb"), ("sub", "x" * 257),
    ("tenant", ""), ("tenant", 42), ("tenant", None), ("tenant", ["acme"]), ("tenant", "ac\nme"),
])
def test_subject_and_tenant_must_be_printable_identifiers(verifier: TokenVerifier, field: str, value: Any) -> None:
    error = _assert_unauthorized(verifier, _encode(_claims(**{field: value})))
    assert field in error.message


def test_a_refusal_never_echoes_the_token(verifier: TokenVerifier) -> None:
    for token in (_encode(_claims(role="x" * 30)), _encode(_claims(), key=OTHER_SECRET), "x" * 9000):
        error = _assert_unauthorized(verifier, token)
        assert token not in error.message and token[:20] not in error.message


# ---------------------------------------------------------------- canonical identities and claim mapping


def test_identities_are_canonical(verifier: TokenVerifier) -> None:
    decomposed = "Ame\u0301lie"  # "Amélie" with a combining accent: another spelling of the same name
    principal = verifier.verify(_encode(_claims(sub=f"  {decomposed} ", tenant="ACME")))
    assert principal == Principal("am\u00e9lie", "acme", Role.APPROVER)
    assert verifier.verify(_encode(_claims(sub="Alice"))).subject == verifier.verify(_encode(_claims())).subject


def test_case_sensitive_identity_provider_keeps_case() -> None:
    verifier = TokenVerifier(SECRET, ISSUER, AUDIENCE, claims=ClaimMapping(case_insensitive=False))
    assert verifier.verify(_encode(_claims(sub=" Alice "))).subject == "Alice"


def test_keycloak_nested_roles_with_a_role_map() -> None:
    claims = ClaimMapping(role_claim="realm_access.roles", tenant_claim="org.tenant",
                          role_map={"pj-approvers": Role.APPROVER, "pj-admins": Role.ADMIN})
    verifier = TokenVerifier(SECRET, ISSUER, AUDIENCE, claims=claims)
    token = _encode(_claims(role=_DROP, tenant=_DROP, org={"tenant": "acme"},
                            realm_access={"roles": ["offline_access", "pj-approvers"]}))
    assert verifier.verify(token) == Principal("alice", "acme", Role.APPROVER)
    # With a map, only mapped values count: a group merely called "admin" is not our admin.
    error = _assert_unauthorized(verifier, _encode(_claims(tenant=_DROP, org={"tenant": "acme"},
                                                           realm_access={"roles": ["admin"]})))
    assert "unknown role" in error.message


def test_namespaced_claim_names_with_dots() -> None:
    claims = ClaimMapping(role_claim="https://pj.example.com/role", tenant_claim="https://pj.example.com/tenant")
    verifier = TokenVerifier(SECRET, ISSUER, AUDIENCE, claims=claims)
    token = _encode(_claims(role=_DROP, tenant=_DROP, **{"https://pj.example.com/role": "viewer",
                                                          "https://pj.example.com/tenant": "acme"}))
    assert verifier.verify(token) == Principal("alice", "acme", Role.VIEWER)


def test_a_token_that_maps_to_two_roles_is_refused() -> None:
    claims = ClaimMapping(role_claim="groups", role_map={"ops": Role.OPERATOR, "approvers": Role.APPROVER})
    verifier = TokenVerifier(SECRET, ISSUER, AUDIENCE, claims=claims)
    error = _assert_unauthorized(verifier, _encode(_claims(groups=["ops", "approvers"])))
    assert "several roles" in error.message
    assert verifier.verify(_encode(_claims(groups=["ops", "everyone"]))).role is Role.OPERATOR


def test_token_claims_sign_with_any_key(rsa_key: rsa.RSAPrivateKey, rsa_verifier: TokenVerifier) -> None:
    claims = token_claims(subject="svc", tenant="acme", role=Role.SERVICE, issuer=ISSUER, audience=AUDIENCE)
    assert rsa_verifier.verify(jwt.encode(claims, rsa_key, algorithm="RS256")).role is Role.SERVICE


@pytest.mark.parametrize(
    ("role", "whole"),
    [(Role.ADMIN, True), (Role.VIEWER, True), (Role.APPROVER, True), (Role.OPERATOR, False), (Role.SERVICE, False)],
)
def test_sees_whole_tenant(role: Role, whole: bool) -> None:
    assert Principal(subject="x", tenant="t", role=role).sees_whole_tenant is whole


def test_principal_is_frozen() -> None:
    principal = Principal(subject="x", tenant="t", role=Role.VIEWER)
    with pytest.raises(AttributeError):
        principal.role = Role.ADMIN  # type: ignore[misc]  # the frozen assignment under test
