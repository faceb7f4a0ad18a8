"""`python -m pj_common.token` (pj_common.token): a JWT the services' verifier accepts."""

import pytest

from pj_common.auth import Role, TokenVerifier
from pj_common.token import main

SECRET = "token-test-secret-0123456789abcdefghijklmnop"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PJ_ENV", "PJ_JWT_ISSUER", "PJ_JWT_AUDIENCE", "PJ_JWT_SECRET_FILE", "PJ_JWT_PUBLIC_KEY",
                 "PJ_JWT_PUBLIC_KEY_FILE", "PJ_JWT_JWKS_URL", "PJ_JWT_ALGORITHMS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PJ_JWT_SECRET", SECRET)


def test_prints_a_token_the_verifier_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--role", "approver", "--sub", "alice", "--tenant", "acme", "--ttl", "60"])
    token = capsys.readouterr().out.strip()
    principal = TokenVerifier(SECRET, "puddlejumper", "pj-approval-gate").verify(token)
    assert (principal.subject, principal.tenant, principal.role) == ("alice", "acme", Role.APPROVER)


def test_an_unknown_role_is_refused_by_the_command_line() -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--role", "superuser"])
    assert exit_.value.code == 2


def test_an_invalid_configuration_exits_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_JWT_SECRET", "short")
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert str(exit_.value.code).startswith("token: invalid configuration:")


def test_with_a_public_key_there_is_nothing_to_sign_with(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    monkeypatch.delenv("PJ_JWT_SECRET")
    monkeypatch.setenv("PJ_JWT_PUBLIC_KEY", public)
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert "PJ_JWT_SECRET" in str(exit_.value.code) and "identity provider" in str(exit_.value.code)
