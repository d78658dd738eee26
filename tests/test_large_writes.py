"""Large writes keep the cluster's timing (issue 19): a burst of 1 MiB puts is proposed a few MiB per turn
of the loop, and a leader busy saving them keeps counting time for its heartbeats."""

from __future__ import annotations

import asyncio
from pathlib import Path

from raftd import node as node_module
from raftd.core import Role
from raftd.kv import Command, Op
from raftd.node import ticks_to_count

from .nodes import leader, release_node

MIB = 1024 * 1024


def test_a_busy_follower_counts_one_tick_but_a_busy_leader_counts_them_all() -> None:
    # 30 ticks owed after a turn of the loop that was busy for 29 of them and waited for 1; 10 until due.
    assert ticks_to_count(owed=30, due=10, waited=1, role=Role.FOLLOWER) == 2
    assert ticks_to_count(owed=30, due=10, waited=1, role=Role.CANDIDATE) == 2
    assert ticks_to_count(owed=30, due=10, waited=1, role=Role.LEADER) == 10, "the heartbeat is due now"
    # Waiting counts in full for everyone, and nobody's count passes the tick that is due.
    assert ticks_to_count(owed=5, due=10, waited=5, role=Role.FOLLOWER) == 5
    assert ticks_to_count(owed=30, due=10, waited=30, role=Role.FOLLOWER) == 10


def test_a_burst_of_large_proposals_is_taken_a_few_mib_per_turn(tmp_path: Path) -> None:
    """80 proposals of 1 MiB taken at once made one Ready, and one save, of 80 MiB; the leader ticked (and
    so sent heartbeats) only after it, by when the followers had started an election."""

    async def main() -> None:
        node = await leader(tmp_path)
        first = node.raw.raft.log.last_index() + 1
        for k in range(20):
            node.propose_nowait(Command(Op.PUT, f"k{k}".encode(), b"v" * MIB))
        node.wake.clear()
        node._take_input()
        per_turn = node_module.PROPOSAL_BATCH_BYTES // (MIB + 64)
        assert node.raw.raft.log.last_index() - first + 1 == per_turn
        assert len(node.proposals) == 20 - per_turn and node.wake.is_set(), "the rest go next turn"
        while node.proposals:
            node._take_input()
        assert node.raw.raft.log.last_index() - first + 1 == 20, "all of them, in order"
        release_node(node)

    asyncio.run(main())
