"""Concurrent unary callers share proposals, ReadIndex rounds and saves (RaftNode's GATHER_* and _busy);
a lone caller never waits for company."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import pytest

from raftd.kv import Command, Op
from raftd.node import RaftNode
from raftd.pb import kv_pb2 as pb
from raftd.pipe import Pipe
from raftd.settings import Tuning
from tests.nodes import follower, leader, release_node, running
from tests.test_pipe import _AnsweringCall, _FakeStub

# Windows wide enough that a loaded machine's scheduling cannot end them early in these tests.
SLOW = Tuning(gather_quiet_s=0.05, gather_max_s=0.2)


def calls(node: RaftNode, n: int, last_at: float, peak: int | None = None) -> None:
    """n unary calls in progress, the newest at last_at, out of a peak of `peak` lately (by default one
    more than n: another caller may yet come)."""
    node.unary_calls = n
    node.last_call_at = last_at
    node.calls_peak = n + 1 if peak is None else peak
    node.peak_at = last_at


def test_a_lone_caller_s_write_is_proposed_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path, tuning=SLOW)
        calls(node, 1, asyncio.get_running_loop().time())
        node.propose_nowait(Command(Op.PUT, b"k", b"v"))
        node._take_input()
        assert not node.pending.proposals and node.pending.waiting
        release_node(node)

    asyncio.run(main())


def test_writes_wait_while_calls_keep_coming_then_go_together(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path, tuning=SLOW)
        loop = asyncio.get_running_loop()
        calls(node, 3, loop.time())
        first = node.propose_nowait(Command(Op.PUT, b"a", b"1"))
        node._take_input()
        assert node.pending.proposals, "held: another call came just now"
        await asyncio.sleep(SLOW.gather_quiet_s / 5)
        calls(node, 3, loop.time())
        second = node.propose_nowait(Command(Op.PUT, b"b", b"2"))
        node._take_input()
        assert len(node.pending.proposals) == 2, "still held: calls keep coming"
        await asyncio.sleep(SLOW.gather_quiet_s * 1.2)
        node._take_input()
        assert not node.pending.proposals and len(node.pending.waiting) == 2, (
            "no call for gather_quiet_s: both proposed"
        )
        assert not first.done() and not second.done()
        release_node(node)

    asyncio.run(main())


def test_gathering_ends_after_gather_max_however_busy(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path, tuning=SLOW)
        loop = asyncio.get_running_loop()
        node.propose_nowait(Command(Op.PUT, b"a", b"1"))
        start = node.pending.proposals_since
        calls(node, 64, start + SLOW.gather_max_s)  # calls keep coming
        assert node.gather_delay(start) > 0
        while loop.time() < start + SLOW.gather_max_s:
            await asyncio.sleep(0.001)
            node.last_call_at = loop.time()
        assert node.gather_delay(start) == 0
        node._take_input()
        assert not node.pending.proposals
        release_node(node)

    asyncio.run(main())


def test_gathering_ends_once_every_caller_seen_lately_has_come(tmp_path: Path) -> None:
    """With as many calls in progress as at the peak, nobody is left to wait for: 16 closed-loop clients
    lost a tenth of their rate waiting out the quiet after the last of them had come."""

    async def main() -> None:
        node = await leader(tmp_path, tuning=SLOW)
        now = asyncio.get_running_loop().time()
        calls(node, 15, now, peak=16)
        node.propose_nowait(Command(Op.PUT, b"a", b"1"))
        node._take_input()
        assert node.pending.proposals, "held: the 16th caller has not come"
        node.call_started()
        assert node.unary_calls == node.calls_peak == 16
        node.wake.clear()
        assert node.gather_delay(node.pending.proposals_since) == 0
        node.propose_nowait(Command(Op.PUT, b"b", b"2"))
        assert node.wake.is_set(), "the last caller wakes the loop: its batch is due"
        node._take_input()
        assert not node.pending.proposals and len(node.pending.waiting) == 2
        release_node(node)

    asyncio.run(main())


def test_the_peak_is_forgotten_after_its_window(tmp_path: Path) -> None:
    """Callers that left must not hold gatherings to the quiet for good: the peak is the lately seen one."""

    async def main() -> None:
        node = await leader(tmp_path, tuning=dataclasses.replace(SLOW, gather_peak_window_s=0.05))
        node.call_started()
        node.call_started()
        node.call_started()
        assert node.calls_peak == 3
        node.call_ended()
        node.call_ended()
        node.call_ended()
        node.call_started()
        node.call_started()
        assert node.calls_peak == 3 and node.gather_delay(asyncio.get_running_loop().time()) > 0
        await asyncio.sleep(0.06)
        node.call_ended()
        node.call_started()
        assert node.calls_peak == 2, "a call after the window sets the peak anew"
        assert node.gather_delay(asyncio.get_running_loop().time()) == 0
        release_node(node)

    asyncio.run(main())


def test_the_loop_wakes_by_itself_when_gathered_reads_are_due(tmp_path: Path) -> None:
    """Held reads must not wait for a heartbeat to wake the loop (this follower hears none for 100 s)."""

    async def main() -> None:
        node = follower(tmp_path, tuning=SLOW)
        async with running(node):
            await asyncio.sleep(0.05)
            calls(node, 2, asyncio.get_running_loop().time())
            node.read_barrier_nowait()
            await asyncio.sleep(SLOW.gather_quiet_s / 5)
            assert node.pending.reads and not node.pending.read_wait, "held while calls come"
            await asyncio.sleep(SLOW.gather_quiet_s * 2)
            assert not node.pending.reads and node.pending.read_wait, (
                "its round started without any other wake-up"
            )

    asyncio.run(main())


@pytest.mark.parametrize(("callers", "on_loop"), [(1, True), (2, False)])
def test_readies_are_saved_off_the_loop_while_several_callers_wait(
    tmp_path: Path, callers: int, on_loop: bool
) -> None:
    """grpc.aio accepts one call per turn of the loop: a save that blocks the loop caps new calls at one
    per fsync. A lone caller keeps the cheaper save on the loop."""

    async def main() -> None:
        node = await leader(tmp_path, tuning=SLOW)
        threads: list[bool] = []
        save = node.storage.save

        def recording_save(*args: object) -> None:
            threads.append(threading.current_thread() is threading.main_thread())
            save(*args)  # type: ignore[arg-type]

        node.storage.save = recording_save  # type: ignore[method-assign]
        calls(node, callers, 0.0)
        node.propose_nowait(Command(Op.PUT, b"k", b"v"))
        node._take_input()
        await node._drain_ready()
        assert threads == [on_loop]
        release_node(node)

    asyncio.run(main())


def test_a_forwarding_pipe_holds_its_batch_while_the_node_says_to_gather() -> None:
    async def main() -> None:
        call = _AnsweringCall(pb.Error())
        release = asyncio.Event()
        pipe = Pipe(_FakeStub(call), lambda since: 0.0 if release.is_set() else 0.01)  # type: ignore[arg-type]
        tasks = [asyncio.ensure_future(pipe.request(pb.Request(), timeout=5)) for _ in range(2)]
        await asyncio.sleep(0.05)
        tasks.append(asyncio.ensure_future(pipe.request(pb.Request(), timeout=5)))
        await asyncio.sleep(0.02)
        assert call.sent == [], "held"
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert call.sent == [[1, 2, 3]], "the three requests left as one batch"
        await pipe.close()

    asyncio.run(main())


def test_reads_gathering_behind_an_old_unanswered_round_do_not_spin_the_loop(tmp_path: Path) -> None:
    """The alarm for a round past Tuning.read_round_hold_s was set in the past while reads gathered: the loop
    woke on every turn until the gathering ended (review finding)."""

    async def main() -> None:
        node = follower(tmp_path, tuning=dataclasses.replace(SLOW, read_round_hold_s=0.01))
        turns = 0
        take = node._take_input

        def counting_take() -> None:
            nonlocal turns
            turns += 1
            take()

        node._take_input = counting_take  # type: ignore[method-assign]
        async with running(node):
            await asyncio.sleep(0.05)
            node.read_barrier_nowait()  # its round is lost: nobody answers
            await asyncio.sleep(0.03)  # ... and is now older than read_round_hold_s
            calls(node, 2, asyncio.get_running_loop().time())
            node.read_barrier_nowait()  # gathers for gather_quiet_s (50 ms here)
            turns = 0
            await asyncio.sleep(0.03)
            assert turns < 10, f"the loop turned {turns} times in 30 ms while the read gathered"

    asyncio.run(main())
