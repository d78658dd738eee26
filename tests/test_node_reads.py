"""The driver's side of linearizable reads, in-process: a forwarded ReadIndex that is never answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftd.api import common
from raftd.core import Message, MsgType, ReadState
from raftd.errors import LeaderChanging, Unavailable
from raftd.node import RaftNode
from raftd.settings import TUNING, Tuning
from tests.nodes import follower, release_node, running


def test_reads_whose_forwarded_read_index_is_lost_fail_retryably(tmp_path: Path) -> None:
    async def main() -> None:
        node = follower(tmp_path)
        now = asyncio.get_running_loop().time()
        lost = node.read_barrier_nowait()
        node._take_input()  # forwards a ReadIndex request, which nobody delivers
        answered = node.read_barrier_nowait()
        node.pending.round_started -= TUNING.read_round_hold_s  # the lost round no longer holds reads back
        node._take_input()
        (ctx_answered,) = [c for c in node.pending.read_wait if node.pending.read_wait[c] == [answered]]
        node.pending.confirm([ReadState(0, ctx_answered)], node.kv.applied)
        assert answered.done() and answered.result() == 0

        node._expire_reads(now + TUNING.read_confirm_s - 1)
        assert not lost.done()  # still within its time
        node._expire_reads(now + TUNING.read_confirm_s + 1)
        assert lost.done()
        with pytest.raises(Unavailable, match="not confirmed"):
            lost.result()
        assert not node.pending.read_wait and not node.pending.read_deadlines  # nothing is left behind
        release_node(node)

    asyncio.run(main())


def test_a_settled_read_s_deadline_is_dropped_so_the_loop_does_not_wake_for_it(tmp_path: Path) -> None:
    async def main() -> None:
        node = follower(tmp_path)
        now = asyncio.get_running_loop().time()
        answered = node.read_barrier_nowait()
        node._take_input()
        (ctx,) = node.pending.read_wait
        node._expire_reads(now)
        assert len(node.pending.read_deadlines) == 1  # the control: a live read keeps its deadline
        node.pending.confirm([ReadState(0, ctx)], node.kv.applied)
        assert answered.done()
        node._expire_reads(now)  # long before the deadline
        assert not node.pending.read_deadlines
        release_node(node)

    asyncio.run(main())


def test_the_driver_loop_wakes_to_fail_an_unconfirmed_read(tmp_path: Path) -> None:
    """Nothing else wakes this follower for 100 s: the read's own deadline must."""

    async def main() -> None:
        node = follower(tmp_path, tuning=Tuning(read_confirm_s=0.3))
        async with running(node):
            await asyncio.sleep(0.2)  # lets the loop take in the leader it learned (a wait before acting)
            read = node.read_barrier_nowait()
            done, _ = await asyncio.wait({read}, timeout=5)
            assert read in done, "the read was never failed"
            with pytest.raises(Unavailable, match="not confirmed"):
                read.result()

    asyncio.run(main())


def test_reads_that_arrive_during_a_round_share_the_next_one(tmp_path: Path) -> None:
    """etcd's read loop: one ReadIndex round at a time, so concurrent reads cost one round, not one each
    (64 unary readers made a round per read and ran at 1,400 reads/s)."""

    async def main() -> None:
        node = follower(tmp_path)
        first = node.read_barrier_nowait()
        node._take_input()
        (ctx,) = node.pending.read_wait
        later = [node.read_barrier_nowait() for _ in range(3)]
        node._take_input()
        assert list(node.pending.read_wait) == [ctx] and node.pending.reads == later, (
            "no second round while one is young"
        )
        node.pending.confirm([ReadState(0, ctx)], node.kv.applied)
        assert first.done()
        node.wake.clear()
        await node._drain_ready()
        assert node.wake.is_set(), "the loop must come back to start the held reads' round"
        node._take_input()
        assert len(node.pending.read_wait) == 1 and next(iter(node.pending.read_wait.values())) == later
        release_node(node)

    asyncio.run(main())


