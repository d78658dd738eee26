"""The outcome rule in the driver: a write refused before it was proposed fails as Unavailable (it never
applies); one already in the log that the node loses track of fails as OutcomeUnknown (it may apply)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest

from raftctl.client import Client, leader_hint, may_have_applied
from raftctl.client import OutcomeUnknown as ClientOutcomeUnknown
from raftctl.client import Unavailable as ClientUnavailable
from raftd.api import common
from raftd.api.common import Calls, Forwarder
from raftd.api.kv import KVService
from raftd.api.seed import SeedService
from raftd.config import NodeAddr
from raftd.core import Entry, Message, MsgType
from raftd.errors import OutcomeUnknown, Unavailable
from raftd.kv import Command, Op, Result
from raftd.launcher import free_ports
from raftd.node import RaftNode
from raftd.pb import kv_pb2, kv_pb2_grpc, raft_pb2, raft_pb2_grpc
from raftd.pending import Pending
from raftd.pipe import LEADER_KEY, NOT_APPLIED, OUTCOME_KEY, UNKNOWN, Pipe, RequestError
from raftd.settings import Tuning
from tests.nodes import follower, leader, release_node
from tests.test_pipe import _AnsweringCall, _BreakingCall, _FakeCall, _FakeStub


def pb_error(code: grpc.StatusCode, outcome: int) -> kv_pb2.Error:
    return kv_pb2.Error(code=code.value[0], message="from the leader", outcome=outcome)  # type: ignore[arg-type]


async def pending_write(node: RaftNode, key: bytes = b"k") -> asyncio.Future[Result]:
    """A write in the leader's log, saved and sent, not committed (no follower acknowledges it)."""
    future = node.propose_nowait(Command(Op.PUT, key, b"v"))
    node._take_input()
    await node._drain_ready()
    assert not future.done() and node.pending.waiting
    return future


def outcome(future: asyncio.Future[Result]) -> type[BaseException] | None:
    error = future.exception() if future.done() else None
    return type(error) if error is not None else None


def test_suspending_with_a_write_in_the_log_reports_it_unknown(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path)
        logged = await pending_write(node)
        queued = node.propose_nowait(Command(Op.PUT, b"q", b"v"))  # not taken into the log yet
        await node._suspend(0.01)
        assert outcome(logged) is OutcomeUnknown, "the suspended leader's entry may still commit"
        assert outcome(queued) is Unavailable, "a write never proposed is refused for sure"
        release_node(node)

    asyncio.run(main())


def test_stopping_with_a_write_in_the_log_reports_it_unknown(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path)
        logged = await pending_write(node)
        queued = node.propose_nowait(Command(Op.PUT, b"q", b"v"))
        await node.stop()
        assert (outcome(logged), outcome(queued)) == (OutcomeUnknown, Unavailable)
        node.storage.close()

    asyncio.run(main())


def test_stepping_down_with_a_write_in_the_log_reports_it_unknown_at_once(tmp_path: Path) -> None:
    """Before, the write waited for its caller's deadline (and SetVal then answered verdict=false)."""

    async def main() -> None:
        node = await leader(tmp_path)
        logged = await pending_write(node)
        # Node 2 (core id 3) leads a newer term: this leader steps down with its entry uncommitted.
        term = node.raw.raft.term + 1
        node.deliver([Message(MsgType.HEARTBEAT, to=1, frm=3, term=term)])
        node._take_input()
        await node._drain_ready()
        assert not node.is_leader()
        assert outcome(logged) is OutcomeUnknown
        with pytest.raises(OutcomeUnknown, match="may have applied"):
            logged.result()
        release_node(node)

    asyncio.run(main())


def test_a_write_whose_entry_another_leader_overwrote_is_refused(tmp_path: Path) -> None:
    """The one definite failure after proposing: the index holds another term's entry once committed, so
    ours can never commit (Log Matching)."""

    async def main() -> None:
        node = await leader(tmp_path)
        index = node.raw.raft.log.last_index() + 1
        logged = await pending_write(node)
        future_term = node.raw.raft.term + 1
        # A leader of a newer term that never had our entry replaces it and commits its own there.
        prev = index - 1
        prev_term = node.raw.raft.log.term(prev)
        assert prev_term is not None
        entries = (Entry(index, future_term, b""),)
        node.deliver(
            [
                Message(
                    MsgType.APP,
                    to=1,
                    frm=3,
                    term=future_term,
                    index=prev,
                    log_term=prev_term,
                    entries=entries,
                    commit=index,
                )
            ]
        )
        node._take_input()
        await node._drain_ready()
        assert node.kv.applied >= index
        assert outcome(logged) is Unavailable
        release_node(node)

    asyncio.run(main())


