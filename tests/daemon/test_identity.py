"""A cluster's identity is fixed once, at bootstrap (issue 17): a random id its first leader commits, which
every member records and carries on its peer messages. A map whose address changed keeps its data; a data
directory of another cluster with the very same map (everyone's 127.0.0.1 cluster) is refused by its
peers; a data directory of the previous release, named after its map's addresses, is taken over."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import grpc
import pytest

from raftd.launcher import free_ports
from raftd.pb import kv_pb2

from .cluster import Cluster, meta_of, release_env, wait_until

# The last commit before cluster ids: its data directories carry only the name derived from their map.
PREVIOUS_RELEASE = "7da569492906dbd5d893b6186fa05aef1cc9c60c"
ID_RE = re.compile(r"[0-9a-f]{16}")


def cluster_ids(c: Cluster, nodes: list[int]) -> set[str]:
    """The cluster id each node reports, once every one of them has applied one."""

    def known() -> set[str] | None:
        ids = {c.status(i).cluster_id for i in nodes}
        return None if "" in ids else ids

    return wait_until(f"nodes {nodes} to know the cluster id", known)


def test_a_new_cluster_gets_one_random_id_on_every_node(tmp_path: Path) -> None:
    with Cluster(tmp_path / "a") as a, Cluster(tmp_path / "b", ports=free_ports(3)) as b:
        a.start_all()
        b.start_all()
        (id_a,) = cluster_ids(a, [0, 1, 2])
        (id_b,) = cluster_ids(b, [0, 1, 2])
        assert ID_RE.fullmatch(id_a) and ID_RE.fullmatch(id_b) and id_a != id_b
        # Kept for good: a restarted node reports it at once, before any election.
        a.terminate(1)
        a.start(1)
        a.wait_up(1)
        assert a.status(1).cluster_id == id_a


def test_a_changed_address_keeps_the_data(tmp_path: Path) -> None:
    """A port changed in config.conf used to lock node 2 out of its own data ("belongs to cluster
    'c-302c957143d4' node 0, not cluster 'c-857b2ff8b26d' node 0")."""
    with Cluster(tmp_path) as c:
        c.start_all()
        c.put_retrying(0, "k", "v")
        (cid,) = cluster_ids(c, [0, 1, 2])
        name = c.status(0).cluster
        for i in range(3):
            assert c.terminate(i) == 0
        c.ports[2] = free_ports(1)[0]
        c.write_map("conf")
        c.start_all()
        c.wait_value(2, "k", "v", local=False)
        c.wait_value(2, "k", "v", local=True)
        assert {(c.status(i).cluster, c.status(i).cluster_id) for i in range(3)} == {(name, cid)}
        assert "it keeps that name" in c.log(2)


def test_a_data_directory_of_another_cluster_with_the_same_map_is_refused(tmp_path: Path) -> None:
    """Same map, same derived name: only the id tells the clusters apart. Node 2 of cluster A, started
    among cluster B's nodes, must not take B's log over its own (nor B take A's)."""
    ports = free_ports(3)
    with Cluster(tmp_path / "a", ports=ports) as a:
        a.start_all()
        a.put_retrying(0, "from", "a")
        (id_a,) = cluster_ids(a, [0, 1, 2])
        for i in range(3):
            assert a.terminate(i) == 0
    with Cluster(tmp_path / "b", ports=ports) as b:
        b.start_all()
        b.put_retrying(0, "from", "b")
        (id_b,) = cluster_ids(b, [0, 1, 2])
        assert id_a != id_b
        assert b.terminate(2) == 0
        shutil.rmtree(b.data_dir(2))
        shutil.copytree(a.data_dir(2), b.data_dir(2))
        b.start(2)
        b.wait_up(2)
        # Node 2 keeps cluster A's id and data, and B's traffic is refused, on both sides, with a line.
        wait_until("node 2 to refuse B's traffic", lambda: f"reached cluster id {id_a}" in b.log(2))
        wait_until(
            "B to refuse node 2", lambda: any(f"reached cluster id {id_b}" in b.log(i) for i in (0, 1))
        )
        b.put_retrying(0, "later", "b")
        assert b.status(2).cluster_id == id_a
        # (Whether it serves A's "from" depends on whether A's commit of it reached node 2's disk.)
        assert b.get(2, "from", local=True).value != b"b"
        assert not b.get(2, "later", local=True).found
        assert b.status(2).leader_id == -1


def test_a_rolling_upgrade_from_the_previous_release(tmp_path: Path) -> None:
    """Directories written before cluster ids start, keep their data, and get an id from the log, but
    only once no node of the previous release is left to stop on that entry: nodes are upgraded one at a
    time while the cluster serves."""
    old_env = release_env(PREVIOUS_RELEASE, tmp_path / "previous-release")
    with Cluster(tmp_path / "c", env=old_env) as c:
        c.start_all()
        c.put_retrying(0, "k", "before")
        for i in range(3):
            assert c.terminate(i) == 0
        for i in range(3):  # the old code's directories: a derived name, no id
            meta = meta_of(c.data_dir(i) / "raft.db")
            assert meta["cluster"].startswith("c-") and "cluster_id" not in meta, meta

        c.env = old_env
        c.start(2)
        c.env = {}
        c.start(0)
        c.start(1)
        if c.wait_leader() == 2:  # an upgraded node must lead, or nobody would propose an id anyway
            c.admin(2).TransferLeader(kv_pb2.TransferLeaderRequest(target_id=0), timeout=5)
        assert c.wait_leader(exclude=2) in (0, 1)
        c.put_retrying(0, "k", "during")
        # A session write that is not first, from a client nobody knows: in a mixed cluster it is written
        # as before (the old node could not read the flag) and applies by the earlier rule.
        c.put(0, "s", "mixed", session=kv_pb2.WriteSession(client_id="unknown-1", seq=5, first=False))
        c.wait_value(2, "k", "during", local=True)
        c.wait_value(2, "s", "mixed", local=True)
        time.sleep(1.0)  # ten heartbeats: time enough for a leader to propose an id it should not
        assert sorted(c.running()) == [0, 1, 2], c.dump_logs()
        assert {c.status(i).cluster_id for i in (0, 1)} == {""}
        assert "cluster_id" not in meta_of(c.data_dir(2) / "raft.db")

        assert c.terminate(2) == 0
        c.start(2)
        (cid,) = cluster_ids(c, [0, 1, 2])
        assert ID_RE.fullmatch(cid)
        for i in range(3):
            c.wait_value(i, "k", "during", local=True)
            # Migrated in place: checksums on every row, and a vote record beside it (issue 19).
            assert meta_of(c.data_dir(i) / "raft.db")["schema_version"] == 2
            assert (c.data_dir(i) / "raft.vote").exists()
        c.put_retrying(1, "k", "after")
        c.wait_value(2, "k", "after", local=False)
        # Every node upgraded: such a write is refused now (its session may have been evicted).
        with pytest.raises(grpc.RpcError) as refused:
            c.put(1, "s", "late", session=kv_pb2.WriteSession(client_id="unknown-2", seq=5, first=False))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
