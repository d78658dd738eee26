"""One healthy 3-node cluster shared by every test here: none of them breaks it for the next.

Election output, replication, forwarding, exactly-once writes, input limits, health, the original
client's schema and suspending a follower (which must come back without deposing the leader).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftd.pb import kv_pb2, raft_pb2, raft_pb2_grpc

from .cluster import Cluster, cluster_of, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Started once for the module; killed at the end whatever happened."""
    with cluster_of(tmp_path_factory.mktemp("shared")) as c:
        yield c


@pytest.fixture
def leader(cluster: Cluster) -> int:
    """The current leader, agreed by all three (tests here must leave the cluster this way)."""
    return cluster.wait_leader()


def _key(prefix: str) -> str:
    """Unique keys per test, since the tests share one store."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_in_order(text: str, patterns: list[str], what: str) -> None:
    """Each regex matches a whole line, in this order (other lines may come between)."""
    pos = 0
    for pattern in patterns:
        m = re.compile(rf"^{pattern}$", re.MULTILINE).search(text, pos)
        assert m is not None, f"{what}: no line /{pattern}/ after offset {pos} in:\n{text}"
        pos = m.end()


def assert_code(err: grpc.RpcError, code: grpc.StatusCode) -> None:
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"  # type: ignore[attr-defined]
    assert err.details(), "the error must carry a message"  # type: ignore[attr-defined]


# -- election and output ------------------------------------------------------------------------------


def test_election_one_leader_everyone_agrees_and_original_lines(cluster: Cluster, leader: int) -> None:
    """The original's lines must stay so that people (and scripts) reading the old output still can."""

    def agreed() -> list[kv_pb2.StatusResponse] | None:
        st = [cluster.status(i) for i in range(3)]
        ok = {s.leader_id for s in st} == {leader} and len({s.term for s in st}) == 1
        return st if ok else None

    statuses = wait_until("all Status answers to agree on the leader and term", agreed)
    assert [s.role for s in statuses].count("leader") == 1, statuses
    assert statuses[leader].role == "leader"
    assert [s.id for s in statuses] == [0, 1, 2]
    assert [s.address for s in statuses] == [cluster.address(i) for i in range(3)]
    term = statuses[0].term
    assert term >= 1
    for i in range(3):
        gl = cluster.get_leader(i)
        assert (gl.leader_id, gl.address, gl.term) == (leader, cluster.address(leader), term)

    for i in range(3):
        lines = cluster.log(i).splitlines()
        assert lines[:2] == [
            f"The server starts at 127.0.0.1:{cluster.ports[i]}",
            "I am a follower. Term: 0",
        ], cluster.dump_logs()
    assert_in_order(
        cluster.log(leader),
        [
            "The leader is dead",
            rf"I am a candidate\. Term: {term}",
            f"Voted for node {leader}",
            "Votes received",
            rf"I am a leader\. Term: {term}",
        ],
        f"leader {leader}",
    )
    voters = [f for f in cluster.followers(leader) if f"Voted for node {leader}\n" in cluster.log(f)]
    assert voters, f"no follower printed its vote for {leader}:\n{cluster.dump_logs()}"

    for i in range(3):
        mark = cluster.log_size(i)
        r = raft_pb2_grpc.RaftServiceStub(cluster.channel(i)).GetLeader(raft_pb2.Empty(), timeout=5)
        assert (r.nodeId, r.nodeAddress) == (leader, cluster.address(leader))
        cluster.wait_log(
            i, rf"^Command from client: getleader\n{leader} {re.escape(cluster.address(leader))}$", mark
        )


# -- replication and forwarding -----------------------------------------------------------------------


def test_replication_linearizable_and_local_reads_and_delete(cluster: Cluster, leader: int) -> None:
    """An acknowledged write is visible to a linearizable read on ANY node at once, with no retry."""
    key = _key("rep")
    put = cluster.put(leader, key, "v1")
    assert put.index > 0
    for i in range(3):
        r = cluster.get(i, key)
        assert (r.found, r.value) == (True, b"v1"), f"node {i}"
        assert r.index >= put.index
    for i in range(3):  # a local read may lag, but must get there
        cluster.wait_value(i, key, "v1", local=True)

    d = cluster.delete(leader, key)
    assert d.deleted is True and d.index > put.index
    for i in range(3):
        assert cluster.get(i, key).found is False, f"node {i}"
    again = cluster.delete(leader, key)
    assert again.deleted is False and again.index > d.index
    assert cluster.get(leader, _key("never")).found is False


def test_follower_forwards_writes_to_the_leader(cluster: Cluster, leader: int) -> None:
    """Any node accepts any request: a follower passes writes on and answers with the leader's result."""
    for f in cluster.followers(leader):
        key = _key(f"fwd{f}")
        put = cluster.put(f, key, f"from-{f}")
        assert put.index > 0
        for i in range(3):
            r = cluster.get(i, key)
            assert (r.found, r.value) == (True, f"from-{f}".encode()), f"node {i}"
        d = cluster.delete(f, key)
        assert d.deleted is True
        assert cluster.delete(f, key).deleted is False
        assert cluster.get(leader, key).found is False


