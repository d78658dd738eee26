"""A follower's forward whose leader dies before answering: the write committed, so the caller must hear
"unknown", never a refusal. The leader holds each answer (RAFTD_TEST_ANSWER_DELAY_S) so that the kill
lands after the commit every time, not by luck of timing."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from raftctl.cli import EXIT_OUTCOME_UNKNOWN, EXIT_UNAVAILABLE
from raftd.launcher import free_ports
from raftd.pb import kv_pb2, raft_pb2, raft_pb2_grpc
from raftd.pipe import OUTCOME_KEY, UNKNOWN
from tests.raftctl.conftest import run_ctl

from .cluster import cluster_of, wait_until


def test_a_forward_whose_leader_is_killed_after_the_commit_is_reported_unknown(tmp_path: Path) -> None:
    with cluster_of(tmp_path, env={"RAFTD_TEST_ANSWER_DELAY_S": "60"}) as c:
        lead = c.wait_leader()
        via = c.followers(lead)[0]
        seed = raft_pb2_grpc.RaftServiceStub(c.channel(via))
        setval = seed.SetVal.future(raft_pb2.SetValRequest(key="a", value="1"), timeout=30)
        put = c.kv(via).Put.future(kv_pb2.PutRequest(key=b"b", value=b"2"), timeout=30)
        for key in ("a", "b"):
            # Committed: the follower itself has applied it (the leader holds its answer meanwhile).
            wait_until(f"{key} applied on node {via}", lambda key=key: c.get(via, key, local=True).found)
        c.kill(lead)
        with pytest.raises(grpc.RpcError) as lost_setval:
            verdict = setval.result()
            raise AssertionError(f"SetVal answered verdict={verdict.verdict} for a write that applied")
        assert lost_setval.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as lost_put:
            put.result()
        assert lost_put.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(lost_put.value.trailing_metadata() or ())[OUTCOME_KEY] == UNKNOWN, (
            lost_put.value.details()
        )
        new_lead = c.wait_leader(exclude=lead)
        assert c.get(new_lead, "a").value == b"1" and c.get(new_lead, "b").value == b"2"


def test_raftctl_exits_6_when_a_write_s_outcome_stays_unknown_and_the_write_applied(tmp_path: Path) -> None:
    """The leader holds the answer past the client's --timeout: the write committed, the client must not
    call it a failure (exit 3 before: "cluster unavailable")."""
    with cluster_of(tmp_path / "c", env={"RAFTD_TEST_ANSWER_DELAY_S": "60"}) as c:
        lead = c.wait_leader()
        endpoints = ",".join(c.address(i) for i in range(c.n))
        r = run_ctl("--endpoints", endpoints, "--timeout", "1.5", "setval", "k", "v", cwd=tmp_path)
        assert r.returncode == EXIT_OUTCOME_UNKNOWN, r
        assert r.stderr.count("\n") == 1 and "may have applied" in r.stderr, r.stderr
        wait_until("the write applied", lambda: c.get(lead, "k").value == b"v")


def test_raftctl_says_unavailable_not_unknown_when_no_node_answers(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    r = run_ctl("--endpoints", f"127.0.0.1:{port}", "--timeout", "1", "setval", "k", "v", cwd=tmp_path)
    assert r.returncode == EXIT_UNAVAILABLE, r
