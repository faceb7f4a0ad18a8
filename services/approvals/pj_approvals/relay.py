"""The relays that carry what approvals commits out to the broker, after the commit.

The order relay publishes the dispatch outbox: the statement that claims a dispatch writes its order
row, and the relay takes rows in a short statement (a claim until a deadline, SKIP LOCKED), publishes
them signed and with publisher confirms, all in flight together, then deletes them. No connection or
transaction is held while the broker confirms. It is woken at once after a commit (by this process,
or by LISTEN/NOTIFY from another), and polls as a fallback.

Which stored events the event relay may publish now is decided here too (`publishable`).
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import psycopg
from aio_pika.abc import AbstractChannel
from psycopg_pool import AsyncConnectionPool

from pj_common.backoff import backoff_s
from pj_common.messages import DispatchOrder
from pj_common.runtime import cancel_and_wait
from pj_common.signing import signature_headers
from pj_common.transport import json_message, publish_confirmed

from . import store

log = logging.getLogger("pj.approvals.relay")

# The confirm channel of the current broker connection, or None while there is none.
ChannelSource = Callable[[], AbstractChannel | None]


class WakeableLoop:
    """Calls `step` at once when woken, else every `interval_s` seconds, from `start` until `stop`.

    A step that raises is logged under `scope` and the loop goes on after the interval; a step that
    returns True (it handled a full batch) runs again at once. A wake-up during a step is not lost: the
    next step follows it at once.
    """

    def __init__(self, step: Callable[[], Awaitable[bool]], interval_s: float, *, name: str, scope: str) -> None:
        self._step = step
        self._interval_s = interval_s
        self._name = name
        self._scope = scope
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._woken.set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            self._woken.clear()
            more = False
            try:
                more = await self._step()
            except Exception:
                log.warning("%s failed; trying again in %gs", self._name, self._interval_s, exc_info=True,
                            extra={"scope": self._scope})
            if more:
                await asyncio.sleep(0)  # let the loop's other tasks run between two full batches
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._interval_s)


class OrderRelay:
    """Publishes the dispatch outbox of one dispatch queue (see the module docstring)."""

    def __init__(self, pool: AsyncConnectionPool[Any], channel: ChannelSource, *, queue: str, signing_key: str,
                 batch: int, confirm_timeout_s: float) -> None:
        self._pool = pool
        self._channel = channel
        self._queue = queue
        self._key = signing_key
        self._batch = batch
        self._confirm_timeout_s = confirm_timeout_s

    async def step(self) -> bool:
        """One pass; True when a full batch went out (more may be waiting)."""
        return await self.relay_once() >= self._batch

    async def relay_once(self) -> int:
        """Take a batch, publish it, forget what the broker confirmed; the number published."""
        channel = self._channel()
        if channel is None:  # no broker now: the orders wait in the outbox, the reconnect wakes the relay
            return 0
        # The claim outlives a publish that times out, so no other relay publishes the row meanwhile.
        async with self._pool.connection() as conn:
            rows = await store.take_outbox(conn, queue=self._queue, batch=self._batch,
                                           hold_s=self._confirm_timeout_s + 5)
        if not rows:
            return 0
        outcomes = await asyncio.gather(*(self._publish(channel, row) for row in rows), return_exceptions=True)
        sent = [row.id for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
        failed = [(row, outcome) for row, outcome in zip(rows, outcomes, strict=True) if outcome is not None]
        async with self._pool.connection() as conn:
            if sent:
                await store.delete_outbox(conn, sent)
            if failed:
                await store.release_outbox(conn, [row.id for row, _ in failed])
        for row, error in failed:
            log.warning("dispatch order not published yet; it stays in the outbox: %r", error, extra={
                "scope": "approval.dispatch.publish_failed", "approvalId": str(row.approval_id)})
        return len(sent)

    async def _publish(self, channel: AbstractChannel, row: store.OutboxRow) -> None:
        order = DispatchOrder.model_validate_json(row.body)  # never publish a body that breaks the contract
        message = json_message(row.body, message_id=order.message_id,
                               headers=signature_headers(row.body, self._key))
        await asyncio.wait_for(publish_confirmed(channel, self._queue, message), self._confirm_timeout_s)


class OutboxListener:
    """Keeps one database connection LISTENing for the outbox's commit notices and wakes the relay on
    each (so an order queued by another approvals process goes out at once too); reconnects when the
    connection drops, waking the relay then as well, since notices may have been missed."""

    def __init__(self, conninfo: str, wake: Callable[[], None]) -> None:
        self._conninfo = conninfo
        self._wake = wake
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="outbox-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        attempt = 1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    await store.listen_for_orders(conn)
                    attempt = 1
                    self._wake()
                    async for _ in conn.notifies():
                        self._wake()
            except psycopg.Error as exc:
                delay = backoff_s(attempt, base=0.5, cap=10.0)
                log.warning("outbox listener lost its connection (%s); again in %.1fs", exc, delay,
                            extra={"scope": "approval.dispatch.listen_failed"})
                await asyncio.sleep(delay)
                attempt += 1


class Numbered(Protocol):
    id: int
    occurred_at: datetime


E = TypeVar("E", bound=Numbered)


def publishable(last_id: int, rows: Sequence[E], *, now: datetime, grace: timedelta) -> list[E]:
    """The leading run of `rows` (ordered by id, all after `last_id`) safe to publish now.

    Event ids come from a sequence, and a statement that took id 100 may commit after the one that
    took 101; so the relay stops before a gap while the event after it is young, and skips the gap once
    it is older than the grace period (its statement failed: sequences leave such holes)."""
    ready: list[E] = []
    expected = last_id + 1
    for row in rows:
        if row.id != expected and now - row.occurred_at < grace:
            break
        ready.append(row)
        expected = row.id + 1
    return ready
