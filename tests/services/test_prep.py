"""The preparation pool: its own threads, a bounded line (429 beyond), and work whose client
left before it started is never done."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.errors import QueueFullError
from server.services.prep import PrepExecutor


def test_a_full_line_is_refused_and_an_abandoned_wait_never_runs() -> None:
    async def scenario() -> None:
        prep = PrepExecutor(threads=1, max_waiting=1)
        release = threading.Event()
        ran: list[str] = []

        def work(name: str) -> str:
            release.wait(10)
            ran.append(name)
            return name

        running = asyncio.create_task(prep.run(work, "running"))
        waiting = asyncio.create_task(prep.run(work, "waiting"))
        await asyncio.sleep(0.05)
        assert prep.pending == 2
        with pytest.raises(QueueFullError):
            await prep.run(work, "refused")
        waiting.cancel()  # its client left while it waited
        await asyncio.sleep(0.05)
        assert prep.pending == 1
        release.set()
        assert await running == "running"
        await asyncio.sleep(0.05)
        assert ran == ["running"]
        assert await prep.run(work, "later") == "later"
        prep.close()

    asyncio.run(scenario())


def test_errors_in_the_work_reach_the_caller() -> None:
    async def scenario() -> None:
        prep = PrepExecutor(threads=1, max_waiting=1)

        def fails() -> None:
            raise ValueError("bad schema")

        with pytest.raises(ValueError, match="bad schema"):
            await prep.run(fails)
        assert prep.pending == 0
        prep.close()

    asyncio.run(scenario())


def test_small_work_runs_on_the_event_loop_and_the_rest_on_a_preparation_thread() -> None:
    async def scenario() -> tuple[str, str]:
        prep = PrepExecutor(threads=1, max_waiting=1)
        try:
            small = await prep.run_unless_small(True, lambda: threading.current_thread().name)
            large = await prep.run_unless_small(False, lambda: threading.current_thread().name)
            return small, large
        finally:
            prep.close()

    small, large = asyncio.run(scenario())
    assert small == threading.current_thread().name  # asyncio.run's loop runs on this thread
    assert large.startswith("prep")
