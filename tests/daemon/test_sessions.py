"""Exactly-once keeps its promise or says so (issue 19): on a real cluster whose session limit is 3
(raftd --max-sessions, by its environment variable), an evicted session's write is refused, never applied
again, through every path a write takes: unary to the leader, forwarded by a follower, and KV.Stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from raftctl.aio import AsyncClient
from raftctl.client import Client, SessionExpired
from raftd.pb import kv_pb2 as pb

from .cluster import Cluster, cluster_of

OUTCOME = "raftd-outcome"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("sessions")
    with cluster_of(root, env={"RAFTD_MAX_SESSIONS": "3"}) as c:
        yield c


def _evict(c: Cluster, leader: int) -> None:
    """Three fresh clients' first writes: with a limit of 3, every older session goes."""
    for _ in range(3):
        session = pb.WriteSession(client_id=uuid.uuid4().hex, seq=1, first=True)
        c.put(leader, "other", "x", session=session)


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def test_a_write_on_an_evicted_session_is_refused_and_never_applied(cluster: Cluster) -> None:
    """The issue's probe: a client's retry after its session was evicted applied a second time."""
    leader = cluster.wait_leader()
    me = uuid.uuid4().hex
    cluster.put(leader, "counter", "1", session=pb.WriteSession(client_id=me, seq=1, first=True))
    cluster.put(leader, "counter", "2", session=pb.WriteSession(client_id=me, seq=2, first=False))
    cluster.put(leader, "counter", "3")
    _evict(cluster, leader)
    follower = cluster.followers(leader)[0]
    retry = pb.WriteSession(client_id=me, seq=2, first=False)
    for node in (leader, follower):
        e = _refused(lambda n=node: cluster.put(n, "counter", "2", session=retry))
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, f"node {node}: {e}"
        assert e.details() == "session expired; the write may have applied"
        assert (OUTCOME, "unknown") in (e.trailing_metadata() or ()), (
            "refused now, but may have applied before"
        )
    # A client that does not say (one written before the flag) is first only at seq 1.
    unsaid = pb.WriteSession(client_id=me, seq=2)
    assert _refused(lambda: cluster.delete(leader, "counter", session=unsaid)).code() == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    for i in range(3):
        assert cluster.get(i, "counter").value == b"3", f"node {i}: the refused writes must not apply"


def test_the_client_library_reports_it_and_carries_on_with_a_new_session(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    endpoints = cluster.endpoints
    with Client(endpoints, timeout=10) as c:
        c.put("lib", "1")
        _evict(cluster, leader)
        with pytest.raises(SessionExpired, match=r"^setval: session expired; the write may have applied$"):
            c.put("lib", "2")
        assert c.get("lib") == "1"
        c.put("lib", "3")
        assert c.get("lib") == "3"

    async def streamed() -> None:  # KV.Stream: the refusal is a per-request Error
        async with AsyncClient(endpoints, timeout=10) as ac:
            await ac.put("lib", "4")
            _evict(cluster, leader)
            with pytest.raises(SessionExpired):
                await ac.put("lib", "5")
            assert await ac.get("lib") == "4"
            await ac.put("lib", "6")
            assert await ac.get("lib") == "6"

    asyncio.run(streamed())
