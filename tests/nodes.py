"""An in-process RaftNode for the driver's tests: nothing runs its loop unless the test does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from raftd.config import load_cluster
from raftd.core import Message, MsgType
from raftd.kv import Command
from raftd.launcher import free_ports
from raftd.node import RaftNode
from raftd.settings import DEFAULTS, TUNING, Limits, Tuning
from raftd.storage import SqliteStorage

TEST_CLUSTER_ID = "0123456789abcdef"


def follower(
    tmp_path: Path, cluster_id: str = TEST_CLUSTER_ID, limits: Limits = DEFAULTS, tuning: Tuning = TUNING
) -> RaftNode:
    """Node 0 of three, following node 1 (core id 2) after one heartbeat; its messages go nowhere (the
    peers' ports are closed), and it waits 100 s before suspecting the leader.

    cluster_id: the one its directory has recorded (raftd.identity). By default one is, as in a cluster
    past its first election, so a leader has none to propose and the proposals a test counts are its
    own; "" for a new cluster's node."""
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "election_timeout_ms: [100000, 200000]\nnodes:\n"
        + "".join(f"  - {{id: {i}, host: 127.0.0.1, port: {port}}}\n" for i, port in enumerate(free_ports(3)))
    )
    cluster = load_cluster(conf)
    storage = SqliteStorage.open(tmp_path / "data", cluster.name, 0)
    if cluster_id:
        storage.record_cluster_id(cluster_id)
    node = RaftNode(cluster, 0, storage, limits, tuning=tuning)
    node.deliver([Message(MsgType.HEARTBEAT, to=1, frm=2, term=1)])
    node._take_input()
    assert node.leader() is not None and node.leader().id == 1
    return node


def release_node(node: RaftNode) -> None:
    """What stop() releases, for a node whose loop never ran: its threads and its database."""
    node.disk.shutdown()
    node.cpu.shutdown()
    node.storage.close()


async def leader(
    tmp_path: Path, cluster_id: str = TEST_CLUSTER_ID, limits: Limits = DEFAULTS, tuning: Tuning = TUNING
) -> RaftNode:
    """Node 0 of three, elected leader in term 1 by node 1's (core id 2) votes; its messages go nowhere, so
    nothing it proposes commits until a test delivers acknowledgements. Run inside an event loop."""
    node = follower(tmp_path, cluster_id, limits, tuning)
    node.raw.campaign()
    await node._drain_ready()
    term = node.raw.raft.term
    node.deliver([Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=term + 1)])
    node._take_input()
    await node._drain_ready()
    node.deliver([Message(MsgType.VOTE_RESP, to=1, frm=2, term=node.raw.raft.term)])
    node._take_input()
    await node._drain_ready()
    assert node.is_leader()
    return node


@contextlib.asynccontextmanager
async def running(node: RaftNode) -> AsyncIterator[RaftNode]:
    """The node's loop running for the block; stopped, and its database closed, however the block ends."""
    runner = asyncio.create_task(node.run())
    try:
        yield node
    finally:
        await node.stop()
        await runner
        node.storage.close()


def logged(node: RaftNode) -> list[tuple[int, Command]]:
    """The commands in a node's log, with their indexes (empty entries left out)."""
    log = node.raw.raft.log
    return [(e.index, Command.decode(e.data)) for e in log.slice(1, log.last_index() + 1) if e.data]


async def commit_all(node: RaftNode) -> None:
    """On a leader() node: node 2 (core id 3) acknowledges the whole log, so it commits and applies."""
    node._take_input()
    last = node.raw.raft.log.last_index()
    node.deliver([Message(MsgType.APP_RESP, to=1, frm=3, term=node.raw.term, index=last)])
    node._take_input()
    await node._drain_ready()
