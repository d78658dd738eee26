"""Item 8 of the issue: bad input gets a clear, one-line error and loses nothing.

Cluster maps, foreign or corrupt data directories, a taken port, no leader, and the lone node's health.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftd.config import load_cluster
from raftd.pb import kv_pb2, raft_pb2, raft_pb2_grpc
from raftd.storage.checksum import entry_crc

from .cluster import HOST, Cluster, free_ports, run_raftd, wait_until


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr: exactly one line, no traceback; returned for further checks."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    return lines[0]


def snapshot_dir(d: Path) -> dict[str, bytes]:
    """Every file's bytes, to show that a refused start changed nothing."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name != "LOCK"}


# -- cluster maps -------------------------------------------------------------------------------------

P1, P2, P3 = free_ports(3)
GOOD = f"0 {HOST} {P1}\n1 {HOST} {P2}\n2 {HOST} {P3}\n"

# (name, file name, content, node id to start, line the error must name or None)
BAD_MAPS = [
    ("bad line", "config.conf", f"# comment\n0 {HOST} {P1}\n1 {HOST}\n", 0, 3),
    ("duplicate id", "config.conf", f"0 {HOST} {P1}\n\n0 {HOST} {P2}\n", 0, 3),
    ("duplicate address", "config.conf", f"0 {HOST} {P1}\n1 {HOST} {P1}\n", 0, 2),
    ("bad port (range)", "config.conf", f"0 {HOST} {P1}\n1 {HOST} 70000\n", 0, 2),
    ("bad port (text)", "config.conf", f"0 {HOST} port\n", 0, 1),
    ("unknown id", "config.conf", GOOD, 7, None),
    ("yaml duplicate id", "cluster.yaml", f"nodes:\n  - {{id: 0, host: {HOST}, port: {P1}}}\n"
     f"  - {{id: 0, host: {HOST}, port: {P2}}}\n", 0, 3),
    ("yaml bad port", "cluster.yaml", f"nodes:\n  - id: 0\n    host: {HOST}\n    port: fifty\n", 0, 4),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "filename", "content", "node", "line"), BAD_MAPS, ids=[c[0] for c in BAD_MAPS]
)
def test_malformed_cluster_map_exits_2_naming_file_and_line(
    tmp_path: Path, name: str, filename: str, content: str, node: int, line: int | None
) -> None:
    """A mistyped map must fail at once and point at the mistake, not start a broken cluster."""
    path = tmp_path / filename
    path.write_text(content)
    proc = run_raftd([str(node), "--config", str(path), "--data-dir", str(tmp_path / "data")], tmp_path)
    assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    msg = one_line_error(proc)
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert where in msg, f"{name}: {msg!r} does not name {where!r}"
    assert not (tmp_path / "data").exists(), "nothing may be created for a map that was refused"
    assert proc.stdout == ""


# -- data directories ---------------------------------------------------------------------------------


def test_data_dir_of_another_named_cluster_or_node_is_refused_untouched(tmp_path: Path) -> None:
    """A data directory carries its cluster and node; using it elsewhere would mix two histories. (A map
    without a name may change its addresses: tests/daemon/test_identity.py.)"""
    a = Cluster(tmp_path / "a", 1)
    try:
        a.start_all()
        a.put(0, "mine", "A")
        assert a.terminate(0) == 0
    finally:
        a.close()
    data = a.data_dir(0)
    before = snapshot_dir(data)
    assert "raft.db" in before

    # The same cluster (its name spelled out), but another node's id on this directory; and the same node
    # id and address under another cluster name.
    name = load_cluster(a.config_path).name
    same = tmp_path / "same.yaml"
    same.write_text(
        f"name: {name}\nnodes:\n  - {{id: 0, host: {HOST}, port: {a.ports[0]}}}\n"
        f"  - {{id: 1, host: {HOST}, port: {free_ports(1)[0]}}}\n"
    )
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(f"name: other\nnodes:\n  - {{id: 0, host: {HOST}, port: {a.ports[0]}}}\n")
    for args, wanted in (
        (["1", "--config", str(same)], "node 0"),
        (["0", "--config", str(renamed)], "'other'"),
    ):
        proc = run_raftd([*args, "--data-dir", str(data)], tmp_path)
        assert proc.returncode not in (0, None), args
        msg = one_line_error(proc)
        assert "belongs to cluster" in msg and wanted in msg, msg
        assert snapshot_dir(data) == before

    # The rightful owner still starts, with its data.
    again = Cluster(tmp_path / "a", 1, ports=a.ports)
    try:
        again.start_all()
        assert again.get(0, "mine").value == b"A"
    finally:
        again.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_database_is_refused_and_left_byte_identical(tmp_path: Path, damage: str) -> None:
    """Never silently reset: a fresh empty log would let this node vote away committed entries."""
    c = Cluster(tmp_path, 1)
    try:
        c.start_all()
        for k in range(20):
            c.put(0, f"k{k}", "v" * 2000)
        assert c.terminate(0) == 0
    finally:
        c.close()
    db = c.data_dir(0) / "raft.db"
    if damage == "garbage":
        db.write_bytes(os.urandom(3000) + b"this is not a database" * 100)
    else:
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2)
    before = snapshot_dir(c.data_dir(0))
    mark = c.log_size(0)
    c.start(0)
    code = c.procs[0].wait(timeout=20)
    assert code not in (0, None)
    err = c.stderr(0)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(db) in lines[0] and re.search(r"corrupt|malformed|damaged|not a database", lines[0]), lines[0]
    assert snapshot_dir(c.data_dir(0)) == before
    assert "The server starts" not in c.log(0, mark)


