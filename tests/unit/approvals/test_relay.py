"""The relays' wake-up loop: woken at once after a commit, polling otherwise, no wake-up lost."""

import asyncio

from pj_common.runtime import Periodic


class Calls:
    """When a loop's step ran; `reach` waits until it ran `n` times."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._changed = asyncio.Event()

    def record(self) -> None:
        self.times.append(asyncio.get_running_loop().time())
        self._changed.set()

    async def reach(self, n: int, timeout: float) -> None:
        async def wait() -> None:
            while len(self.times) < n:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), timeout)


async def test_a_wake_runs_the_step_at_once_and_the_interval_runs_it_anyway() -> None:
    calls = Calls()

    async def step() -> bool:
        calls.record()
        return False

    relay = Periodic(step, 1.0, name="test-relay", scope="test.failed")
    relay.start()
    try:
        await calls.reach(1, 0.5)  # the first pass runs at start
        relay.wake()
        await calls.reach(2, 0.5)  # woken: at once, not after the interval
        await calls.reach(3, 2)  # nobody woke it: the poll
        assert calls.times[2] - calls.times[1] >= 0.9
    finally:
        await relay.stop()


async def test_a_wake_during_a_step_is_not_lost() -> None:
    calls = Calls()
    inside = asyncio.Event()
    release = asyncio.Event()

    async def step() -> bool:
        calls.record()
        if len(calls.times) == 2:
            inside.set()
            await release.wait()
        return False

    relay = Periodic(step, 60, name="test-relay", scope="test.failed")
    relay.start()
    try:
        await calls.reach(1, 0.5)
        relay.wake()
        await asyncio.wait_for(inside.wait(), 1)
        relay.wake()  # a commit while the relay is busy publishing
        release.set()
        await calls.reach(3, 0.5)  # the interval is a minute: only that wake-up can do it
    finally:
        await relay.stop()


async def test_a_full_batch_runs_again_at_once_and_a_failure_waits_for_the_interval() -> None:
    results: list[bool | Exception] = [True, True, RuntimeError("database away"), False]
    calls = Calls()

    async def step() -> bool:
        calls.record()
        result = results.pop(0) if results else False
        if isinstance(result, Exception):
            raise result
        return result

    relay = Periodic(step, 1.0, name="test-relay", scope="test.failed")
    relay.start()
    try:
        await calls.reach(3, 0.5)  # two full batches back to back, then the failure
        await calls.reach(4, 2)
        assert calls.times[3] - calls.times[2] >= 0.9  # after a failure, the interval
    finally:
        await relay.stop()
