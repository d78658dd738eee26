"""What every client-facing service shares: deadlines, validation, error mapping, leader forwarding.

A failed write always says whether it may have applied (README "Failed writes: refused or unknown"): a refusal
before the write was proposed is NOT_APPLIED, and everything after (a deadline, a node that lost track of
its entry, a forward that broke once sent) is UNKNOWN. Unary calls carry it as trailing metadata
(raftd.pipe.OUTCOME_KEY), streamed answers in Error.outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from raftd.config import NodeAddr
from raftd.core import ConfChangeRefused
from raftd.errors import LeaderChanging, NotLeader, OutcomeUnknown, SessionExpired, Unavailable
from raftd.kv import Command, Op
from raftd.node import RaftNode
from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc
from raftd.pipe import (
    LEADER_KEY,
    NOT_APPLIED,
    OUTCOME_KEY,
    OUTCOME_VALUES,
    UNKNOWN,
    NoStream,
    Outcome,
    Pipe,
    RequestError,
    never_connected,
)
from raftd.settings import Limits, Tuning

T = TypeVar("T")

# Set on a request a follower passed to the leader: it is never passed on a second time, so two nodes with
# stale views of each other cannot bounce a request back and forth.
FORWARDED = (("x-raftd-forwarded", "1"),)


class RequestFailed(Exception):
    """A request that ends in a gRPC status; raised anywhere below a handler, turned into abort() once.
    outcome (NOT_APPLIED or UNKNOWN) is set on a write's failure."""

    def __init__(
        self, code: grpc.StatusCode, message: str, outcome: Outcome | None = None, leader: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome
        self.leader = leader  # the leader's HOST:PORT, for a refusal for not leading

    def to_pb(self) -> pb.Error:
        outcome = OUTCOME_VALUES[self.outcome] if self.outcome else pb.OUTCOME_UNSPECIFIED
        return pb.Error(code=self.code.value[0], message=self.message, outcome=outcome, leader=self.leader)

    def trailers(self) -> tuple[tuple[str, str], ...]:
        outcome = ((OUTCOME_KEY, self.outcome),) if self.outcome is not None else ()
        return outcome + (((LEADER_KEY, self.leader),) if self.leader else ())


Handler = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class LongCalls:
    """Handlers of long-lived calls (streams), which the server ends itself before it stops.

    gRPC prints a traceback for each long-lived handler it has to cancel itself at server stop.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._closed = False

    def close(self) -> None:
        """End every call from our side, so that stopping the server finds none in flight; a call whose
        handler starts later (accepted just before, a peer reconnecting) ends at its first wait."""
        self._closed = True
        for task in self._tasks:
            task.cancel()

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        """Run a handler so that close() can end it, and its end is quiet."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self._closed:
            task.cancel()
        try:
            yield
        except asyncio.CancelledError:
            # close() above, or the caller went away: a routine end for a long-lived call. The task goes
            # on, so it must not stay marked as cancelling (asyncio.timeout would misread that later).
            task.uncancel()
        finally:
            self._tasks.discard(task)


def grpc_errors(method: Handler) -> Handler:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except RequestFailed as e:
            await context.abort(e.code, e.message, e.trailers())

    return wrapper


def time_left(context: grpc.aio.ServicerContext[Any, Any], tuning: Tuning) -> float:
    """The caller's deadline, capped (Tuning.max_deadline_s), or a default so that nothing waits forever."""
    remaining = context.time_remaining()
    if remaining is None:
        return tuning.default_deadline_s
    return max(0.0, min(remaining, tuning.max_deadline_s))


def was_forwarded(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    return any(k == "x-raftd-forwarded" for k, _ in context.invocation_metadata() or ())


def check_text(what: str, raw: bytes, limit: int) -> bytes:
    """Keys and values are UTF-8 text of bounded size; anything else is refused before it reaches the log."""
    if len(raw) > limit:
        raise RequestFailed(
            grpc.StatusCode.INVALID_ARGUMENT, f"{what} is {len(raw)} bytes; the limit is {limit}"
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is not valid UTF-8") from None
    return raw


def check_key(key: bytes, limits: Limits) -> bytes:
    if not key:
        raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, "the key is empty")
    return check_text("the key", key, limits.max_key_bytes)


def put_command(request: pb.PutRequest, limits: Limits) -> Command:
    """A Put checked and ready for the log (its session makes a retried write apply once)."""
    key = check_key(request.key, limits)
    value = check_text("the value", request.value, limits.max_value_bytes)
    return Command(Op.PUT, key, value, *_session(request.session))


def delete_command(request: pb.DeleteRequest, limits: Limits) -> Command:
    key = check_key(request.key, limits)
    return Command(Op.DELETE, key, b"", *_session(request.session))


def _session(session: pb.WriteSession) -> tuple[bytes, int, bool | None]:
    """(client_id, seq, first) of a write; a client that does not say whether it is first (one written
    before WriteSession.first) numbers its writes from 1. No session: first is None, nothing to check."""
    if not session.client_id:
        return b"", 0, None
    first = session.first if session.HasField("first") else session.seq == 1
    return session.client_id.encode(), session.seq, first


def not_leader(leader: NodeAddr | None) -> RequestFailed:
    """A write refused here: the client follows the leader named in the trailer or Error.leader (clients
    before those parse the message's exact form)."""
    if leader is None:
        return RequestFailed(grpc.StatusCode.UNAVAILABLE, "no leader known; retry shortly", NOT_APPLIED)
    return RequestFailed(
        grpc.StatusCode.UNAVAILABLE, f"not the leader; try {leader.address}", NOT_APPLIED, leader.address
    )


def failure(e: BaseException, *, write: bool) -> RequestFailed:
    """The status a request ends with when the node failed it. A write's says whether it may have applied:
    OutcomeUnknown, a deadline and anything unexpected may have; NotLeader, Unavailable and a refusal with
    no outcome of its own (invalid input) were refused before proposing. A read has no effect, so its
    failure carries no outcome."""
    leader = ""
    if isinstance(e, RequestFailed):
        code, message, outcome, leader = e.code, e.message, e.outcome or NOT_APPLIED, e.leader
    elif isinstance(e, NotLeader):
        hinted = not_leader(e.leader)
        code, message, outcome, leader = hinted.code, hinted.message, NOT_APPLIED, hinted.leader
    elif isinstance(e, ConfChangeRefused):
        code = grpc.StatusCode.INVALID_ARGUMENT if e.invalid else grpc.StatusCode.FAILED_PRECONDITION
        message, outcome = str(e), NOT_APPLIED
    elif isinstance(e, SessionExpired):
        code, message, outcome = grpc.StatusCode.FAILED_PRECONDITION, str(e), UNKNOWN
    elif isinstance(e, OutcomeUnknown):
        code, message, outcome = grpc.StatusCode.UNAVAILABLE, str(e), UNKNOWN
    elif isinstance(e, Unavailable):
        code, message, outcome = grpc.StatusCode.UNAVAILABLE, str(e), NOT_APPLIED
    elif isinstance(e, TimeoutError):
        code, message, outcome = grpc.StatusCode.DEADLINE_EXCEEDED, "no outcome before the deadline", UNKNOWN
    elif isinstance(e, asyncio.CancelledError):
        code, message, outcome = grpc.StatusCode.UNAVAILABLE, "abandoned", UNKNOWN
    else:
        code, message, outcome = grpc.StatusCode.INTERNAL, str(e) or type(e).__name__, UNKNOWN
    if not write:
        return RequestFailed(code, message, leader=leader)
    if outcome == UNKNOWN and "may have applied" not in message:
        message += "; the write may have applied"
    return RequestFailed(code, message, outcome, leader)


class Forwarder:
    """A follower's unary writes, passed to the leader on one KV.Stream per leader (raftd.pipe.Pipe), so
    that concurrent callers share the leader's proposals and fsyncs as a streaming client's requests do;
    the stream's batches wait while more calls are coming (RaftNode.gather_delay).

    The leader never passes them on again: a stream refuses writes off the leader ("not the leader").
    """

    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self.pipes: dict[int, Pipe] = {}

    async def request(self, leader: NodeAddr, request: pb.Request, timeout: float) -> pb.Response:
        """The leader's answer; RequestFailed with the write's outcome (the pipe knows what it sent)."""
        pipe = self.pipes.get(leader.id)
        if pipe is None:
            await self._close_idle()  # streams to former leaders
            channel = self.node.channel_to(leader.id)
            pipe = self.pipes[leader.id] = Pipe(kv_pb2_grpc.KVStub(channel), self.node.gather_delay)
        try:
            return await pipe.request(request, timeout)
        except RequestError as e:
            if never_connected(e.details()):
                # Not gRPC's words for our own connection: a client would take them for its own and
                # think this node unreachable.
                raise RequestFailed(
                    e.code(), f"the leader at {leader.address} is unreachable", NOT_APPLIED
                ) from None
            raise RequestFailed(e.code(), e.details(), e.outcome or UNKNOWN, e.leader) from None
        except NoStream:
            # A leader older than KV.Stream: nothing was sent, so the caller may take the hint and go there.
            raise not_leader(leader) from None

    async def _close_idle(self) -> None:
        for node_id, pipe in list(self.pipes.items()):
            if not pipe.waiting:
                del self.pipes[node_id]
                await pipe.close()

    async def close(self) -> None:
        pipes, self.pipes = list(self.pipes.values()), {}
        for pipe in pipes:
            await pipe.close()


class Calls:
    """Counts a node's unary calls in progress (RaftNode.call_started): while more than one waits, requests
    gather and Readies are saved off the event loop."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node

    def start(self) -> None:
        self.node.call_started()

    def end(self) -> None:
        self.node.call_ended()


async def write(
    calls: Calls,
    forwarder: Forwarder,
    context: grpc.aio.ServicerContext[Any, Any],
    cmd: Command,
    request: pb.PutRequest | pb.DeleteRequest,
) -> tuple[int, bool]:
    """(index, whether the key existed) of a write committed and applied: proposed here when leading, else
    forwarded to the leader, whose stream keeps the deadline (it knows whether it sent the write). Every
    failure is a RequestFailed with its outcome."""
    calls.start()
    try:
        try:
            future = calls.node.propose_nowait(cmd)
        except NotLeader as e:
            if e.leader is None or was_forwarded(context):
                raise
            wrapped = (
                pb.Request(put=request) if isinstance(request, pb.PutRequest) else pb.Request(delete=request)
            )
            response = await forwarder.request(e.leader, wrapped, time_left(context, calls.node.tuning))
            if response.WhichOneof("result") == "put":
                return response.put.index, False
            return response.delete.index, response.delete.deleted
        async with asyncio.timeout(time_left(context, calls.node.tuning)):
            result = await future
        return result.index, result.existed
    except Exception as e:
        raise failure(e, write=True) from None
    finally:
        calls.end()


async def read(
    calls: Calls, context: grpc.aio.ServicerContext[Any, Any], key: bytes, local: bool
) -> tuple[bytes | None, int]:
    """A linearizable read by default (ReadIndex, confirmed by the leader even on a follower)."""
    calls.start()
    try:
        if not local:
            limit = time_left(context, calls.node.tuning)
            async with asyncio.timeout(limit):
                await barrier(calls.node, limit)
        return calls.node.local_read(key)
    except Exception as e:
        raise failure(e, write=False) from None
    finally:
        calls.end()


async def barrier(node: RaftNode, limit: float) -> None:
    """A ReadIndex barrier that outlasts elections: a read has no effect, so one refused for want of a
    leader, or cut short by a change of leader, is asked again once a leader is known. Each wait takes half
    the time left at most, so that "no leader known" comes back before the deadline. Writes do not wait
    (yet): the five-node container test's write with three nodes down then came back "may have applied"
    on fresh-clone CI runs, for a reason not found."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        try:
            await node.read_barrier_nowait()
            return
        except LeaderChanging:
            if not await node.wait_for_leader((deadline - loop.time()) / 2):
                raise


async def on_leader(
    node: RaftNode,
    context: grpc.aio.ServicerContext[Any, Any],
    local: Callable[[], Awaitable[T]],
    forward: Callable[[grpc.aio.Channel, float], Awaitable[T]],
    *,
    write: bool = False,
) -> T:
    """Run local() here when leading, else forward() to the leader (admin calls, which change no key).
    write: local() changes the cluster (a membership change), so its failure says whether it may have
    applied, and a forward's failure passes the leader's answer on (unknown when it broke once sent)."""
    try:
        try:
            return await asyncio.wait_for(local(), time_left(context, node.tuning))
        except NotLeader as e:
            if e.leader is None or was_forwarded(context):
                raise
            channel = node.channel_to(e.leader.id)
            return await forward(channel, time_left(context, node.tuning))
    except grpc.aio.AioRpcError as err:
        details = err.details() or err.code().name
        unreached = never_connected(details)
        outcome: Outcome | None = None
        if write:
            trailers: Any = err.trailing_metadata() or ()  # grpc.aio.Metadata: (key, value) pairs
            told = next((v for k, v in trailers if k == OUTCOME_KEY), None)
            outcome = NOT_APPLIED if unreached else told if told in (NOT_APPLIED, UNKNOWN) else UNKNOWN
            if outcome == UNKNOWN and "may have applied" not in details:
                details += "; the change may have applied"
        raise RequestFailed(
            err.code(), "the leader is unreachable" if unreached else details, outcome
        ) from None
    except Exception as e:
        raise failure(e, write=write) from None


async def on_node(node: RaftNode, context: grpc.aio.ServicerContext[Any, Any], work: Awaitable[T]) -> T:
    """Admin work served by this node itself (a backup)."""
    try:
        return await asyncio.wait_for(work, time_left(context, node.tuning))
    except Exception as e:
        raise failure(e, write=False) from None