class Served:
    """The client services of an in-process node on a free port, and a channel to them."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self.server = grpc.aio.server()
        calls, forwarder = Calls(node), Forwarder(node)
        kv_pb2_grpc.add_KVServicer_to_server(KVService(node, calls, forwarder), self.server)
        raft_pb2_grpc.add_RaftServiceServicer_to_server(SeedService(node, calls, forwarder), self.server)
        (port,) = free_ports(1)
        self.address = f"127.0.0.1:{port}"
        self.server.add_insecure_port(self.address)
        self.channel = grpc.aio.insecure_channel(self.address)
        self.kv = kv_pb2_grpc.KVStub(self.channel)
        self.seed = raft_pb2_grpc.RaftServiceStub(self.channel)

    async def __aenter__(self) -> Served:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop(None)

    async def proposed(self, n: int) -> None:
        """Wait until n calls' writes are queued, then take them into the (uncommitting) log (once they
        have gathered: concurrent calls wait for each other, RaftNode.gather_delay)."""
        while len(self.node.pending.proposals) < n:
            await asyncio.sleep(0.005)
        while self.node.pending.proposals:
            await asyncio.sleep(0.001)
            self.node._take_input()
        await self.node._drain_ready()


async def failed(call: Awaitable[object]) -> tuple[grpc.StatusCode, str | None]:
    """The status of a call that must fail, and its raftd-outcome trailer."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    trailers = dict(e.value.trailing_metadata() or ())
    return e.value.code(), trailers.get(OUTCOME_KEY)


@pytest.mark.parametrize("event", ["suspend", "step-down"])
def test_unary_and_original_writes_lost_track_of_end_in_an_error_that_says_unknown(
    tmp_path: Path, event: str
) -> None:
    """SetVal answered verdict=false, which the original client shows as a failed write, for writes that
    were later read back (issue 16's Jepsen runs); the unary Put failed with no outcome at all."""

    async def main() -> None:
        node = await leader(tmp_path)
        async with Served(node) as s:
            setval = asyncio.ensure_future(
                s.seed.SetVal(raft_pb2.SetValRequest(key="a", value="1"), timeout=10)
            )
            put = asyncio.ensure_future(s.kv.Put(kv_pb2.PutRequest(key=b"b", value=b"2"), timeout=10))
            await s.proposed(2)
            if event == "suspend":
                await node._suspend(0.01)
            else:
                node.deliver([Message(MsgType.HEARTBEAT, to=1, frm=3, term=node.raw.raft.term + 1)])
                node._take_input()
                await node._drain_ready()
            assert await failed(setval) == (grpc.StatusCode.UNAVAILABLE, UNKNOWN)
            assert await failed(put) == (grpc.StatusCode.UNAVAILABLE, UNKNOWN)
        release_node(node)

    asyncio.run(main())


def test_writes_refused_before_proposing_say_not_applied(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path)
        async with Served(node) as s:
            node.suspend(60)  # requested: the node takes no more writes
            reply = await s.seed.SetVal(raft_pb2.SetValRequest(key="a", value="1"), timeout=10)
            assert reply.verdict is False
            assert await failed(s.kv.Put(kv_pb2.PutRequest(key=b"b", value=b"2"), timeout=10)) == (
                grpc.StatusCode.UNAVAILABLE,
                NOT_APPLIED,
            )
            assert await failed(s.kv.Put(kv_pb2.PutRequest(key=b"", value=b"2"), timeout=10)) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                NOT_APPLIED,
            )
            assert await failed(s.kv.Get(kv_pb2.GetRequest(key=b"a"), timeout=10)) == (
                grpc.StatusCode.UNAVAILABLE,
                None,  # a read has no effect: no outcome
            )
        release_node(node)

    asyncio.run(main())


def test_a_write_past_the_node_s_deadline_says_unknown(tmp_path: Path) -> None:
    """The node's deadline (capped at Tuning.max_deadline_s) passes long before the client's."""

    async def main() -> None:
        node = await leader(tmp_path, tuning=Tuning(max_deadline_s=0.3))
        async with Served(node) as s:
            put = asyncio.ensure_future(s.kv.Put(kv_pb2.PutRequest(key=b"b", value=b"2"), timeout=10))
            await s.proposed(1)
            assert await failed(put) == (grpc.StatusCode.DEADLINE_EXCEEDED, UNKNOWN)
            setval = asyncio.ensure_future(
                s.seed.SetVal(raft_pb2.SetValRequest(key="a", value="1"), timeout=10)
            )
            await s.proposed(1)
            assert await failed(setval) == (grpc.StatusCode.DEADLINE_EXCEEDED, UNKNOWN)
            get = s.kv.Get(kv_pb2.GetRequest(key=b"b"), timeout=10)  # its round is never confirmed
            assert await failed(get) == (grpc.StatusCode.DEADLINE_EXCEEDED, None)
        release_node(node)

    asyncio.run(main())


