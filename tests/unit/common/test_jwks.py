"""Key sources (pj_common.jwks): what a JWKS document may contribute, and which public keys are taken."""

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pj_common.errors import GateError
from pj_common.jwks import JwksKeys, algorithms_for, load_public_key, parse_jwks


def rsa_jwk(kid: str | None, **extra: Any) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk: dict[str, Any] = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key)), **extra}
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def test_keys_by_kid() -> None:
    keys = parse_jwks({"keys": [rsa_jwk("a"), rsa_jwk("b")]})
    assert set(keys) == {"a", "b"}
    assert keys["a"].algorithm_name == "RS256"


def test_a_symmetric_key_in_a_jwks_is_ignored() -> None:
    """An "oct" key published in a JWKS is a secret everyone can read: it must never verify anything."""
    oct_key = {"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}
    keys = parse_jwks({"keys": [oct_key, rsa_jwk("a")]})
    assert set(keys) == {"a"}
    with pytest.raises(ValueError, match="no usable"):
        parse_jwks({"keys": [oct_key]})


def test_encryption_keys_and_kidless_keys_among_others_are_ignored() -> None:
    keys = parse_jwks({"keys": [rsa_jwk("enc", use="enc"), rsa_jwk(None), rsa_jwk("sig")]})
    assert set(keys) == {"sig"}
    assert set(parse_jwks({"keys": [rsa_jwk(None)]})) == {None}  # the one key: tokens without kid use it


@pytest.mark.parametrize("document", [[], {"keys": "x"}, {"nokeys": []}, "text", {"keys": []}])
def test_not_a_jwks(document: Any) -> None:
    with pytest.raises(ValueError):
        parse_jwks(document)


def test_an_empty_cache_knows_no_key() -> None:
    with pytest.raises(GateError, match="unknown key"):
        JwksKeys("https://idp.example/jwks").key_for({"alg": "RS256", "kid": "a"})


def test_public_keys_and_their_algorithms() -> None:
    def pem(private: Any) -> str:
        return str(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo).decode())

    assert algorithms_for(load_public_key(pem(ec.generate_private_key(ec.SECP256R1())))) == ("ES256",)
    assert algorithms_for(load_public_key(pem(ed25519.Ed25519PrivateKey.generate()))) == ("EdDSA",)
    assert "RS256" in algorithms_for(load_public_key(pem(rsa.generate_private_key(65537, 2048))))