def test_exactly_once_retried_write_applies_once(cluster: Cluster, leader: int) -> None:
    """A retry of (client_id, seq) must not re-apply: here it would bring back an overwritten value."""
    key = _key("once")
    session = kv_pb2.WriteSession(client_id=f"client-{uuid.uuid4().hex}", seq=1)
    first = cluster.put(leader, key, "v1", session=session)
    second = cluster.put(leader, key, "v2")
    assert second.index > first.index
    retry = cluster.put(leader, key, "v1", session=session)
    assert retry.index == first.index
    follower = cluster.followers(leader)[0]
    retry_via_follower = cluster.put(follower, key, "v1", session=session)
    assert retry_via_follower.index == first.index
    for i in range(3):
        assert cluster.get(i, key).value == b"v2", f"node {i}"
    # The session goes on: seq 2 is a new write.
    third = cluster.put(leader, key, "v3", session=kv_pb2.WriteSession(client_id=session.client_id, seq=2))
    assert third.index > second.index
    assert cluster.get(leader, key).value == b"v3"

    # Deletes are sessions' writes too: a retried delete reports the first outcome and removes nothing new.
    dsess = kv_pb2.WriteSession(client_id=f"client-{uuid.uuid4().hex}", seq=1)
    d1 = cluster.delete(leader, key, session=dsess)
    assert d1.deleted is True
    cluster.put(leader, key, "v4")
    d2 = cluster.delete(leader, key, session=dsess)
    assert (d2.deleted, d2.index) == (True, d1.index)
    assert cluster.get(leader, key).value == b"v4"


def test_bad_keys_and_values_are_invalid_argument(cluster: Cluster, leader: int) -> None:
    """Refused before reaching the log, on the leader and on a follower alike."""
    follower = cluster.followers(leader)[0]
    # (what, key, value, whether the key itself is bad so Get and Delete must refuse it too)
    cases: list[tuple[str, bytes, bytes, bool]] = [
        ("empty key", b"", b"v", True),
        ("key over 4096 bytes", b"k" * 4097, b"v", True),
        ("invalid UTF-8 key", b"\xff\xfe", b"v", True),
        ("value over 1 MiB", b"big", b"x" * (1024 * 1024 + 1), False),
        ("invalid UTF-8 value", b"k", b"\xc3\x28", False),
    ]
    for node in (leader, follower):
        for what, key, value, bad_key in cases:
            calls = [lambda n=node, k=key, v=value: cluster.put(n, k, v)]
            if bad_key:
                calls += [lambda n=node, k=key: cluster.get(n, k), lambda n=node, k=key: cluster.delete(n, k)]
            for call in calls:
                with pytest.raises(grpc.RpcError) as e:
                    call()
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{what} on node {node}"
                assert e.value.details(), f"{what}: the error must say what is wrong"
    # The limits themselves are allowed.
    edge_key = "k" * 4096
    cluster.put(follower, edge_key, b"x" * (1024 * 1024))
    r = cluster.get(leader, edge_key)
    assert r.found and len(r.value) == 1024 * 1024


# -- health -------------------------------------------------------------------------------------------


def test_health_serving_with_a_leader(cluster: Cluster, leader: int) -> None:
    """Load balancers and orchestrators ask the standard service, not ours."""
    for i in range(3):
        stub = health_pb2_grpc.HealthStub(cluster.channel(i))
        for service in ("", "raftd.v1.KV"):
            r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING, f"node {i} service {service!r}"


# -- the original client --------------------------------------------------------------------------------

SEED_PROTO = """\
syntax = "proto3";

service RaftService {
  rpc GetLeader(Empty) returns (GetLeaderResponse);
  rpc Suspend(SuspendRequest) returns (Empty);
  rpc SetVal(SetValRequest) returns (SetValResponse);
  rpc GetVal(GetValRequest) returns (GetValResponse);
}

message Empty {}

message GetLeaderResponse {
  int32 nodeId = 1;
  string nodeAddress = 2;
}

message SuspendRequest {
  int32 period = 1;
}

message SetValRequest {
  string key = 1;
  string value = 2;
}

message SetValResponse {
  bool verdict = 1;
}

message GetValRequest {
  string key = 1;
}

message GetValResponse {
  bool verdict = 1;
  string value = 2;
}
"""