def test_the_client_reports_a_write_it_lost_track_of_as_unknown_not_unavailable(tmp_path: Path) -> None:
    """Its first attempt is in the leader's log when the leader is suspended; every retry is then refused
    ("suspended"). Before, the client reported the last refusal: Unavailable, as if nothing had applied."""

    async def main() -> None:
        node = await leader(tmp_path)
        async with Served(node) as s:
            with Client([s.address], timeout=1.5) as client:
                put = asyncio.ensure_future(asyncio.to_thread(client.put, "k", "v"))
                await s.proposed(1)
                await node._suspend(0.01)
                node.suspend(60)  # and stays suspended: the retries are refused
                with pytest.raises(ClientOutcomeUnknown, match="may have applied"):
                    await put
        release_node(node)

    asyncio.run(main())


def test_the_client_reports_refusals_alone_as_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path)
        async with Served(node) as s:
            node.suspend(60)
            with Client([s.address], timeout=1.0) as client, pytest.raises(ClientUnavailable):
                await asyncio.to_thread(client.put, "k", "v")
        release_node(node)

    asyncio.run(main())


class _Failed(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers


U = grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("error", "maybe"),
    [
        (_Failed(U, "the node is suspended", ((OUTCOME_KEY, NOT_APPLIED),)), False),
        (_Failed(U, "leadership was lost", ((OUTCOME_KEY, UNKNOWN),)), True),
        (_Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), True),
        (_Failed(U, "Socket closed"), True),  # a call that broke: it may have been served
        (_Failed(U, "failed to connect to all addresses; last error: Connection refused"), False),
        (_Failed(U, "not the leader; try 127.0.0.1:1"), False),  # an older node's refusal
        (_Failed(U, "no leader known; retry shortly"), False),
        (RequestError(U, "Stream removed", UNKNOWN), True),
        (RequestError(U, "Stream removed", NOT_APPLIED), False),
        (_Failed(grpc.StatusCode.INTERNAL, "boom"), True),
    ],
)
def test_which_failed_attempts_may_have_applied(error: grpc.RpcError, maybe: bool) -> None:
    assert may_have_applied(error) is maybe


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (_Failed(U, "refused", ((OUTCOME_KEY, NOT_APPLIED), (LEADER_KEY, "10.0.0.1:5"))), "10.0.0.1:5"),
        (_Failed(U, "not the leader; try 127.0.0.1:1"), "127.0.0.1:1"),  # an older node: its message
        (RequestError(U, "refused", NOT_APPLIED, "10.0.0.2:6"), "10.0.0.2:6"),
        (RequestError(U, "not the leader; try 127.0.0.1:2", NOT_APPLIED), "127.0.0.1:2"),
        (_Failed(U, "no leader known; retry shortly"), None),
    ],
)
def test_the_leader_hint_is_read_from_the_trailer_or_the_error_before_the_message(
    error: grpc.RpcError, hint: str | None
) -> None:
    """Issue 18: the hint was a string that a regex parsed back; a message may now change wording."""
    assert leader_hint(error) == hint
    assert may_have_applied(error) is False


class _NodeOf:
    """Just what Forwarder reads of a node."""

    def gather_delay(self, since: float) -> float:
        return 0.0


@pytest.mark.parametrize(
    ("answer", "code", "outcome"),
    [
        # the leader's own verdicts pass through
        (
            pb_error(grpc.StatusCode.UNAVAILABLE, kv_pb2.OUTCOME_NOT_APPLIED),
            grpc.StatusCode.UNAVAILABLE,
            NOT_APPLIED,
        ),
        (pb_error(grpc.StatusCode.UNAVAILABLE, kv_pb2.OUTCOME_UNKNOWN), grpc.StatusCode.UNAVAILABLE, UNKNOWN),
        # a leader that says nothing of it (an older one): the write may have applied
        (pb_error(grpc.StatusCode.INTERNAL, kv_pb2.OUTCOME_UNSPECIFIED), grpc.StatusCode.INTERNAL, UNKNOWN),
    ],
)
def test_a_forward_keeps_the_leader_s_outcome_or_says_unknown(
    answer: kv_pb2.Error, code: grpc.StatusCode, outcome: str
) -> None:
    async def main() -> None:
        forwarder = Forwarder(_NodeOf())  # type: ignore[arg-type]
        forwarder.pipes[1] = Pipe(_FakeStub(_AnsweringCall(answer)))  # type: ignore[arg-type]
        with pytest.raises(common.RequestFailed) as failed:
            await forwarder.request(NodeAddr(1, "127.0.0.1", 1), kv_pb2.Request(put=kv_pb2.PutRequest()), 5)
        assert (failed.value.code, failed.value.outcome) == (code, outcome)
        await forwarder.close()

    asyncio.run(main())


