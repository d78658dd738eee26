"""The client library against in-process fake nodes: retries, hints, pinning, exactly-once ids, errors.

Fakes rather than raftd, because only a fake can fail a write on demand after recording what arrived.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from raftctl.aio import AsyncClient
from raftctl.client import (
    BACKOFF_MIN_S,
    Client,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    ServerError,
    SessionExpired,
    Unavailable,
    WriteSession,
    _Attempts,
)
from raftctl.exits import EXIT_OUTCOME_UNKNOWN, exit_code
from raftd.launcher import free_ports
from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc
from raftd.pipe import RequestError

# (code, details) or (code, details, the raftd-outcome trailer the node sends)
Failure = tuple[grpc.StatusCode, str] | tuple[grpc.StatusCode, str, str]


class FakeNode(kv_pb2_grpc.KVServicer, kv_pb2_grpc.AdminServicer):
    """Answers from a script: the first len(failures) writes fail as given, then writes succeed."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []
        self.always: Failure | None = None
        self.writes: list[tuple[str, int]] = []  # (client_id, seq) of every Put/Delete that arrived
        self.firsts: list[bool | None] = []  # and its WriteSession.first (None: not set)
        self.data: dict[bytes, bytes] = {}
        self.leader: tuple[int, str] | None = None
        self.leader_trailer = ""  # sent as raftd-leader with every failure when set
        self.lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(4))
        kv_pb2_grpc.add_KVServicer_to_server(self, self.server)
        kv_pb2_grpc.add_AdminServicer_to_server(self, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _script(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            failure = self.always or (self.failures.pop(0) if self.failures else None)
        if failure is not None:
            trailers = [("raftd-outcome", failure[2])] if len(failure) == 3 else []
            if self.leader_trailer:
                trailers.append(("raftd-leader", self.leader_trailer))
            if trailers:
                context.set_trailing_metadata(tuple(trailers))
            context.abort(failure[0], failure[1])

    def Put(self, request: pb.PutRequest, context: grpc.ServicerContext) -> pb.PutResponse:
        self.writes.append((request.session.client_id, request.session.seq))
        self.firsts.append(request.session.first if request.session.HasField("first") else None)
        self._script(context)
        self.data[request.key] = request.value
        return pb.PutResponse(index=len(self.writes))

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        self.writes.append((request.session.client_id, request.session.seq))
        self.firsts.append(request.session.first if request.session.HasField("first") else None)
        self._script(context)
        return pb.DeleteResponse(deleted=self.data.pop(request.key, None) is not None)

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.GetResponse:
        self._script(context)
        value = self.data.get(request.key)
        return pb.GetResponse(found=value is not None, value=value or b"")

    def GetLeader(self, request: pb.GetLeaderRequest, context: grpc.ServicerContext) -> pb.GetLeaderResponse:
        if self.leader is None:
            return pb.GetLeaderResponse(leader_id=-1)
        return pb.GetLeaderResponse(leader_id=self.leader[0], address=self.leader[1], term=3)


@pytest.fixture
def nodes() -> Iterator[list[FakeNode]]:
    made = [FakeNode(), FakeNode()]
    try:
        yield made
    finally:
        for n in made:
            n.server.stop(None)


def unused_endpoint() -> str:
    (port,) = free_ports(1)
    return f"127.0.0.1:{port}"


def test_a_retried_write_keeps_its_id_and_the_next_write_gets_a_new_one(nodes: list[FakeNode]) -> None:
    a = nodes[0]
    a.failures = [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "no outcome within 1.0s; a write may or may not have applied"),
        (grpc.StatusCode.UNAVAILABLE, "leadership changed before the write committed; retry"),
    ]
    with Client([a.address], timeout=10) as c:
        assert c.put("k", "v") == 3
        assert c.delete("k") is True
        assert c.delete("k") is False
    first = a.writes[0]
    assert a.writes[:3] == [first] * 3, "every attempt of one write carries the same (client_id, seq)"
    assert [s for _, s in a.writes[2:]] == [first[1], first[1] + 1, first[1] + 2]
    assert {cid for cid, _ in a.writes} == {first[0]} and len(first[0]) >= 16

    with Client([a.address], timeout=10) as other:
        other.put("k", "v")
    assert a.writes[-1][0] != first[0], "each Client has its own random client_id"


def test_a_write_is_first_until_an_earlier_write_may_have_applied(nodes: list[FakeNode]) -> None:
    """WriteSession.first, fixed for all of a write's attempts: one whose outcome is unknown may never have
    reached the log (a paused node), and a retry that said "not first" would be refused. Once a write may
    have applied, the session may exist, and later writes are not first."""
    a = nodes[0]
    a.failures = [
        (grpc.StatusCode.UNAVAILABLE, "no leader known; retry shortly", "not-applied"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "no outcome before the deadline", "unknown"),
    ]
    with Client([a.address], timeout=10) as c:
        c.put("k", "v")
        c.put("k", "w")
    assert a.firsts == [True, True, True, False]
    assert [seq for _, seq in a.writes] == [1, 1, 1, 2]


EXPIRED: Failure = (
    grpc.StatusCode.FAILED_PRECONDITION,
    "session expired; the write may have applied",
    "unknown",
)


@pytest.mark.parametrize("use_async", [False, True])
def test_an_expired_session_fails_the_write_as_unknown_and_the_client_starts_a_new_one(
    nodes: list[FakeNode], use_async: bool
) -> None:
    a = nodes[0]
    errors: list[SessionExpired] = []

    async def in_async() -> None:
        async with AsyncClient([a.address], timeout=10) as ac:
            await ac.put("k", "v")
            a.failures = [EXPIRED]
            with pytest.raises(SessionExpired) as e:
                await ac.put("k", "w")
            errors.append(e.value)
            await ac.put("k", "x")

    if use_async:
        asyncio.run(in_async())
    else:
        with Client([a.address], timeout=10) as c:
            c.put("k", "v")
            a.failures = [EXPIRED]
            with pytest.raises(SessionExpired) as e:
                c.put("k", "w")
            errors.append(e.value)
            c.put("k", "x")
    (error,) = errors
    assert str(error) == "setval: session expired; the write may have applied"
    assert exit_code(error) == EXIT_OUTCOME_UNKNOWN
    (old, _), (refused, _), (new, seq) = a.writes
    assert old == refused != new and seq == 1, "the refused write is not retried; later writes use a new id"
    assert a.firsts == [True, False, True]


def test_follows_the_leader_named_in_an_error(nodes: list[FakeNode]) -> None:
    follower, leader = nodes
    follower.always = (grpc.StatusCode.UNAVAILABLE, f"not the leader; try {leader.address}")
    with Client([follower.address], timeout=10) as c:
        c.put("k", "v")
        assert c.get("k") == "v"
    assert follower.writes[0] == leader.writes[0]


def test_follows_the_leader_named_in_the_trailer_whatever_the_message_says(nodes: list[FakeNode]) -> None:
    """The hint travels as structured metadata (issue 18); the message is for humans and may change."""
    follower, leader = nodes
    follower.always = (grpc.StatusCode.UNAVAILABLE, "this node does not lead", "not-applied")
    follower.leader_trailer = leader.address
    with Client([follower.address], timeout=10) as c:
        c.put("k", "v")
        assert c.get("k") == "v"
    assert len(follower.writes) == 1 and follower.writes == leader.writes


def test_follows_the_leader_named_by_getleader(nodes: list[FakeNode]) -> None:
    follower, leader = nodes
    follower.leader = (1, leader.address)
    follower.always = (grpc.StatusCode.UNAVAILABLE, "no leader known; retry shortly")
    with Client([follower.address], timeout=10) as c:
        c.put("k", "v")
        assert c.get_leader().address == leader.address
    assert follower.writes == [] and len(leader.writes) == 1


def test_skips_dead_endpoints(nodes: list[FakeNode]) -> None:
    with Client([unused_endpoint(), unused_endpoint(), nodes[0].address], timeout=10) as c:
        c.put("k", "v")
        assert c.get("k", linearizable=False) == "v"


def test_pinned_client_never_leaves_its_node(nodes: list[FakeNode]) -> None:
    pinned, other = nodes
    pinned.always = (grpc.StatusCode.UNAVAILABLE, f"not the leader; try {other.address}")
    with Client([pinned.address, other.address], timeout=0.5, pin=True) as c, pytest.raises(Unavailable) as e:
        c.put("k", "v")
    assert other.writes == [] and len(pinned.writes) > 1
    assert "no answer within 0.5s" in str(e.value) and "\n" not in str(e.value)


def test_errors_are_typed_and_not_retried(nodes: list[FakeNode]) -> None:
    a = nodes[0]
    with Client([a.address], timeout=10) as c:
        with pytest.raises(NotFound):
            c.get("absent")
        a.failures = [(grpc.StatusCode.INVALID_ARGUMENT, "the key is empty")]
        with pytest.raises(InvalidArgument, match="the key is empty"):
            c.put("", "v")
        a.failures = [(grpc.StatusCode.INTERNAL, "boom", "not-applied")]
        with pytest.raises(ServerError, match="INTERNAL: boom"):
            c.put("k", "v")
        # A write's failure the node did not call a refusal may have applied: never reported as failed.
        a.failures = [(grpc.StatusCode.INTERNAL, "boom")]
        with pytest.raises(OutcomeUnknown, match="INTERNAL: boom; the write may have applied"):
            c.put("k", "v")
        a.failures = [(grpc.StatusCode.INTERNAL, "boom")]
        with pytest.raises(ServerError, match="INTERNAL: boom"):
            c.get("k")
        with pytest.raises(InvalidArgument, match="UTF-8"):
            c.put("\udcff", "v")
    assert len(a.writes) == 3


def test_every_endpoint_refusing_fails_at_once_and_a_slow_one_is_waited_for() -> None:
    """A refused connection is not a timeout (issue 17): when every endpoint refuses, or has no address,
    nothing will answer, so the client says so at once; while one only fails to answer, it may yet."""
    refused = unused_endpoint()
    with Client([refused, "nowhere.invalid:1"], timeout=30) as c:
        for call in (lambda: c.get("k"), lambda: c.put("k", "v"), c.get_leader):
            with pytest.raises(Unavailable) as e:
                call()
            assert re.search(
                rf"no node answers \({re.escape(refused)}: connection refused; nowhere.invalid:1: cannot "
                r"resolve nowhere.invalid\)$",
                str(e.value),
            ), e.value
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        slow = f"127.0.0.1:{silent.getsockname()[1]}"
        with (
            Client([refused, slow], timeout=0.5) as c,
            pytest.raises(Unavailable, match=r"no answer within 0\.5s"),
        ):
            c.get("k")


def test_status_lists_unreachable_endpoints(nodes: list[FakeNode]) -> None:
    dead = unused_endpoint()
    with Client([dead], timeout=2) as c:
        (row,) = c.status_all()
    assert row.endpoint == dead and not row.reachable and row.error


def test_after_the_leader_fails_the_next_node_asked_is_a_live_one() -> None:
    """Asking the dead leader who leads now would only cost another backoff round (it did: ~400 ms
    more in every failover)."""
    c = Client(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], timeout=1)
    try:
        c._leader = "127.0.0.1:1"
        failed: set[str] = set()
        refused = RequestError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        c._note_failure("127.0.0.1:1", refused, failed)
        assert c._endpoint_to_ask(failed) == "127.0.0.1:2"
        c._note_failure("127.0.0.1:2", refused, failed)
        assert c._endpoint_to_ask(failed) == "127.0.0.1:3"
        failed.add("127.0.0.1:3")
        assert c._endpoint_to_ask(failed) in c.endpoints  # all failed: go round again
    finally:
        c.close()


