"""The stored token, renewed before a command uses it: when `pj login` signed in through an OpenID
provider and the access token has expired (or will within `RENEW_EARLY_S`), its refresh token buys a new
one and the config file is rewritten (mode 0600, like every save).

Two `pj` runs may find the same expired token at once; with refresh tokens that rotate on use, the second
redemption would fail. A lock file next to the config makes them take turns, and the second reads the
token the first one stored instead of redeeming again.
"""

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from .config import FILE_MODE, StoredConfig, load, save
from .oidc import TokenSet, provider_client, refresh

RENEW_EARLY_S = 30.0  # a token that ends in flight is as bad as an expired one


def needs_renewal(config: StoredConfig, *, now: float) -> bool:
    """True when the stored access token has (nearly) expired and a refresh token can renew it."""
    sign_in = config.sign_in
    if not config.token or sign_in is None or not sign_in.refresh_token or sign_in.expires_at is None:
        return False
    return now >= sign_in.expires_at - RENEW_EARLY_S


def renewed(config: StoredConfig, tokens: TokenSet, *, now: float) -> StoredConfig:
    """The config with the new tokens (a provider that does not rotate refresh tokens keeps the old one)."""
    assert config.sign_in is not None, "only a signed-in config is renewed"
    sign_in = config.sign_in.model_copy(update={
        "refresh_token": tokens.refresh_token or config.sign_in.refresh_token,
        "expires_at": tokens.expires_at(now)})
    return config.model_copy(update={"token": tokens.access_token, "sign_in": sign_in})


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held at most one refresh request long (its timeout bounds it)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def current(path: Path, *, clock: Callable[[], float] = time.time,
            http: Callable[[], httpx.Client] = provider_client) -> StoredConfig:
    """The stored config, its access token renewed first if it has expired."""
    config = load(path)
    if not needs_renewal(config, now=clock()):
        return config
    with _locked(path):
        config = load(path)  # another run may have renewed it while this one waited for the lock
        if not needs_renewal(config, now=clock()):
            return config
        assert config.sign_in is not None and config.sign_in.refresh_token is not None
        asked_at = clock()  # the lifetime counts from the request: the answer may come late
        with http() as client:
            tokens = refresh(client, token_endpoint=config.sign_in.token_endpoint,
                             client_id=config.sign_in.client_id, refresh_token=config.sign_in.refresh_token)
        fresh = renewed(config, tokens, now=asked_at)
        save(path, fresh)
        return fresh
