"""The caller's side of KV.Stream: many requests pipelined over one long-lived call, answered by id.

Used by the client library (raftctl.aio) and by a follower that forwards its callers' writes to the leader:
a unary call costs far more CPU in Python's gRPC, on both ends, than a message on an open stream, and the
requests that pile up meanwhile leave as one RequestBatch and share the leader's proposals and fsyncs.

A failed request says what became of it (Outcome): a write the stream never carried has not applied; one
that was handed to the stream before it broke, or before its deadline, may have.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Literal

import grpc

from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc

# Trailing metadata of a failed unary write, and what a streamed Error's outcome field says, in text.
OUTCOME_KEY = "raftd-outcome"
# A unary call refused by a node that does not lead names the leader's HOST:PORT in this trailer (a stream
# answer in Error.leader); the message says it for humans.
LEADER_KEY = "raftd-leader"
Outcome = Literal["not-applied", "unknown"]
NOT_APPLIED: Outcome = "not-applied"
UNKNOWN: Outcome = "unknown"
OUTCOME_NAMES: dict[pb.Outcome.ValueType, Outcome] = {
    pb.OUTCOME_NOT_APPLIED: NOT_APPLIED,
    pb.OUTCOME_UNKNOWN: UNKNOWN,
}
OUTCOME_VALUES: dict[Outcome, pb.Outcome.ValueType] = {name: value for value, name in OUTCOME_NAMES.items()}
# A RequestBatch carries at most about this many bytes (nodes take messages of 64 MiB), and at most this
# many requests (nodes take 16,384 by default: Limits.max_batch_requests).
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_BATCH_REQUESTS = 4096
_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class RequestError(grpc.RpcError):
    """One request's failure on the stream, shaped like a failed unary call (code(), details()), so that
    retry loops treat both alike; outcome is NOT_APPLIED, UNKNOWN or None (a read, or an older node)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, outcome: Outcome | None = None, leader: str = ""
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self.outcome = outcome
        self.leader = leader  # Error.leader: "" unless the node refused for not leading

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class NoStream(Exception):
    """The node does not serve KV.Stream (an older raftd, or one serving --max-streams already): use unary
    calls there."""