def test_backoff_is_jittered_so_requests_that_failed_together_do_not_retry_together() -> None:
    """A broken stream fails a whole batch at once; in lock step, every retry would then ask the same dead
    node at the same moment (it cost the async client ~100 ms per failover)."""
    c = Client(["127.0.0.1:1"], timeout=10)
    try:
        deadline = time.monotonic() + 10
        pauses = [c._pause(0.1, deadline, "setval", "") for _ in range(200)]
    finally:
        c.close()
    assert all(0.05 <= p <= 0.1 for p in pauses) and len(set(pauses)) > 100


def test_a_calls_attempts_are_decided_without_io() -> None:
    """The retry rules live once, in raftctl.client._Attempts (issue 18); both clients do what it says."""
    c = Client(["127.0.0.1:1", "127.0.0.1:2"], timeout=0.3)
    try:
        a = _Attempts(c, "setval", session=(WriteSession(), pb.WriteSession()))
        assert a.target() is None and a.ask_endpoint() == "127.0.0.1:1"
        named = pb.GetLeaderResponse(leader_id=1, address="127.0.0.1:2")
        assert a.asked("127.0.0.1:1", named) == "127.0.0.1:2" and a.target() == "127.0.0.1:2"
        # A refusal that names another leader: go there at once, no wait.
        hint = RequestError(grpc.StatusCode.UNAVAILABLE, "refused", "not-applied", "127.0.0.1:1")
        assert a.failed("127.0.0.1:2", hint) == 0.0 and a.target() == "127.0.0.1:1"
        # A broken call may have applied: wait, and once the time is up, end as unknown, not refused.
        pause = a.failed(
            "127.0.0.1:1", RequestError(grpc.StatusCode.UNAVAILABLE, "Stream removed", "unknown")
        )
        assert 0 < pause <= BACKOFF_MIN_S
        time.sleep(0.35)
        with pytest.raises(OutcomeUnknown, match="may have applied"):
            a.waited()
    finally:
        c.close()
