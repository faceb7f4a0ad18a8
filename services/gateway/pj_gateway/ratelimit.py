"""Rate limits: executes and decisions per caller, authentication failures per client address.

Counted by the `limits` library in a moving window: in this process's memory by default, or in
Redis when PJ_REDIS_URL is set, so every gateway instance spends from one budget. If Redis cannot
be reached the request goes through (logged): a rate limit is not an authorization check, and an
outage of it must not take the API down.
"""

import asyncio
import logging
import math
import time
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pj_common.errors import ErrorCode, GateError

from .deps import Caller, WriterDep
from .errors import failure
from .settings import GatewaySettings

log = logging.getLogger("pj.gateway.ratelimit")


class RateLimited(GateError):
    """Over a budget: `retry_after_s` is when the window frees a slot."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(ErrorCode.RATE_LIMITED, message)
        self.retry_after_s = retry_after_s


class RateLimits:
    """The gateway's budgets. The storage is made on first use: the in-memory one starts a task, so it
    needs the running event loop, which the app factory does not have."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._storage: Storage | None = None
        self._limiter: MovingWindowRateLimiter | None = None
        self._per_caller = RateLimitItemPerMinute(settings.rate_limit_per_min)
        self._auth_failures = RateLimitItemPerMinute(settings.auth_failures_per_min)

    async def spend_for_caller(self, tenant: str, subject: str) -> None:
        """Count one execute or decision of this caller; raise RateLimited when over the budget."""
        # Quoted: "/" joins the key's parts, so tenant "a/b" with sub "c" must not be tenant "a" with sub "b/c".
        key = ("caller", quote(tenant, safe=""), quote(subject, safe=""))
        retry = await self._spend(self._per_caller, key, test_only=False)
        if retry is not None:
            raise RateLimited(f"over {self._per_caller.amount} requests a minute for this caller", retry)

    async def auth_failures_retry_after(self, address: str) -> int | None:
        """Seconds until this address may try again, when its authentication failures used its budget."""
        return await self._spend(self._auth_failures, ("auth-failure", quote(address, safe="")), test_only=True)

    async def count_auth_failure(self, address: str) -> None:
        await self._spend(self._auth_failures, ("auth-failure", quote(address, safe="")), test_only=False)

    async def _spend(self, item: RateLimitItem, key: tuple[str, ...], *, test_only: bool) -> int | None:
        if self._limiter is None:
            self._storage = _storage(self._settings)
            self._limiter = MovingWindowRateLimiter(self._storage)
        limiter = self._limiter
        try:
            allowed = await (limiter.test(item, *key) if test_only else limiter.hit(item, *key))
            if allowed:
                return None
            stats = await limiter.get_window_stats(item, *key)
        except StorageError as exc:
            log.warning("rate limit storage unavailable: request allowed",
                        extra={"scope": "gateway.ratelimit_unavailable", "error": type(exc.storage_error).__name__})
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def aclose(self) -> None:
        """Close the Redis connections, or stop the memory storage's expiry task."""
        self._limiter = None
        if isinstance(self._storage, RedisStorage):
            client = getattr(self._storage.bridge, "storage", None)  # the redis-py bridge's client
            if client is not None:
                await client.aclose()
            return
        timer = getattr(self._storage, "timer", None)
        if isinstance(timer, asyncio.Task):
            timer.cancel()


def _storage(settings: GatewaySettings) -> Storage:
    if settings.redis_url is None:
        return MemoryStorage(wrap_exceptions=True)
    url = settings.redis_url.get_secret_value()
    # One key space per deployment (its broker prefix), so systems sharing a Redis keep their budgets apart.
    return RedisStorage(url if url.startswith("async+") else f"async+{url}", implementation="redispy",
                        key_prefix=f"{settings.amqp_prefix}:ratelimit", wrap_exceptions=True,
                        socket_timeout=1.0, socket_connect_timeout=1.0)


async def spend_writer_budget(request: Request, caller: WriterDep) -> Caller:
    """A caller allowed to change state, within its per-minute budget of executes and decisions."""
    limits: RateLimits = request.app.state.rate_limits
    await limits.spend_for_caller(caller.principal.tenant, caller.principal.subject)
    return caller


LimitedWriterDep = Annotated[Caller, Depends(spend_writer_budget)]


class AuthFailureLimit:
    """Refuses (429) a client address whose 401s used its budget, before its token is even read,
    so tokens cannot be guessed at line rate; counts each 401 it answers."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        address = scope["client"][0] if scope.get("client") else "unknown"
        retry = await limits.auth_failures_retry_after(address)
        if retry is not None:
            response = failure(Request(scope), ErrorCode.RATE_LIMITED, "too many authentication failures",
                               retry_after_s=retry)
            await response(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                await limits.count_auth_failure(address)
            await send(message)

        await self.app(scope, receive, send_wrapper)