SEED_CLIENT = textwrap.dedent(
    """\
    import sys

    import grpc

    import raft_pb2
    import raft_pb2_grpc

    tag = sys.argv[1]
    for addr in sys.argv[2:]:
        stub = raft_pb2_grpc.RaftServiceStub(grpc.insecure_channel(addr))
        r = stub.GetLeader(raft_pb2.Empty(), timeout=10)
        print(f"{addr} getleader {r.nodeId} {r.nodeAddress}")
        key = f"seed-{tag}-{addr}"
        r = stub.SetVal(raft_pb2.SetValRequest(key=key, value="100"), timeout=10)
        print(f"{addr} setval {r.verdict}")
        r = stub.GetVal(raft_pb2.GetValRequest(key=key), timeout=10)
        print(f"{addr} getval {r.verdict} {r.value}")
        r = stub.GetVal(raft_pb2.GetValRequest(key=f"absent-{tag}"), timeout=10)
        print(f"{addr} getval-absent {r.verdict} {r.value!r}")
        for other in sys.argv[2:]:  # what one node stored, every node returns
            r = stub.GetVal(raft_pb2.GetValRequest(key=f"seed-{tag}-{other}"), timeout=10)
            print(f"{addr} getval-of {other} {r.verdict} {r.value}")
    """
)


def test_client_generated_from_the_original_schema(cluster: Cluster, leader: int, tmp_path: Path) -> None:
    """The issue's compatibility promise: a client built from that schema alone works unchanged.

    It runs in a subprocess because its descriptors (no package) clash with raftd's own copy in one process.
    """
    (tmp_path / "raft.proto").write_text(SEED_PROTO)
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--grpc_python_out=.",
            "raft.proto",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gen.returncode == 0, gen.stderr
    (tmp_path / "client.py").write_text(SEED_CLIENT)
    follower = cluster.followers(leader)[0]
    addrs = [cluster.address(follower), cluster.address(leader)]
    tag = uuid.uuid4().hex[:8]
    run = subprocess.run(
        [sys.executable, "client.py", tag, *addrs],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lead = f"{leader} {cluster.address(leader)}"
    expected = []
    for a in addrs:
        expected += [
            f"{a} getleader {lead}",
            f"{a} setval True",
            f"{a} getval True 100",
            f"{a} getval-absent False ''",
        ]
        expected += [
            f"{a} getval-of {o} {'True 100' if addrs.index(o) <= addrs.index(a) else 'False '}" for o in addrs
        ]
    assert run.stdout.splitlines() == expected
    assert "Command from client: getleader" in cluster.log(follower)


# -- suspend ------------------------------------------------------------------------------------------


def test_suspend_rejects_bad_periods(cluster: Cluster, leader: int) -> None:
    """A negative, zero or absurd period is a mistake to report, not an instruction to follow."""
    follower = cluster.followers(leader)[0]
    seed = raft_pb2_grpc.RaftServiceStub(cluster.channel(follower))
    for period in (-1, 0, 100000):
        with pytest.raises(grpc.RpcError) as e:
            cluster.admin(follower).Suspend(kv_pb2.SuspendRequest(period=period), timeout=5)
        assert_code(e.value, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(grpc.RpcError) as e:
            seed.Suspend(raft_pb2.SuspendRequest(period=period), timeout=5)
        assert_code(e.value, grpc.StatusCode.INVALID_ARGUMENT)
    st = cluster.status(follower)
    assert not st.suspended and st.role == "follower"
    assert "Sleeping for" not in cluster.log(follower)


def test_suspended_follower_returns_without_deposing_the_leader(cluster: Cluster, leader: int) -> None:
    """Pre-vote: a node back from a pause must not start a term the healthy majority never needed."""
    follower = cluster.followers(leader)[0]
    term = cluster.get_leader(leader).term
    mark = cluster.log_size(follower)
    started = time.monotonic()
    cluster.admin(follower).Suspend(kv_pb2.SuspendRequest(period=2), timeout=5)
    cluster.wait_log(follower, r"^Command from client: suspend 2\nSleeping for 2 seconds$", mark)

    # While away it serves nothing (answers UNAVAILABLE) and says so in Status; the others go on.
    key = _key("susp")
    for call in (
        lambda: cluster.put(follower, key, "x"),
        lambda: cluster.get(follower, key),
        lambda: cluster.get(follower, key, local=True),
        lambda: cluster.delete(follower, key),
        lambda: raft_pb2_grpc.RaftServiceStub(cluster.channel(follower)).GetVal(
            raft_pb2.GetValRequest(key=key), timeout=5
        ),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert_code(e.value, grpc.StatusCode.UNAVAILABLE)
    st = cluster.status(follower)
    assert st.suspended and st.role == "suspended" and st.leader_id == -1
    assert cluster.get_leader(follower).leader_id == -1
    put = cluster.put(leader, key, "while-away")
    assert time.monotonic() - started < 2, "the checks above must run while the node is away"

    cluster.wait_log(follower, r"^Sleeping for 2 seconds\n(?:.*\n)*?I am a follower\. Term: \d+$", mark)
    cluster.wait_value(follower, key, "while-away", local=True)
    assert cluster.get(follower, key).index >= put.index
    # Let a few election timeouts pass: nobody may have started a new term.
    time.sleep(1.0)
    for i in range(3):
        gl = cluster.get_leader(i)
        assert (gl.leader_id, gl.term) == (leader, term), f"node {i}:\n{cluster.dump_logs()}"
    assert not re.search(r"I am a candidate", cluster.log(follower, mark)), cluster.log(follower, mark)