def test_a_round_that_is_not_answered_in_time_stops_holding_reads_back(tmp_path: Path) -> None:
    """A lost ReadIndex request must not stall the reads behind it until read_confirm_s: the loop wakes by
    itself once the round is read_round_hold_s old and starts the next one."""

    async def main() -> None:
        node = follower(tmp_path, tuning=Tuning(read_round_hold_s=0.2))
        async with running(node):
            await asyncio.sleep(0.1)
            node.read_barrier_nowait()  # its round is lost: nobody answers
            while not node.pending.read_wait:
                await asyncio.sleep(0.01)
            node.read_barrier_nowait()
            await asyncio.sleep(0.05)
            assert len(node.pending.read_wait) == 1 and node.pending.reads, (
                "held while the first round is young"
            )
            await asyncio.sleep(0.4)
            assert len(node.pending.read_wait) == 2 and not node.pending.reads, (
                "a round of its own once the first is old"
            )

    asyncio.run(main())


def _lose_the_leader(node: RaftNode) -> None:
    """The follower hears nothing for an election timeout and campaigns: it knows no leader until one is
    elected (its pre-vote requests go nowhere)."""
    for _ in range(2 * node.config.max_election_tick):
        node.raw.tick()
    assert node.leader() is None


async def _hear_leader(node: RaftNode) -> None:
    node.deliver([Message(MsgType.HEARTBEAT, to=1, frm=3, term=node.raw.raft.term)])
    node._take_input()
    await node._drain_ready()
    assert node.leader() is not None and node.leader().id == 2


async def _confirm_round(node: RaftNode) -> None:
    """Answer the ReadIndex round that the node forwarded, once it has started one."""
    for _ in range(100):
        await asyncio.sleep(0)
        node._take_input()
        if node.pending.read_wait:
            break
    (ctx,) = node.pending.read_wait
    node.pending.confirm([ReadState(0, ctx)], node.kv.applied)


def test_a_read_waits_out_an_election_instead_of_failing(tmp_path: Path) -> None:
    """A unary Get during an election failed at once with "no leader known": clients that do not retry
    (any generated from proto/) saw errors whenever a leader changed (2,000 connections at once cost one)."""

    async def main() -> None:
        node = follower(tmp_path)
        _lose_the_leader(node)
        read = asyncio.ensure_future(common.barrier(node, 10))
        await asyncio.sleep(0.05)
        assert not read.done(), "the read waits for a leader"
        await _hear_leader(node)
        await _confirm_round(node)
        await asyncio.wait_for(read, 5)
        release_node(node)

    asyncio.run(main())


def test_a_read_cut_short_by_a_change_of_leader_is_asked_again(tmp_path: Path) -> None:
    async def main() -> None:
        node = follower(tmp_path)
        read = asyncio.ensure_future(common.barrier(node, 10))
        await asyncio.sleep(0)
        node._take_input()
        (old,) = node.pending.read_wait
        node.deliver([Message(MsgType.HEARTBEAT, to=1, frm=3, term=node.raw.raft.term + 1)])
        node._take_input()
        await node._drain_ready()  # node 2 leads now: the round asked of node 1 is void
        await asyncio.sleep(0)
        assert not read.done(), "the read is asked again of the new leader, not failed"
        node.pending.round_started -= TUNING.read_round_hold_s
        await _confirm_round(node)
        assert old not in node.pending.read_wait
        await asyncio.wait_for(read, 5)
        release_node(node)

    asyncio.run(main())


def test_a_read_gives_up_when_no_leader_is_elected_in_time(tmp_path: Path) -> None:
    """Bounded (two elections' worth, RaftNode.leader_wait_s): a node cut off from a quorum says so."""

    async def main() -> None:
        node = follower(tmp_path)
        node.leader_wait_s = 0.05
        _lose_the_leader(node)
        with pytest.raises(LeaderChanging, match="no leader known"):
            await asyncio.wait_for(common.barrier(node, 10), 5)
        release_node(node)

    asyncio.run(main())
