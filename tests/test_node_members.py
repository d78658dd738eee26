"""The driver's side of the membership record (issue 20): the core recognises Op.MEMBER entries as
membership changes, a restart takes the membership from the snapshot image's record, snapshots carry it
between nodes, and backups leave it behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftd.core import (
    ConfChange,
    ConfChangeType,
    ConfState,
    HardState,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)
from raftd.kv import Command, KVStore, Op, encode
from raftd.kv.image import decode
from raftd.kv.members import Change, Member, MemberChange
from raftd.node import RaftNode, conf_change_of, conf_of
from raftd.pb import peer_pb2 as pb
from raftd.storage import SqliteStorage
from raftd.transport.codec import message_from_pb, message_to_pb
from tests.nodes import commit_all, follower, leader, release_node


def test_the_core_sees_membership_entries_and_nothing_else_as_changes() -> None:
    add = MemberChange(Change.ADD_LEARNER, 3, "h:4", "inc").command().encode()
    assert conf_change_of(add) == ConfChange(ConfChangeType.ADD_LEARNER, 4), "core ids are config ids + 1"
    promote = MemberChange(Change.ADD_VOTER, 3).command().encode()
    assert conf_change_of(promote) == ConfChange(ConfChangeType.ADD_VOTER, 4)
    assert conf_change_of(MemberChange(Change.REMOVE, 0).command().encode()) == ConfChange(
        ConfChangeType.REMOVE, 1
    )
    assert conf_change_of(MemberChange(Change.UPDATE, 0, "h:9").command().encode()) is None
    assert conf_change_of(MemberChange(Change.BOOTSTRAP).command().encode()) is None
    assert conf_change_of(Command(Op.PUT, b"k", b"v").encode()) is None
    assert conf_change_of(b"") is None
    assert conf_change_of(Command(Op.MEMBER, b"", b"not json").encode()) is None


def test_a_leader_proposes_a_member_entry_and_takes_the_change_when_it_appends_it(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path)
        await commit_all(node)  # an entry of its term committed: changes may be proposed
        entry = MemberChange(Change.ADD_LEARNER, 3, "h:4", "inc").command().encode()
        node.raw.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4), entry)
        await node._drain_ready()
        assert node.raw.conf_state() == ConfState((1, 2, 3), (4,))
        await commit_all(node)
        assert node.kv.members == {}, "no bootstrap record: the change alone is recorded"
        release_node(node)

    asyncio.run(main())


def test_a_restart_takes_the_membership_from_the_snapshot_s_record(tmp_path: Path) -> None:
    """The cluster map lists nodes 0-2; the record says node 2 left and node 3 joined as a learner."""
    node = follower(tmp_path)
    name = node.storage.cluster_name
    release_node(node)
    kv = KVStore()
    record = ((0, Member("h:1")), (1, Member("h:2")), (3, Member("h:4", learner=True)))
    kv.apply(1, MemberChange(Change.BOOTSTRAP, members=record).command())
    kv.apply(2, Command(Op.PUT, b"k", b"v"))
    again = SqliteStorage.open(tmp_path / "data", name, 0)
    again.save(HardState(1, 0, 2), [], Snapshot(SnapshotMeta(2, 1), encode(kv.image())))
    again.close()
    node = RaftNode(node.cluster, 0, SqliteStorage.open(tmp_path / "data", name, 0))
    assert node.raw.conf_state() == ConfState((1, 2), (4,))
    assert node.kv.members == dict(record)
    release_node(node)


def test_conf_of_an_empty_record_leaves_the_map_standing() -> None:
    assert conf_of({}) is None
    assert conf_of({0: Member("a"), 5: Member("b", True)}) == ConfState((1,), (6,))


def test_a_snapshot_message_carries_its_membership() -> None:
    for conf in [None, ConfState((1, 2, 3), (7,)), ConfState((2,))]:
        m = Message(MsgType.SNAP, to=2, frm=1, term=3, snapshot=Snapshot(SnapshotMeta(10, 3, conf), b"img"))
        back = message_from_pb(pb.Message.FromString(message_to_pb(m).SerializeToString()))
        assert back.snapshot is not None and back.snapshot.meta == SnapshotMeta(10, 3, conf)


def test_a_backup_leaves_the_membership_record_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup seeds a new cluster, whose membership is its own map's (etcd's snapshot restore likewise)."""

    async def main() -> None:
        node = await leader(tmp_path)

        async def confirmed() -> int:
            return node.kv.applied  # the read point, as a confirmed ReadIndex round gives it

        await commit_all(node)
        index = node.raw.raft.log.last_index()
        node.kv.apply(index, MemberChange(Change.BOOTSTRAP, members=((0, Member("h:1")),)).command())
        node.kv.apply(index, Command(Op.PUT, b"k", b"v"))
        monkeypatch.setattr(node, "read_barrier", confirmed)
        _, data = await node.backup()
        image = decode(data)
        assert image.members == {} and dict(image.items()) == {b"k": b"v"}
        assert node.kv.members, "the node's own record stays"
        release_node(node)

    asyncio.run(main())