class Pipe:
    """One KV.Stream call to one node, shared by every request sent there, opened on first use.

    Callers queue their requests and wake the sender, which runs after them in the loop and sends all that
    is queued as one RequestBatch; while that write is in flight, more pile up for the next. The receiver
    resolves each caller's future by the request's id. A stream that breaks fails every request in flight
    with UNAVAILABLE (outcome UNKNOWN for those it carried, NOT_APPLIED for the rest) and the next request
    opens a new one.
    """

    def __init__(self, stub: kv_pb2_grpc.KVAsyncStub, hold: Callable[[float], float] | None = None) -> None:
        self.stub = stub
        # hold(when the oldest queued request came) -> seconds to let more requests join the batch first
        self.hold = hold
        self.queued_since = 0.0
        self.call: grpc.aio.StreamStreamCall[pb.RequestBatch, pb.ResponseBatch] | None = None
        self.queue: list[pb.Request] = []
        self.waiting: dict[int, asyncio.Future[pb.Response]] = {}
        self.sent: set[int] = set()  # ids of waiting requests handed to the stream
        self.ids = itertools.count(1)
        self.wake = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.opened = 0  # calls opened: more than one means the stream broke
        self.batches_sent = 0

    async def request(self, request: pb.Request, timeout: float) -> pb.Response:
        """The answer to one request within timeout; RequestError as a unary call would fail."""
        if self.call is None:
            self._open()
        loop = asyncio.get_running_loop()
        rid = request.id = next(self.ids)
        future: asyncio.Future[pb.Response] = loop.create_future()
        self.waiting[rid] = future
        if not self.queue:
            self.queued_since = loop.time()
        self.queue.append(request)
        self.wake.set()
        timer = loop.call_later(timeout, self._expire, rid, future, timeout)
        try:
            response = await future
        except RequestError as e:
            if request.WhichOneof("op") == "get":
                e.outcome = None  # a read has no effect: no outcome to report
            raise
        finally:
            timer.cancel()
            self.waiting.pop(rid, None)
            self.sent.discard(rid)
        if response.WhichOneof("result") == "error":
            error = response.error
            raise RequestError(
                _STATUS_BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN),
                error.message,
                OUTCOME_NAMES.get(error.outcome),
                error.leader,
            )
        return response

    def _open(self) -> None:
        # Called without a request iterator, grpc.aio hands back a call to write() to (grpc-stubs knows
        # only the iterator form).
        call = self.call = self.stub.Stream()  # type: ignore[call-arg]
        self.opened += 1
        for work in (self._send(call), self._receive(call)):
            task = asyncio.get_running_loop().create_task(work)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(self, call: grpc.aio.StreamStreamCall[pb.RequestBatch, pb.ResponseBatch]) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.hold is not None and (delay := self.hold(self.queued_since)) > 0:
                    await asyncio.sleep(delay)
                while batch := self._take():
                    # Counted as carried before the write: one that fails half way may have reached the node.
                    self.sent.update(r.id for r in batch)
                    try:
                        await call.write(pb.RequestBatch(requests=batch))
                    except asyncio.InvalidStateError:
                        # The call was over before this write: it carried nothing. How it ended (say,
                        # UNIMPLEMENTED from a node without Stream) is the receiver's to report.
                        self.sent.difference_update(r.id for r in batch)
                        return
                    self.batches_sent += 1
        except grpc.RpcError as e:
            self._broken(call, e)

    def _take(self) -> list[pb.Request]:
        """What is queued and still awaited, up to MAX_BATCH_BYTES and MAX_BATCH_REQUESTS (at least one
        request, if any is left):
        a request whose caller gave up (its deadline passed while a write was in flight) is not sent."""
        live = self.waiting
        self.queue = [r for r in self.queue if r.id in live and not live[r.id].done()]
        n = size = 0
        for request in self.queue:
            size += request.ByteSize()
            if (n and size > MAX_BATCH_BYTES) or n == MAX_BATCH_REQUESTS:
                break
            n += 1
        taken, self.queue = self.queue[:n], self.queue[n:]
        return taken

    async def _receive(self, call: grpc.aio.StreamStreamCall[pb.RequestBatch, pb.ResponseBatch]) -> None:
        try:
            while isinstance(batch := await call.read(), pb.ResponseBatch):  # else grpc.aio.EOF: the end
                for response in batch.responses:
                    future = self.waiting.pop(response.id, None)
                    if future is not None and not future.done():
                        future.set_result(response)
        except grpc.RpcError as e:
            self._broken(call, e)
        else:
            self._broken(call, RequestError(grpc.StatusCode.UNAVAILABLE, "the node ended the stream"))

    def _expire(self, rid: int, future: asyncio.Future[pb.Response], timeout: float) -> None:
        """The per-request deadline a unary call would have had (the stream itself has none)."""
        if not future.done():
            outcome = UNKNOWN if rid in self.sent else NOT_APPLIED
            message = f"no answer within {timeout:.1f}s"
            future.set_exception(RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, message, outcome))

    def _broken(
        self, call: grpc.aio.StreamStreamCall[pb.RequestBatch, pb.ResponseBatch], e: Exception
    ) -> None:
        """Fail what is in flight on call; the next request opens a new one (unless the node has none)."""
        if call is not self.call:
            return
        self.call = None
        call.cancel()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        code = e.code() if isinstance(e, grpc.RpcError) else grpc.StatusCode.UNAVAILABLE
        if code == grpc.StatusCode.UNIMPLEMENTED or _refused_whole(e):
            # No Stream here (an older node), or too many streams: nothing was read, go unary.
            self._fail_waiting(lambda rid: NoStream())
            return
        details = details_of(e) if isinstance(e, grpc.RpcError) else str(e)
        if code != grpc.StatusCode.UNAVAILABLE:
            details = f"the stream failed: {code.name}: {details}"
        # A stream that never connected carried nothing, whatever was handed to it.
        sent = set() if code == grpc.StatusCode.UNAVAILABLE and never_connected(details) else self.sent

        def error(rid: int) -> Exception:
            outcome = UNKNOWN if rid in sent else NOT_APPLIED
            return RequestError(grpc.StatusCode.UNAVAILABLE, details, outcome)

        self._fail_waiting(error)

    def _fail_waiting(self, error_for: Callable[[int], Exception]) -> None:
        waiting, self.waiting, self.queue, self.sent = self.waiting, {}, [], set()
        for rid, future in waiting.items():
            if not future.done():
                future.set_exception(error_for(rid))

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
            self.call = None
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sent = self.sent
        self._fail_waiting(
            lambda rid: RequestError(
                grpc.StatusCode.CANCELLED, "the client was closed", UNKNOWN if rid in sent else NOT_APPLIED
            )
        )


def _refused_whole(e: Exception) -> bool:
    """A stream the node refused before reading any request (Limits.max_streams), as its trailer says."""
    if not isinstance(e, grpc.RpcError) or e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    return trailer(e, OUTCOME_KEY) == NOT_APPLIED


def trailer(e: grpc.RpcError, name: str) -> str | None:
    """A failed call's trailing metadata value under name (None: absent, or no call at all)."""
    trailing = getattr(e, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return None


_NO_CONNECTION = ("failed to connect", "connection refused", "dns resolution failed", "errors resolving")


def never_connected(details: str) -> bool:
    """Whether gRPC failed a call for want of a connection, so that it never reached a node."""
    lowered = details.lower()
    return any(phrase in lowered for phrase in _NO_CONNECTION)


def details_of(e: grpc.RpcError) -> str:
    """An error's details on one line (its code's name when it has none)."""
    details = e.details() if hasattr(e, "details") else None
    code = e.code() if hasattr(e, "code") else None
    return " ".join((details or (code.name if code is not None else str(e))).split())
