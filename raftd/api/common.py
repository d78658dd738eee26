"""What every client-facing service shares: deadlines, validation, error mapping, leader forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from raftd.config import NodeAddr
from raftd.kv import Command, Op
from raftd.node import NotLeader, RaftNode, Unavailable, to_core
from raftd.pb import kv_pb2 as pb

T = TypeVar("T")

DEFAULT_DEADLINE_S = 5.0
MAX_DEADLINE_S = 60.0
MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1024 * 1024
# Set on a request a follower passed to the leader: it is never passed on a second time, so two nodes with
# stale views of each other cannot bounce a request back and forth.
FORWARDED = (("x-raftd-forwarded", "1"),)


class RequestFailed(Exception):
    """A request that ends in a gRPC status; raised anywhere below a handler, turned into abort() once."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


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
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except RequestFailed as e:
            await context.abort(e.code, e.message)

    return wrapper


def time_left(context: grpc.aio.ServicerContext) -> float:
    """The caller's deadline, or a default so that nothing waits forever."""
    remaining = context.time_remaining()
    if remaining is None:
        return DEFAULT_DEADLINE_S
    return max(0.0, min(remaining, MAX_DEADLINE_S))


def was_forwarded(context: grpc.aio.ServicerContext) -> bool:
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


def check_key(key: bytes) -> bytes:
    if not key:
        raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, "the key is empty")
    return check_text("the key", key, MAX_KEY_BYTES)


def put_command(request: pb.PutRequest) -> Command:
    """A Put checked and ready for the log (its session makes a retried write apply once)."""
    key = check_key(request.key)
    value = check_text("the value", request.value, MAX_VALUE_BYTES)
    return Command(Op.PUT, key, value, request.session.client_id.encode(), request.session.seq)


def delete_command(request: pb.DeleteRequest) -> Command:
    key = check_key(request.key)
    return Command(Op.DELETE, key, b"", request.session.client_id.encode(), request.session.seq)


def not_leader(leader: NodeAddr | None) -> RequestFailed:
    """A write refused here: the client follows the hint (raftctl.client parses this exact form)."""
    if leader is None:
        return RequestFailed(grpc.StatusCode.UNAVAILABLE, "no leader known; retry shortly")
    return RequestFailed(grpc.StatusCode.UNAVAILABLE, f"not the leader; try {leader.address}")


async def on_leader(
    node: RaftNode,
    context: grpc.aio.ServicerContext,
    local: Callable[[], Awaitable[T]],
    forward: Callable[[grpc.aio.Channel, float], Awaitable[T]],
) -> T:
    """Run local() here when leading, else forward() to the leader."""
    timeout = time_left(context)
    try:
        return await asyncio.wait_for(local(), timeout)
    except NotLeader as e:
        if e.leader is None or was_forwarded(context):
            raise not_leader(e.leader) from None
        channel = node.peers[to_core(e.leader.id)].channel
        try:
            return await forward(channel, time_left(context))
        except grpc.aio.AioRpcError as err:
            raise RequestFailed(err.code(), err.details() or err.code().name) from None
    except Unavailable as e:
        raise RequestFailed(grpc.StatusCode.UNAVAILABLE, str(e)) from None
    except TimeoutError:
        raise RequestFailed(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no outcome within {timeout:.1f}s; a write may or may not have applied",
        ) from None


async def on_node(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    """Requests served by this node itself (reads, admin)."""
    timeout = time_left(context)
    try:
        return await asyncio.wait_for(work, timeout)
    except Unavailable as e:
        raise RequestFailed(grpc.StatusCode.UNAVAILABLE, str(e)) from None
    except TimeoutError:
        raise RequestFailed(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout:.1f}s") from None
