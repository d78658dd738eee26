"""The driver's side of linearizable reads, in-process: a forwarded ReadIndex that is never answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftd import node as node_module
from raftd.config import load_cluster
from raftd.core import Message, MsgType, ReadState
from raftd.node import DEFAULT_SNAPSHOT_ENTRIES, RaftNode, Unavailable
from raftd.storage import SqliteStorage


def _follower(tmp_path: Path) -> RaftNode:
    """Node 0 of three, following node 1 (core id 2) after one heartbeat; its messages go nowhere."""
    conf = tmp_path / "c.conf"
    conf.write_text("0 127.0.0.1 1\n1 127.0.0.1 2\n2 127.0.0.1 3\n")
    cluster = load_cluster(conf)
    node = RaftNode(
        cluster, 0, SqliteStorage.open(tmp_path / "data", cluster.name, 0), DEFAULT_SNAPSHOT_ENTRIES
    )
    node.deliver([Message(MsgType.HEARTBEAT, to=1, frm=2, term=1)])
    node._take_input()
    assert node.leader() is not None and node.leader().id == 1
    return node


def test_reads_whose_forwarded_read_index_is_lost_fail_retryably(tmp_path: Path) -> None:
    async def main() -> None:
        node = _follower(tmp_path)
        now = asyncio.get_running_loop().time()
        lost = node.read_barrier_nowait()
        node._take_input()  # forwards a ReadIndex request, which nobody delivers
        answered = node.read_barrier_nowait()
        node._take_input()
        (ctx_answered,) = [c for c in node.read_wait if node.read_wait[c] == [answered]]
        node._confirm_reads([ReadState(0, ctx_answered)])
        assert answered.done() and answered.result() == 0

        node._expire_reads(now + node_module.READ_CONFIRM_S - 1)
        assert not lost.done()  # still within its time
        node._expire_reads(now + node_module.READ_CONFIRM_S + 1)
        assert lost.done()
        with pytest.raises(Unavailable, match="not confirmed"):
            lost.result()
        assert not node.read_wait and not node.read_deadlines  # nothing is left behind
        node.storage.close()

    asyncio.run(main())
