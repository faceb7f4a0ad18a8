"""The loops every service shares (pj_common.runtime): periodic steps and serving until a signal."""

import asyncio
import itertools
import logging
import os
import signal
from collections.abc import Callable

import pytest

from pj_common.runtime import Periodic, cancel_and_wait, serve


async def _until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


# ---------------------------------------------------------------- Periodic


async def test_a_failing_step_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError(f"boom {calls}")

    periodic = Periodic(step, 0.01, name="flaky", scope="flaky.failed", logger=logging.getLogger("pj.test"))
    with caplog.at_level(logging.WARNING, logger="pj.test"):
        periodic.start()
        try:
            await _until(lambda: calls >= 4)
        finally:
            await periodic.stop()
    failures = [r for r in caplog.records if r.name == "pj.test"]
    assert [getattr(r, "scope", None) for r in failures] == ["flaky.failed", "flaky.failed"]
    assert all(r.levelno == logging.WARNING and r.exc_info for r in failures)


async def test_the_level_of_a_failure_can_be_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def step() -> None:
        raise RuntimeError("always")

    periodic = Periodic(step, 10, name="sweeper", scope="sweeper.failed", level=logging.ERROR)
    with caplog.at_level(logging.ERROR, logger="pj.runtime"):
        periodic.start()
        await _until(lambda: bool(caplog.records))
        await periodic.stop()
    assert caplog.records[0].levelno == logging.ERROR


async def test_the_interval_separates_steps_that_found_nothing_more() -> None:
    times: list[float] = []
    loop = asyncio.get_running_loop()

    async def step() -> bool:
        times.append(loop.time())
        return False

    periodic = Periodic(step, 0.05, name="quiet", scope="quiet.failed")
    periodic.start()
    await _until(lambda: len(times) >= 3)
    await periodic.stop()
    assert all(later - earlier >= 0.045 for earlier, later in itertools.pairwise(times))


async def test_a_step_with_more_work_waiting_runs_again_at_once() -> None:
    # The event relay: a full batch means more events are waiting, so it does not sleep.
    batches = [True, True, True, False]
    done: list[bool] = []

    async def step() -> bool:
        more = batches[len(done)] if len(done) < len(batches) else False
        done.append(more)
        return more

    periodic = Periodic(step, 60, name="relay", scope="relay.failed")
    periodic.start()
    try:
        await _until(lambda: len(done) >= 4, timeout=1.0)  # an interval of 60 s would never get here
        await asyncio.sleep(0.05)
        assert len(done) == 4, "after a batch that was not full, the step waits for the interval"
    finally:
        await periodic.stop()


async def test_stop_cancels_a_step_in_progress_and_waits_for_it() -> None:
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    periodic = Periodic(step, 0.01, name="slow", scope="slow.failed")
    periodic.start()
    await entered.wait()
    await periodic.stop()
    assert cancelled.is_set()
    assert not periodic.running
    await periodic.stop()  # stopping twice, or a loop never started, is harmless
    await Periodic(step, 1, name="never", scope="never.failed").stop()


async def test_stop_does_not_swallow_the_cancellation_of_its_caller() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(60)  # slow to end: the caller of cancel_and_wait is cancelled meanwhile

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ---------------------------------------------------------------- serve


class FakeService:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.running = asyncio.Event()

    async def start(self) -> None:
        self.events.append("start")
        self.running.set()

    async def stop(self) -> None:
        self.events.append("stop")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_runs_until_a_shutdown_signal_then_stops(sig: signal.Signals,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    service = FakeService()
    with caplog.at_level(logging.INFO, logger="pj.runtime"):
        serving = asyncio.create_task(serve(service, name="fake", log_fields={"concurrency": 3}))
        await service.running.wait()
        await _until(lambda: bool(caplog.records))  # the handlers are in place once it says it started
        assert service.events == ["start"]
        os.kill(os.getpid(), sig)
        await asyncio.wait_for(serving, 2)
    assert service.events == ["start", "stop"]
    started = caplog.records[0]
    assert (started.getMessage(), getattr(started, "scope", None), getattr(started, "concurrency", None)) == (
        "fake started", "service.started", 3)


async def test_serve_adds_extra_signal_handlers_and_removes_them_after(caplog: pytest.LogCaptureFixture) -> None:
    service = FakeService()
    reloads: list[int] = []
    with caplog.at_level(logging.INFO, logger="pj.runtime"):
        serving = asyncio.create_task(serve(service, name="fake", signals={signal.SIGHUP: lambda: reloads.append(1)}))
        await _until(lambda: bool(caplog.records))
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: reloads == [1])
        assert not serving.done(), "SIGHUP must not stop the service"
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, 2)
    assert service.events == ["start", "stop"]
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_serve_stops_the_service_when_it_is_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    service = FakeService()
    with caplog.at_level(logging.INFO, logger="pj.runtime"):
        serving = asyncio.create_task(serve(service, name="fake"))
        await _until(lambda: bool(caplog.records))
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
    assert service.events == ["start", "stop"]
