"""Snapshots with real processes: compaction, restart from a snapshot, catch-up by InstallSnapshot."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from raftd.config import load_cluster
from raftd.core import Message, MsgType, Snapshot, SnapshotMeta
from raftd.kv import Image, encode
from raftd.pb import kv_pb2, peer_pb2, peer_pb2_grpc
from raftd.transport.codec import message_to_pb

from .cluster import Cluster

EVERY = 40  # --snapshot-entries: small, so a few hundred writes compact several times


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, 3)
    try:
        for i in range(3):
            c.start(i, "--snapshot-entries", str(EVERY))
        c.wait_leader()
        yield c
    finally:
        c.close()


def _write(c: Cluster, n: int, prefix: str = "k") -> dict[str, str]:
    """n writes over a small key space, so later ones overwrite earlier ones."""
    leader = c.wait_leader()
    expected = {}
    for i in range(n):
        key, value = f"{prefix}{i % 25}", f"v{i}"
        c.put(leader, key, value)
        expected[key] = value
    return expected


def _stored(c: Cluster, i: int) -> tuple[int, int | None]:
    """(entries in the log table, snapshot index) straight from node i's database."""
    db = sqlite3.connect(f"file:{c.data_dir(i) / 'raft.db'}?mode=ro", uri=True)
    try:
        entries = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        row = db.execute("SELECT idx FROM snapshot").fetchone()
    finally:
        db.close()
    return entries, row[0] if row else None


def _wait_state(c: Cluster, i: int, expected: dict[str, str]) -> None:
    for key, value in expected.items():
        c.wait_value(i, key, value, local=True)


def _restart(c: Cluster, i: int) -> None:
    if c.procs.get(i) is not None and c.procs[i].poll() is None:
        c.kill(i)
    c.start(i, "--snapshot-entries", str(EVERY))


def test_log_is_compacted_and_a_restart_loads_the_snapshot(cluster: Cluster) -> None:
    expected = _write(cluster, 300)
    for i in range(3):
        _wait_state(cluster, i, expected)
    for i in range(3):
        entries, snap = _stored(cluster, i)
        assert snap is not None and snap >= 300 - 2 * EVERY, (i, snap)
        assert entries <= 2 * EVERY, f"node {i} keeps {entries} log entries despite compaction"
    for i in range(3):
        cluster.kill(i)
    for i in range(3):
        _restart(cluster, i)
    leader = cluster.wait_leader()
    for key, value in expected.items():
        assert cluster.get(leader, key).value == value.encode()
    for i in range(3):
        _wait_state(cluster, i, expected)


def test_lagging_follower_catches_up_by_snapshot(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    lagging = cluster.followers(leader)[0]
    cluster.kill(lagging)
    expected = _write(cluster, 5 * EVERY)
    mark = cluster.log_size(lagging)
    _restart(cluster, lagging)
    _wait_state(cluster, lagging, expected)
    assert "Installed a snapshot at index" in cluster.log(lagging, mark), cluster.dump_logs()


def test_a_wiped_node_replaced_under_a_new_id_catches_up_by_snapshot(cluster: Cluster) -> None:
    """A wiped node is not started again under its old id (its peers refuse it: test_membership.py): it is
    replaced, and the new member, a learner, catches up by InstallSnapshot, then votes."""
    leader = cluster.wait_leader()
    expected = _write(cluster, 3 * EVERY)
    wiped = cluster.followers(leader)[0]
    cluster.kill(wiped)
    shutil.rmtree(cluster.data_dir(wiped))
    expected |= _write(cluster, 2 * EVERY, prefix="after")
    admin = cluster.admin(leader)
    admin.MemberRemove(kv_pb2.MemberRemoveRequest(id=wiped), timeout=10)
    # The new member listens where the wiped one did, so the cluster's helpers reach it by that index.
    added = admin.MemberAdd(kv_pb2.MemberAddRequest(address=cluster.address(wiped)), timeout=10).member
    assert added.learner and added.id == 3
    cluster.join(
        added.id, [cluster.address(i) for i in range(3) if i != wiped], "--snapshot-entries", str(EVERY)
    )
    _wait_state(cluster, wiped, expected)
    assert "Installed a snapshot at index" in cluster.log(added.id), cluster.dump_logs()
    admin.MemberPromote(kv_pb2.MemberPromoteRequest(id=added.id), timeout=10)
    # And it serves linearizable reads as a voter.
    assert cluster.get(wiped, "after0").found


def _install(c: Cluster, i: int, chunks: list[peer_pb2.SnapshotChunk]) -> grpc.RpcError:
    stub = peer_pb2_grpc.RaftPeerStub(c.channel(i))
    with pytest.raises(grpc.RpcError) as err:
        stub.InstallSnapshot(iter(chunks), timeout=5)
    return err.value


def test_install_snapshot_refuses_partial_corrupt_or_foreign_images(cluster: Cluster) -> None:
    """A transfer cut short, or an image that fails its checksum, never reaches the node's state."""
    leader = cluster.wait_leader()
    expected = _write(cluster, 10)
    follower = cluster.followers(leader)[0]
    name = cluster_name(cluster)
    image = encode(Image.of({b"evil": b"x"}))
    header = message_to_pb(
        Message(
            MsgType.SNAP, to=follower + 1, frm=leader + 1, term=99, snapshot=Snapshot(SnapshotMeta(10**6, 99))
        )
    )
    partial = [
        peer_pb2.SnapshotChunk(cluster=name, header=header, total_size=len(image)),
        peer_pb2.SnapshotChunk(data=image[:5]),
    ]
    err = _install(cluster, follower, partial)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "incomplete" in (err.details() or "")
    corrupt = image[:-1] + bytes([image[-1] ^ 1])
    err = _install(
        cluster,
        follower,
        [
            peer_pb2.SnapshotChunk(cluster=name, header=header, total_size=len(corrupt)),
            peer_pb2.SnapshotChunk(data=corrupt),
        ],
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "refused" in (err.details() or "")
    err = _install(
        cluster, follower, [peer_pb2.SnapshotChunk(cluster="other", header=header, total_size=len(image))]
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    # The node is untouched: same leader, same term, its data intact.
    assert cluster.wait_leader() == leader
    assert cluster.status(follower).term < 99
    _wait_state(cluster, follower, expected)
    assert not cluster.get(follower, "evil", local=True).found


def cluster_name(c: Cluster) -> str:
    return load_cluster(c.config_path).name
