"""Token settings (pj_common.token_settings): one key source, pinned algorithms, claims, service identities."""

from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from pj_common.auth import Principal, Role, mint_token, token_claims
from pj_common.errors import GateError
from pj_common.jwks import JwksKeys, SharedSecret, StaticPublicKey
from pj_common.settings import DEV_JWT_SECRET
from pj_common.token_settings import ServiceIdentitySettings, TokenSettings

EXPLICIT = "explicit-secret-0123456789abcdefghijklmnopqrstuv"
ISSUER, AUDIENCE = "puddlejumper", "pj-approval-gate"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from no PJ_* configuration, whatever the surrounding shell exports."""
    import os

    for name in list(os.environ):
        if name.startswith(("PJ_JWT", "PJ_ENV", "PJ_IDENTITY", "PJ_SERVICE")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any, *, private: bool = False) -> str:
    if private:
        return str(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode())
    return str(key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def refused(match: str, **values: Any) -> None:
    with pytest.raises(ValidationError, match=match):
        TokenSettings(**values)


# ---------------------------------------------------------------- the key source


@pytest.mark.parametrize("env", [None, "prod"])
def test_no_key_outside_dev_is_refused(monkeypatch: pytest.MonkeyPatch, env: str | None) -> None:
    if env:
        monkeypatch.setenv("PJ_ENV", env)
    refused("PJ_JWT_SECRET, PJ_JWT_PUBLIC_KEY")


def test_dev_without_a_key_uses_the_dev_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_ENV", "dev")
    settings = TokenSettings()
    assert settings.jwt_key == DEV_JWT_SECRET
    assert isinstance(settings.key_source(), SharedSecret)
    assert settings.algorithms == ("HS256",)


@pytest.mark.parametrize("env", ["prod", "dev"])
def test_explicit_secret_is_used(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("PJ_ENV", env)
    monkeypatch.setenv("PJ_JWT_SECRET", EXPLICIT)
    settings = TokenSettings()
    assert settings.jwt_key == EXPLICIT
    assert EXPLICIT not in repr(settings)
    token = mint_token(EXPLICIT, subject="alice", tenant="acme", role=Role.ADMIN, issuer=ISSUER, audience=AUDIENCE)
    assert settings.token_verifier().verify(token) == Principal("alice", "acme", Role.ADMIN)


def test_short_secret_is_refused() -> None:
    refused("at least 32", jwt_secret="short")


def test_two_key_sources_are_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    refused("only one", jwt_secret=EXPLICIT, jwt_public_key=pem(rsa_key))
    refused("only one", jwt_public_key=pem(rsa_key), jwt_jwks_url="https://idp.example/jwks")


def test_public_key_verifies_and_cannot_mint(rsa_key: rsa.RSAPrivateKey) -> None:
    settings = TokenSettings(jwt_public_key=pem(rsa_key))
    assert settings.algorithms == ("RS256",)
    assert isinstance(settings.key_source(), StaticPublicKey)
    token = jwt.encode(token_claims(subject="bob", tenant="acme", role="viewer", issuer=ISSUER, audience=AUDIENCE),
                       rsa_key, algorithm="RS256")
    assert settings.token_verifier().verify(token).subject == "bob"
    with pytest.raises(ValueError, match="PJ_JWT_SECRET"):
        _ = settings.jwt_key


def test_public_key_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    (tmp_path / "key.pem").write_text(pem(rsa_key))
    monkeypatch.setenv("PJ_JWT_PUBLIC_KEY_FILE", str(tmp_path / "key.pem"))
    assert isinstance(TokenSettings().public_key, rsa.RSAPublicKey)
    monkeypatch.setenv("PJ_JWT_PUBLIC_KEY_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match="PJ_JWT_PUBLIC_KEY_FILE"):
        TokenSettings()


def test_a_private_key_is_refused_as_the_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    """A process given the private key could mint tokens: it must get the public half only."""
    refused("not a PEM public key", jwt_public_key=pem(rsa_key, private=True))
    refused("not a PEM public key", jwt_public_key="not a key")


def test_ec_key_algorithm_follows_its_curve() -> None:
    settings = TokenSettings(jwt_public_key=pem(ec.generate_private_key(ec.SECP384R1())))
    assert settings.algorithms == ("ES384",)


def test_jwks_url(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = TokenSettings(jwt_jwks_url="https://idp.example/realms/pj/protocol/openid-connect/certs")
    assert settings.algorithms == ("RS256", "ES256", "EdDSA")
    source = settings.key_source(jwks_refresh_interval_s=1)
    assert isinstance(source, JwksKeys) and source.url.startswith("https://idp.example/")
    assert TokenSettings(jwt_jwks_url="http://127.0.0.1:8081/jwks").jwt_jwks_url  # this host: fine
    refused("https", jwt_jwks_url="http://idp.example/jwks")
    refused("http\\(s\\) URL", jwt_jwks_url="file:///etc/keys.json")
    monkeypatch.setenv("PJ_ENV", "dev")
    assert TokenSettings(jwt_jwks_url="http://idp.example/jwks").jwt_jwks_url


# ---------------------------------------------------------------- algorithms, issuer, audience, claims


def test_algorithms_are_pinned(rsa_key: rsa.RSAPrivateKey) -> None:
    assert TokenSettings(jwt_secret=EXPLICIT, jwt_algorithms="HS256, HS512").algorithms == ("HS256", "HS512")
    refused("HS\\* algorithms need PJ_JWT_SECRET", jwt_public_key=pem(rsa_key), jwt_algorithms="RS256,HS256")
    refused("HS\\* algorithms need PJ_JWT_SECRET", jwt_jwks_url="https://idp.example/jwks", jwt_algorithms="HS256")
    refused("a secret verifies HS256", jwt_secret=EXPLICIT, jwt_algorithms="RS256")
    refused("unknown or refused", jwt_secret=EXPLICIT, jwt_algorithms="none")
    refused("unknown or refused", jwt_secret=EXPLICIT, jwt_algorithms="HS257")
    refused("verifies only", jwt_public_key=pem(rsa_key), jwt_algorithms="ES256")


def test_issuer_and_audience_are_required_outside_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    refused("PJ_JWT_ISSUER and PJ_JWT_AUDIENCE", jwt_secret=EXPLICIT, jwt_issuer="")
    refused("PJ_JWT_ISSUER and PJ_JWT_AUDIENCE", jwt_secret=EXPLICIT, jwt_audience="")
    monkeypatch.setenv("PJ_ENV", "dev")
    lax = TokenSettings(jwt_issuer="", jwt_audience="").token_verifier()
    claims = token_claims(subject="alice", tenant="acme", role="admin", issuer=ISSUER, audience=AUDIENCE)
    del claims["iss"], claims["aud"]
    assert lax.verify(jwt.encode(claims, DEV_JWT_SECRET, algorithm="HS256")).subject == "alice"


def test_claims_and_role_map_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_JWT_SECRET", EXPLICIT)
    monkeypatch.setenv("PJ_JWT_ROLE_CLAIM", "realm_access.roles")
    monkeypatch.setenv("PJ_JWT_TENANT_CLAIM", "org")
    monkeypatch.setenv("PJ_JWT_ROLE_MAP", '{"pj-approvers": "approver"}')
    monkeypatch.setenv("PJ_IDENTITY_CASE_INSENSITIVE", "false")
    monkeypatch.setenv("PJ_JWT_MAX_TTL_S", "600")
    settings = TokenSettings()
    claims = token_claims(subject="Alice", tenant="x", role="admin", issuer=ISSUER, audience=AUDIENCE, ttl_s=600)
    claims.update(org="Acme", realm_access={"roles": ["pj-approvers"]})
    assert settings.token_verifier().verify(jwt.encode(claims, EXPLICIT)) == Principal("Alice", "Acme", Role.APPROVER)
    claims["exp"] += 1  # one second over PJ_JWT_MAX_TTL_S
    with pytest.raises(GateError, match="lifetime"):
        settings.token_verifier().verify(jwt.encode(claims, EXPLICIT))


def test_role_map_to_an_unknown_role_is_refused() -> None:
    refused("jwt_role_map", jwt_secret=EXPLICIT, jwt_role_map={"admins": "superuser"})


# ---------------------------------------------------------------- service identities


def test_service_principals_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_JWT_SECRET", EXPLICIT)
    monkeypatch.setenv("PJ_SERVICE_PRINCIPALS",
                       '{"Billing-Bot": {"commands": ["execute", "get_approval"], "tenants": ["ACME"]}}')
    grants = ServiceIdentitySettings().service_identities()
    grants.authorize(Principal("billing-bot", "acme", Role.SERVICE), "execute")


@pytest.mark.parametrize(("grants", "match"), [
    ({"bot": {"commands": ["launch_missiles"], "tenants": ["acme"]}}, "unknown commands"),
    ({"bot": {"commands": [], "tenants": ["acme"]}}, "commands"),
    ({"bot": {"commands": ["execute"], "tenants": []}}, "tenants"),
    ({"bot": {"commands": ["execute"], "tenants": ["acme"], "role": "admin"}}, "role"),
    ({" ": {"commands": ["execute"], "tenants": ["acme"]}}, "empty"),
])
def test_bad_service_principals_are_refused(grants: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        ServiceIdentitySettings(jwt_secret=EXPLICIT, service_principals=grants)
