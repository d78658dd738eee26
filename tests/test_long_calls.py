"""Long-lived calls end quietly at server stop, including those whose handler starts during the stop."""

from __future__ import annotations

import asyncio

from raftd.api.common import LongCalls


async def _handler(calls: LongCalls, progress: list[str], gate: asyncio.Event) -> str:
    async with calls.track():
        progress.append("started")
        await gate.wait()
        progress.append("went on")
    return "ended"


def test_close_ends_running_handlers_and_later_ones_at_their_first_wait() -> None:
    async def main() -> None:
        calls = LongCalls()
        open_gate = asyncio.Event()
        open_gate.set()
        before: list[str] = []
        assert await _handler(calls, before, open_gate) == "ended"
        assert before == ["started", "went on"]  # the control: an open gate lets a handler go on

        waiting: list[str] = []
        running = asyncio.create_task(_handler(calls, waiting, asyncio.Event()))
        await asyncio.sleep(0)
        calls.close()
        assert await running == "ended"  # ended, not cancelled: gRPC sees a normal end
        assert waiting == ["started"]
        assert running.cancelling() == 0  # and no cancellation is left pending on the task

        # A handler starting after close() (a call accepted just before the stop) ends at its first wait
        # instead of waiting there until gRPC cancels it; without that, this would time out.
        late: list[str] = []
        task = asyncio.create_task(_handler(calls, late, asyncio.Event()))
        done, _ = await asyncio.wait({task}, timeout=5)
        task.cancel()  # (it is done unless the rule is broken)
        assert task in done and task.result() == "ended"
        assert late == ["started"]
        assert task.cancelling() == 0

    asyncio.run(main())
