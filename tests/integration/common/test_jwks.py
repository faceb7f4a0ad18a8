"""JWKS verification against a real key endpoint on 127.0.0.1 (pj_common.jwks with pj_common.auth):
keys chosen by `kid`, rotation picked up on an unknown `kid`, refreshes limited in rate."""

import asyncio

import pytest

from pj_common.auth import Principal, Role, TokenVerifier
from pj_common.errors import ErrorCode, GateError
from pj_common.jwks import JwksKeys
from tests.support.jwks_server import JwksEndpoint, SigningKey, jwks_endpoint

ISSUER, AUDIENCE = "https://idp.test", "pj-approval-gate"


@pytest.fixture(scope="module")
def key_a() -> SigningKey:
    return SigningKey("key-a")


@pytest.fixture(scope="module")
def key_b() -> SigningKey:
    return SigningKey("key-b")


def verifier_for(endpoint: JwksEndpoint, *, interval_s: float) -> tuple[TokenVerifier, JwksKeys]:
    keys = JwksKeys(endpoint.url, min_refresh_interval_s=interval_s)
    return TokenVerifier(keys, ISSUER, AUDIENCE, algorithms=["RS256"]), keys


async def verified(verifier: TokenVerifier, token: str) -> Principal:
    await verifier.prepare(token)
    return verifier.verify(token)


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(GateError) as info:
        verifier.verify(token)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    return info.value.message


async def test_rotation_from_key_a_to_key_b(key_a: SigningKey, key_b: SigningKey) -> None:
    with jwks_endpoint(key_a) as endpoint:
        verifier, keys = verifier_for(endpoint, interval_s=0.2)
        await keys.start()
        assert await verified(verifier, key_a.token(issuer=ISSUER)) == Principal("alice", "acme", Role.ADMIN)
        assert endpoint.fetches == 1  # a known key id needs no fetch

        endpoint.publish(key_b)  # the identity provider rotates its key
        token_b = key_b.token(subject="bob", role="viewer", issuer=ISSUER)
        assert refused(verifier, token_b) == "token signed by an unknown key"  # before any refresh
        await asyncio.sleep(0.25)  # past the refresh interval
        assert await verified(verifier, token_b) == Principal("bob", "acme", Role.VIEWER)
        assert endpoint.fetches == 2
        # Key A is gone from the document, so a new token signed by it no longer verifies.
        assert keys.key_ids == frozenset({"key-b"})
        assert "unknown key" in refused(verifier, key_a.token(subject="carol", issuer=ISSUER))


async def test_unknown_kid_refreshes_at_most_once_per_interval(key_a: SigningKey) -> None:
    forger = SigningKey("made-up")
    with jwks_endpoint(key_a) as endpoint:
        verifier, keys = verifier_for(endpoint, interval_s=60)  # the production interval
        await keys.start()
        for n in range(20):  # a stream of tokens with key ids the provider never published
            token = forger.token(subject=f"mallory-{n}", issuer=ISSUER)
            await verifier.prepare(token)
            assert refused(verifier, token) == "token signed by an unknown key"
        assert endpoint.fetches == 1  # the start, and no more within the minute
        await asyncio.gather(*(verifier.prepare(forger.token(subject=f"m{n}", issuer=ISSUER)) for n in range(10)))
        assert endpoint.fetches == 1


async def test_concurrent_callers_share_one_fetch(key_a: SigningKey) -> None:
    with jwks_endpoint(key_a) as endpoint:
        verifier, _ = verifier_for(endpoint, interval_s=60)
        tokens = [key_a.token(subject=f"user-{n}", issuer=ISSUER) for n in range(10)]
        await asyncio.gather(*(verifier.prepare(token) for token in tokens))  # no start: first requests fetch
        assert [verifier.verify(token).subject for token in tokens] == [f"user-{n}" for n in range(10)]
        assert endpoint.fetches == 1


async def test_a_failed_fetch_keeps_the_keys_it_had(key_a: SigningKey) -> None:
    with jwks_endpoint(key_a) as endpoint:
        verifier, keys = verifier_for(endpoint, interval_s=0.05)
        await keys.start()
        url = endpoint.url
    # The endpoint is gone now: the refresh fails, the cached key still verifies.
    await asyncio.sleep(0.1)
    assert not await keys.refresh()
    assert keys.url == url
    assert verifier.verify(key_a.token(issuer=ISSUER)).subject == "alice"


async def test_a_slow_fetch_does_not_block_the_event_loop(key_a: SigningKey) -> None:
    """Known keys go on verifying while a refresh waits for a slow identity provider (the fetch is async)."""
    with jwks_endpoint(key_a) as endpoint:
        verifier, keys = verifier_for(endpoint, interval_s=0)
        await keys.start()
        endpoint.delay_s = 0.5
        refresh = asyncio.create_task(keys.refresh())
        await asyncio.sleep(0.1)  # a blocking fetch would hold the loop here for the whole 0.5 s
        assert not refresh.done()
        assert verifier.verify(key_a.token(issuer=ISSUER)).subject == "alice"
        assert await refresh


async def test_an_old_cache_is_refreshed_in_the_background(key_a: SigningKey, key_b: SigningKey) -> None:
    with jwks_endpoint(key_a) as endpoint:
        keys = JwksKeys(endpoint.url, min_refresh_interval_s=0, max_age_s=0.1)
        verifier = TokenVerifier(keys, ISSUER, AUDIENCE, algorithms=["RS256"])
        await keys.start()
        endpoint.publish(key_b)  # key A withdrawn: tokens already verified stay cached until they expire
        await asyncio.sleep(0.15)
        endpoint.delay_s = 0.3
        token = key_a.token(subject="dave", issuer=ISSUER)
        await asyncio.wait_for(verifier.prepare(token), 0.1)  # does not wait for the slow provider
        assert verifier.verify(token).subject == "dave"
        for _ in range(50):  # the background refresh lands
            if keys.key_ids == {"key-b"}:
                break
            await asyncio.sleep(0.02)
        assert keys.key_ids == {"key-b"}
        assert "unknown key" in refused(verifier, key_a.token(subject="erin", issuer=ISSUER))
        await keys.stop()