class _OldLeaderCall(_FakeCall):
    """A leader without KV.Stream."""

    async def read(self) -> kv_pb2.ResponseBatch:
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


def test_a_forward_to_a_leader_without_streams_is_refused_with_its_address() -> None:
    async def main() -> None:
        forwarder = Forwarder(_NodeOf())  # type: ignore[arg-type]
        forwarder.pipes[1] = Pipe(_FakeStub(_OldLeaderCall()))  # type: ignore[arg-type]
        with pytest.raises(common.RequestFailed) as failed:
            await forwarder.request(NodeAddr(1, "127.0.0.1", 7), kv_pb2.Request(put=kv_pb2.PutRequest()), 5)
        assert (
            failed.value.outcome == NOT_APPLIED and failed.value.message == "not the leader; try 127.0.0.1:7"
        )
        assert failed.value.leader == "127.0.0.1:7"
        assert failed.value.trailers() == ((OUTCOME_KEY, NOT_APPLIED), (LEADER_KEY, "127.0.0.1:7"))
        await forwarder.close()

    asyncio.run(main())


def test_a_forward_that_cannot_connect_says_so_in_its_own_words() -> None:
    """gRPC's 'failed to connect ... Connection refused' relayed as is made clients take this node for
    an unreachable one, and give up on it (a flaky failover test showed it)."""

    async def main() -> None:
        call = _BreakingCall()
        call.error = RequestError(
            grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; Connection refused"
        )
        call.broken.set()
        forwarder = Forwarder(_NodeOf())  # type: ignore[arg-type]
        forwarder.pipes[1] = Pipe(_FakeStub(call))  # type: ignore[arg-type]
        with pytest.raises(common.RequestFailed) as failed:
            await forwarder.request(NodeAddr(1, "127.0.0.1", 7), kv_pb2.Request(put=kv_pb2.PutRequest()), 5)
        assert (failed.value.message, failed.value.outcome) == (
            "the leader at 127.0.0.1:7 is unreachable",
            NOT_APPLIED,
        )
        await forwarder.close()

    asyncio.run(main())


def test_a_call_that_finds_no_leader_is_refused_before_its_deadline(tmp_path: Path) -> None:
    """A read's wait for an election takes half the time left at most: a call that ran into its deadline
    would say nothing clear, and a write's would leave the client unsure whether it applied."""

    async def main() -> None:
        node = follower(tmp_path)
        for _ in range(2 * node.config.max_election_tick):
            node.raw.tick()
        await node._drain_ready()
        assert node.leader() is None
        async with Served(node) as s:
            assert await failed(s.kv.Put(kv_pb2.PutRequest(key=b"b", value=b"2"), timeout=1)) == (
                grpc.StatusCode.UNAVAILABLE,
                NOT_APPLIED,
            )
            reply = await s.seed.SetVal(raft_pb2.SetValRequest(key="a", value="1"), timeout=1)
            assert reply.verdict is False
            assert await failed(s.kv.Get(kv_pb2.GetRequest(key=b"a"), timeout=1)) == (
                grpc.StatusCode.UNAVAILABLE,
                None,
            )
        release_node(node)

    asyncio.run(main())


def test_a_write_committed_when_leadership_is_lost_is_answered_when_it_applies() -> None:
    """A leader that removed itself steps down as the removal commits, maybe before it applies it: the
    change must come back done, not "may have applied". Writes past the commit index stay unknown."""

    async def main() -> None:
        pending = Pending()
        futures = [pending.add_write(b"x", 0.0)[0] for _ in range(3)]
        pending.proposed(pending.take_proposals(1 << 20), first_index=5, term=2)
        pending.leadership_lost("leadership was lost before the write committed", committed=6)
        assert [f.done() for f in futures] == [False, False, True]
        with pytest.raises(OutcomeUnknown, match="may have applied"):
            futures[2].result()
        for i in (5, 6):
            pending.applied(Entry(term=2, index=i, data=b"x"), Result(index=i, existed=False))
        assert [f.result().index for f in futures[:2]] == [5, 6]

    asyncio.run(main())