def _refused_start(c: Cluster, i: int) -> str:
    """Start node i, which must refuse its data at once: its one stderr line."""
    mark = c.log_size(i)
    c.start(i)
    assert c.procs[i].wait(timeout=20) == 1
    err = c.stderr(i)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "The server starts" not in c.log(i, mark)
    return lines[0]


def test_a_flipped_bit_in_a_stopped_followers_log_stops_it_instead_of_being_served(tmp_path: Path) -> None:
    """Issue 19: the follower started, and local and linearizable reads on it returned the damaged value."""
    with Cluster(tmp_path) as c:
        leader = c.start_all()
        assert leader is not None
        follower = c.followers(leader)[0]
        c.put(leader, "k", "the-value-to-damage-0123456789")
        c.wait_value(follower, "k", "the-value-to-damage-0123456789", local=True)
        assert c.terminate(follower) == 0  # a clean stop: the WAL is checkpointed into raft.db
        db = c.data_dir(follower) / "raft.db"
        raw = bytearray(db.read_bytes())
        at = raw.find(b"the-value-to-damage-0123456789")
        assert at >= 0 and raw.find(b"the-value-to-damage-0123456789", at + 1) < 0
        raw[at + 5] ^= 0x01
        db.write_bytes(bytes(raw))
        line = _refused_start(c, follower)
        assert re.search(rf"{re.escape(str(db))}: log entry \d+ is damaged", line), line
        assert "replace this node: raftctl member remove ID" in line
        # The others go on, without it.
        c.put_retrying(leader, "after", "x")


def test_a_followers_database_that_lost_durable_writes_does_not_start(tmp_path: Path) -> None:
    """Issue 19: with its WAL deleted, a follower restarted with an older term and vote, free to vote again in
    a term it had voted in. Here an older copy of its database is put back, which leaves the same state
    every time (a deleted WAL loses what was not yet checkpointed, which a test cannot choose)."""
    with Cluster(tmp_path) as c:
        leader = c.start_all()
        assert leader is not None
        follower = c.followers(leader)[0]
        assert c.terminate(follower) == 0
        old = (c.data_dir(follower) / "raft.db").read_bytes()
        c.start(follower)
        c.wait_up(follower)
        c.kill(leader)  # an election: the follower votes in a later term
        c.wait_leader(exclude=leader)
        term = c.status(follower).term
        assert c.terminate(follower) == 0
        (c.data_dir(follower) / "raft.db").write_bytes(old)
        for suffix in ("-wal", "-shm"):
            (c.data_dir(follower) / f"raft.db{suffix}").unlink(missing_ok=True)
        line = _refused_start(c, follower)
        recorded = re.search(r"went back in time: it holds term (\d+) .* recorded term (\d+)", line)
        # (The node may have seen yet another election between the status and its stop.)
        assert recorded and int(recorded[1]) < term <= int(recorded[2]), line


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    """Someone else holds our port: say so in one line and exit, rather than serve half a node."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        conf = tmp_path / "config.conf"
        conf.write_text(f"0 {HOST} {port}\n1 {HOST} {free_ports(1)[0]}\n")
        try:
            proc = run_raftd(
                ["0", "--config", str(conf), "--data-dir", str(tmp_path / "d")], tmp_path, timeout=20
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"raftd kept running although {HOST}:{port} is taken")
    assert proc.returncode not in (0, None)
    msg = one_line_error(proc)
    assert f"{HOST}:{port}" in msg, msg


# -- a lone node: no leader ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Node 0 of a 3-node map, the others never started: it can never have a leader."""
    c = Cluster(tmp_path_factory.mktemp("lone"), 3)
    try:
        c.start(0)
        c.wait_up(0)
        yield c
    finally:
        c.close()


