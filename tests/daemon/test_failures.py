"""Crashes, restarts, suspension and shutdown of real nodes: each test breaks its own fresh cluster.

The rule checked throughout is the one a client relies on: a write that was acknowledged is never lost,
whoever dies and whenever. Writes that ended in an error may or may not have applied.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from raftd.pb import kv_pb2, raft_pb2, raft_pb2_grpc

from .cluster import Cluster, cluster_of, wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_of(tmp_path, 3) as c:
        yield c


def assert_all_readable(c: Cluster, expected: dict[str, str], nodes: list[int]) -> None:
    """Linearizable reads on each node return every expected value."""
    for i in nodes:
        for key, value in expected.items():
            r = c.get(i, key)
            assert (r.found, r.value) == (True, value.encode()), f"node {i} key {key}:\n{c.dump_logs()}"


def wait_caught_up(c: Cluster, i: int, expected: dict[str, str]) -> None:
    """A restarted node's own state (local reads) reaches every expected value."""
    for key, value in expected.items():
        c.wait_value(i, key, value, local=True)


def test_sigkill_leader_new_leader_and_old_one_catches_up(cluster: Cluster) -> None:
    """The two survivors elect a leader and go on; the dead one comes back from its disk and catches up."""
    old = cluster.wait_leader()
    acked = {f"a{k}": f"v{k}" for k in range(5)}
    for key, value in acked.items():
        cluster.put(old, key, value)
    cluster.kill(old)

    new = cluster.wait_leader(exclude=old)
    assert new != old
    survivors = cluster.followers(old)
    after = {f"b{k}": f"w{k}" for k in range(5)}
    for n, (key, value) in enumerate(after.items()):
        cluster.put(survivors[n % 2], key, value)  # via the new leader and via its follower
    acked |= after
    cluster.put(new, "a0", "overwritten")
    acked["a0"] = "overwritten"
    assert_all_readable(cluster, acked, survivors)

    mark = cluster.log_size(old)
    cluster.start(old)
    cluster.wait_log(old, r"^I am a follower\. Term: \d+$", mark)
    wait_caught_up(cluster, old, acked)
    assert cluster.wait_leader() == new, cluster.dump_logs()
    assert_all_readable(cluster, acked, [old])


def test_sigkill_follower_writes_continue_and_it_catches_up(cluster: Cluster) -> None:
    """Losing one follower of three costs no availability."""
    leader = cluster.wait_leader()
    victim, other = cluster.followers(leader)
    cluster.put(leader, "before", "1")
    cluster.kill(victim)
    acked = {"before": "1"}
    for k in range(10):
        cluster.put(leader if k % 2 else other, f"k{k}", f"v{k}")
        acked[f"k{k}"] = f"v{k}"
    assert cluster.delete(leader, "k0").deleted
    del acked["k0"]
    assert_all_readable(cluster, acked, [leader, other])

    cluster.start(victim)
    wait_caught_up(cluster, victim, acked)
    cluster.wait_value(victim, "k0", None, local=True)
    assert cluster.wait_leader() == leader
    assert_all_readable(cluster, acked, [victim])


def test_full_cluster_restart_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    """SIGKILL all three at once: what was acknowledged was on a majority's disk, so it all comes back.

    Runs on a YAML cluster map, so the other format is exercised by real nodes too.
    """
    with cluster_of(tmp_path, 3, fmt="yaml") as c:
        leader = c.wait_leader()
        acked: dict[str, str] = {}
        for k in range(30):
            node = k % 3  # through the leader and through both followers
            key, value = f"key-{k}", f"value-{k}"
            c.put(node, key, value)
            acked[key] = value
        for k in range(0, 30, 7):
            assert c.delete(leader, f"key-{k}").deleted
            del acked[f"key-{k}"]
        for i in range(3):
            c.kill(i)
        for i in range(3):
            c.start(i)
        c.wait_leader()
        assert_all_readable(c, acked, [0, 1, 2])
        for k in range(0, 30, 7):
            assert not c.get(k % 3, f"key-{k}").found
        # and it still takes writes
        assert c.put(1, "after-restart", "yes").index > 0


def test_sigkill_leader_under_load_loses_no_acknowledged_write(cluster: Cluster) -> None:
    """kill -9 mid-stream: in-flight writes may fail, but none that was acknowledged may vanish."""
    leader = cluster.wait_leader()
    acked: dict[str, str] = {}
    failed: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer() -> None:
        target, seq = leader, 0
        while not stop.is_set():
            key, value = f"load-{seq}", f"v{seq}"
            seq += 1
            try:
                cluster.kv(target).Put(kv_pb2.PutRequest(key=key.encode(), value=value.encode()), timeout=3)
            except (grpc.RpcError, ValueError):  # ValueError: the channel was closed under us
                failed.append(key)
                target = (target + 1) % 3
                time.sleep(0.05)
                continue
            with lock:
                acked[key] = value

    def count() -> int:
        with lock:
            return len(acked)

    thread = threading.Thread(target=writer, name="writer", daemon=True)
    thread.start()
    try:
        wait_until("40 acknowledged writes before the kill", lambda: count() >= 40, 30)
        cluster.kill(leader)
        before = count()
        wait_until("40 more acknowledged writes after the kill", lambda: count() >= before + 40, 30)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    new = cluster.wait_leader(exclude=leader)
    with lock:
        snapshot = dict(acked)
    assert_all_readable(cluster, snapshot, [new])

    cluster.start(leader)
    wait_caught_up(cluster, leader, snapshot)
    cluster.wait_leader()
    survivors = cluster.followers(leader)
    assert_all_readable(cluster, snapshot, [*survivors, leader])
    assert failed, "the writer never noticed the kill: the test did not test anything"


