"""Large writes keep the cluster's timing (issue 19): a burst of 1 MiB puts is proposed a few MiB per turn
of the loop, and a leader busy saving them keeps counting time for its heartbeats."""

from __future__ import annotations

import asyncio
from pathlib import Path

from raftd.core import MsgType, Role
from raftd.kv import Command, Op
from raftd.node import ticks_to_count
from raftd.settings import TUNING

from .core.network import Network
from .nodes import leader, release_node

MIB = 1024 * 1024


def test_a_busy_node_counts_one_tick_for_its_busy_time() -> None:
    # 30 ticks owed after a turn of the loop that was busy for 29 of them and waited for 1; 10 until due.
    assert ticks_to_count(owed=30, due=10, waited=1) == 2
    # Waiting counts in full, and nobody's count passes the tick that is due.
    assert ticks_to_count(owed=5, due=10, waited=5) == 5
    assert ticks_to_count(owed=30, due=10, waited=30) == 10


def test_a_busy_leader_still_sends_its_heartbeats_but_does_not_step_down() -> None:
    """Time the election clock does not count runs the leader's heartbeat clock alone: its followers get
    their heartbeats, and check-quorum does not fire before the leader has read their answers."""
    net = Network()
    net.elect(1)
    net.tick_all(1)
    raft = net.nodes[1].raft
    net.sent.clear()
    elapsed = raft.election_elapsed
    net.nodes[1].tick_heartbeat(100)  # far beyond an election timeout
    net.process(1)
    beats = [m for m in net.sent if m.type is MsgType.HEARTBEAT]
    assert sorted(m.to for m in beats) == [2, 3], "one heartbeat to each follower"
    assert raft.role is Role.LEADER and raft.election_elapsed == elapsed
    net.nodes[2].tick_heartbeat(100)  # a follower's: nothing
    assert net.role(2) is Role.FOLLOWER


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
        per_turn = TUNING.proposal_batch_bytes // (MIB + 64)
        assert node.raw.raft.log.last_index() - first + 1 == per_turn
        assert len(node.pending.proposals) == 20 - per_turn and node.wake.is_set(), "the rest go next turn"
        while node.pending.proposals:
            node._take_input()
        assert node.raw.raft.log.last_index() - first + 1 == 20, "all of them, in order"
        release_node(node)

    asyncio.run(main())
