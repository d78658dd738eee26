"""The cluster id (raftd/identity.py): which traffic a node refuses, and how a node comes to know the id:
proposed by a leader that has none, the first one applied kept for good, or taken with a snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path

from raftd.core import Entry, Message, MsgType, Snapshot, SnapshotMeta
from raftd.errors import NotCapable
from raftd.identity import Identity
from raftd.kv import Command, Image, Op, encode
from raftd.kv.mvcc import PutRequest, encode_request
from raftd.node import RaftNode
from raftd.storage import SqliteStorage

from .nodes import follower, leader, logged, release_node

A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"


def test_ids_decide_when_both_sides_know_one_else_names_do() -> None:
    me = Identity("c-1", A)
    assert me.refuses("c-1", A) is None
    assert me.refuses("c-2", A) is None  # an address changed since one side was created
    assert me.refuses("c-1", B) == f"traffic from cluster id {B} reached cluster id {A}"
    assert me.refuses("c-1", "") is None  # a node that has not applied the id yet
    assert me.refuses("c-2", "") == "traffic for cluster 'c-2' reached cluster 'c-1'"
    assert Identity("c-1").refuses("c-1", B) is None
    assert Identity("c-1").refuses("c-2", B) is not None


def _id_entries(node: RaftNode) -> list[Command]:
    return [c for _, c in logged(node) if c.op is Op.CLUSTER_ID]


def test_a_leader_without_an_id_proposes_one_and_the_first_applied_wins(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path, cluster_id="")
        node._take_input()
        assert _id_entries(node) == [], "not before every peer has shown it can apply one"
        node.peer_speaks(2, 1)
        node._take_input()
        assert _id_entries(node) == [], "node 2 (core id 3) may run the previous release"
        node.peer_speaks(3, 1)
        node.peer_speaks(3, 1)
        node._take_input()
        (proposed,) = _id_entries(node)
        assert node.identity.id == "", "not before it commits"
        # Node 2 acknowledges the leader's whole log: it commits, and applies.
        last = node.raw.raft.log.last_index()
        node.deliver([Message(MsgType.APP_RESP, to=1, frm=2, term=node.raw.raft.term, index=last)])
        node._take_input()
        await node._drain_ready()
        first = proposed.value.decode()
        assert node.identity.id == first and node.storage.cluster_id == first
        # A later leader's redundant proposal (it had not applied the first) changes nothing.
        node.adopt_cluster_id(B)
        assert node.identity.id == first
        name = node.identity.name
        release_node(node)
        with SqliteStorage.open(tmp_path / "data", name, 0) as s:
            assert s.cluster_id == first

    asyncio.run(main())


def test_a_leader_that_knows_the_id_proposes_none(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path)
        node.peer_speaks(2, 1)
        node.peer_speaks(3, 1)
        node._take_input()
        assert _id_entries(node) == []
        release_node(node)

    asyncio.run(main())


def test_a_follower_takes_the_id_from_the_entry(tmp_path: Path) -> None:
    async def main() -> None:
        node = follower(tmp_path, cluster_id="")
        entries = (Entry(1, 1, Command(Op.CLUSTER_ID, b"", A.encode()).encode()),)
        node.deliver([Message(MsgType.APP, to=1, frm=2, term=1, entries=entries, commit=1)])
        node._take_input()
        await node._drain_ready()
        assert node.identity.id == A and node.storage.cluster_id == A
        release_node(node)

    asyncio.run(main())


def test_a_follower_takes_the_id_with_a_snapshot_it_installs(tmp_path: Path) -> None:
    """The entry that named the cluster may be inside the image: the sender's id comes with it."""

    async def main() -> None:
        node = follower(tmp_path, cluster_id="")
        snap = Snapshot(SnapshotMeta(10, 1), encode(Image.of({b"k": b"v"})))
        node.deliver_snapshot(Message(MsgType.SNAP, to=1, frm=2, term=1, snapshot=snap), B)
        node._take_input()
        await node._drain_ready()
        assert node.kv.get(b"k") == b"v"
        assert node.identity.id == B and node.storage.cluster_id == B
        release_node(node)

    asyncio.run(main())


def test_keyspace_writes_wait_until_every_member_can_apply_them(tmp_path: Path) -> None:
    """Op.MVCC entries stop a node of the release before (protocol 4): the leader refuses them before
    proposing (never applied) until every member has shown protocol 5."""

    async def main() -> None:
        node = await leader(tmp_path, cluster_id="")
        write = Command(Op.MVCC, b"", encode_request(PutRequest(b"k", b"v")))
        node.peer_speaks(2, 5)
        node.peer_speaks(3, 4)
        try:
            node.propose_nowait(write)
        except NotCapable as e:
            assert "earlier release" in str(e)
        else:
            raise AssertionError("proposed while a member runs the previous release")
        node.peer_speaks(3, 5)
        node.propose_nowait(write).cancel()
        release_node(node)

    asyncio.run(main())