def test_frozen_leader_never_serves_a_stale_read(cluster: Cluster) -> None:
    """SIGSTOP the leader, let the others move on, SIGCONT it: it still thinks it leads, but a
    linearizable read through it must not return the value the others have since overwritten."""
    old = cluster.wait_leader()
    cluster.put(old, "k", "before")
    cluster.stop(old)
    others = cluster.followers(old)
    new = cluster.wait_leader(nodes=others, exclude=old)
    cluster.put(new, "k", "after")
    cluster.cont(old)
    # The first read right after waking is the dangerous one; an error is fine, a stale value is not.
    for attempt in range(5):
        try:
            r = cluster.get(old, "k")
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), e
            continue
        assert (r.found, r.value) == (True, b"after"), f"read {attempt} after SIGCONT:\n{cluster.dump_logs()}"
    assert cluster.wait_leader() == new, cluster.dump_logs()
    cluster.wait_value(old, "k", "after", local=True)
    assert cluster.status(old).role == "follower"


def test_suspend_leader_new_leader_and_it_returns_as_follower(cluster: Cluster) -> None:
    """The original README's example 2, through the original RaftService."""
    old = cluster.wait_leader()
    term = cluster.get_leader(old).term
    mark = cluster.log_size(old)
    raft_pb2_grpc.RaftServiceStub(cluster.channel(old)).Suspend(raft_pb2.SuspendRequest(period=2), timeout=5)
    cluster.wait_log(old, r"^Command from client: suspend 2\nSleeping for 2 seconds$", mark)
    with pytest.raises(grpc.RpcError) as e:
        cluster.put(old, "x", "y")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE

    others = cluster.followers(old)
    new = cluster.wait_leader(nodes=others, exclude=old)
    assert cluster.get_leader(new).term > term
    cluster.put(new, "during", "suspension")

    cluster.wait_log(old, r"^Sleeping for 2 seconds\n(?:.*\n)*?I am a follower\. Term: \d+$", mark)
    cluster.wait_value(old, "during", "suspension", local=True)
    assert cluster.wait_leader() == new, cluster.dump_logs()
    st = cluster.status(old)
    assert (st.role, st.leader_id, st.suspended) == ("follower", new, False)
    r = raft_pb2_grpc.RaftServiceStub(cluster.channel(old)).GetLeader(raft_pb2.Empty(), timeout=5)
    assert (r.nodeId, r.nodeAddress) == (new, cluster.address(new))


def test_sigterm_follower_exits_cleanly(cluster: Cluster) -> None:
    """A planned stop is quiet: the stop line, status 0, nothing alarming on stderr (no gRPC tracebacks
    for the peers' cancelled inbound streams)."""
    leader = cluster.wait_leader()
    victim = cluster.followers(leader)[0]
    mark = cluster.log_size(victim)
    assert cluster.terminate(victim) == 0
    assert re.search(r"^The server stops$", cluster.log(victim, mark), re.MULTILINE), cluster.log(
        victim, mark
    )
    assert "Traceback" not in cluster.stderr(victim), cluster.stderr(victim)
    assert cluster.wait_leader() == leader
    cluster.put(leader, "k", "v")


def test_sigterm_leader_hands_over_and_exits_cleanly(cluster: Cluster) -> None:
    """A planned stop must not cost the cluster an election timeout, nor lose the node's data; and it
    finishes (a cancelled peer sender once hung the shutdown forever)."""
    old = cluster.wait_leader()
    cluster.put(old, "k", "v")
    others = cluster.followers(old)
    marks = {i: cluster.log_size(i) for i in range(3)}
    code = cluster.terminate(old)
    out = cluster.log(old, marks[old])
    assert code == 0, f"exit status {code}\n{cluster.dump_logs()}"
    assert re.search(r"^The server stops$", out, re.MULTILINE), out
    assert "Traceback" not in cluster.stderr(old), cluster.stderr(old)
    m = re.search(r"^Handing leadership to node (\d+) before stopping$", out, re.MULTILINE)
    assert m, out
    target = int(m.group(1))
    assert target in others
    assert "did not finish" not in out, out
    new = cluster.wait_leader(nodes=others, exclude=old)
    assert new == target
    assert cluster.get(new, "k").value == b"v"
    cluster.put(new, "after", "stop")

    cluster.start(old)
    wait_caught_up(cluster, old, {"k": "v", "after": "stop"})


def test_writes_during_leadership_transfers_fail_only_retryably(cluster: Cluster) -> None:
    """A write reaching a leader that is handing over must get a retryable UNAVAILABLE, never an
    internal error (it once got UNKNOWN: the node tried to forward the write to itself)."""
    codes: list[grpc.StatusCode] = []
    ok = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal ok
        n = 0
        while not stop.is_set():
            n += 1
            target = cluster.wait_leader()
            try:
                cluster.put(target, f"t{n % 5}", str(n))
                ok += 1
            except grpc.RpcError as e:
                codes.append(e.code())

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(6):
            leader = cluster.wait_leader()
            target = cluster.followers(leader)[0]
            cluster.admin(leader).TransferLeader(kv_pb2.TransferLeaderRequest(target_id=target), timeout=5)
            wait_until("the new leader", lambda t=target: cluster.wait_leader() == t)
    finally:
        stop.set()
        t.join(30)
    assert ok > 0
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