def test_no_leader_fails_fast_with_unavailable(lone: Cluster) -> None:
    """A client must learn quickly that no one can serve it, not sit out its whole deadline."""
    deadline = 10.0
    calls = {
        "put": lambda: lone.kv(0).Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=deadline),
        "delete": lambda: lone.kv(0).Delete(kv_pb2.DeleteRequest(key=b"k"), timeout=deadline),
        "get": lambda: lone.kv(0).Get(kv_pb2.GetRequest(key=b"k"), timeout=deadline),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            call()
        took = time.monotonic() - started
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, f"{name}: {e.value.code()} {e.value.details()}"
        assert "leader" in e.value.details(), f"{name}: {e.value.details()!r}"
        assert took < deadline / 2, f"{name} took {took:.1f}s of its {deadline:.0f}s deadline"
    assert lone.get_leader(0).leader_id == -1
    seed = raft_pb2_grpc.RaftServiceStub(lone.channel(0))
    r = seed.GetLeader(raft_pb2.Empty(), timeout=5)
    assert (r.nodeId, r.nodeAddress) == (-1, "")
    started = time.monotonic()
    assert seed.SetVal(raft_pb2.SetValRequest(key="k", value="v"), timeout=deadline).verdict is False
    assert time.monotonic() - started < deadline / 2


def test_health_not_serving_without_a_leader(lone: Cluster) -> None:
    """A node that cannot serve writes must not attract traffic."""
    stub = health_pb2_grpc.HealthStub(lone.channel(0))
    for service in ("", "raftd.v1.KV"):
        r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING, service


def test_replicas_whose_states_diverged_raise_an_alarm(tmp_path: Path) -> None:
    """Checksums cannot see a replica that applied something else (a writer's bug, memory gone bad): here
    a stopped follower's log entry is rewritten with a valid checksum, so it starts and replays its own
    version of the write. The cross-node check (raftd/consistency.py) finds it."""
    with Cluster(tmp_path, env={"RAFTD_CORRUPT_CHECK_INTERVAL": "0.3"}) as c:
        leader = c.start_all()
        assert leader is not None
        follower = c.followers(leader)[0]
        c.put(leader, "k", "the-value-of-record")
        c.wait_value(follower, "k", "the-value-of-record", local=True)
        assert c.terminate(follower) == 0
        db = sqlite3.connect(c.data_dir(follower) / "raft.db")
        with db:
            rows = db.execute("SELECT idx, term, data FROM entries").fetchall()
            (idx, term, data), *_ = [r for r in rows if b"the-value-of-record" in r[2]]
            data = data.replace(b"the-value-of-record", b"the-value-0f-record")
            db.execute(
                "UPDATE entries SET data = ?, crc = ? WHERE idx = ?", (data, entry_crc(idx, term, data), idx)
            )
        db.close()
        c.start(follower)
        c.wait_value(follower, "k", "the-value-0f-record", local=True)

        # Peer traffic runs between the leader and each follower, so those two compare: the leader sees
        # every follower, a follower sees the leader.
        def alarms() -> dict[int, tuple[str, ...]] | None:
            raised = {i: tuple(c.status(i).alarms) for i in range(3)}
            return raised if raised[leader] and raised[follower] else None

        raised = wait_until("the leader and the follower to raise alarms", alarms)
        assert len(raised[leader]) == len(raised[follower]) == 1
        assert re.fullmatch(
            rf"CORRUPT: the state at index \d+ differs from node {follower}'s", raised[leader][0]
        )
        assert re.fullmatch(
            rf"CORRUPT: the state at index \d+ differs from node {leader}'s", raised[follower][0]
        )
        other = 3 - leader - follower
        assert raised[other] == (), "a follower that agrees with the leader raises nothing"
        assert re.search(
            rf"CORRUPT: .* differs from node {follower}'s \(hash [0-9a-f]{{16}} here", c.log(leader)
        )
        r = subprocess.run(
            [sys.executable, "-m", "raftctl", "--endpoints", ",".join(c.endpoints), "status"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode == 5, r.stderr
        assert "CORRUPT" in r.stdout and "CORRUPT: the state at index" in r.stderr
