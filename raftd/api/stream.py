"""KV.Stream: many requests pipelined over one long-lived call and answered in batches.

A unary call costs far more CPU in Python's gRPC than a message on an open stream, so a busy client sends
whatever requests piled up as one RequestBatch and gets whatever answers piled up as one ResponseBatch.
Each request keeps its own terms: a write is answered once committed and applied (RaftNode.propose_nowait),
a linearizable read once a ReadIndex round confirms it (the reads of one batch share one round), and a bad
request gets an Error while the stream goes on. No task per request: the node's futures get callbacks that
queue the answer, and one writer per stream sends everything queued in one message.

Unlike the unary Put, a follower does not forward writes from a stream: it answers "not the leader; try
HOST:PORT" and the client sends them to the leader itself, which saves the leader a unary call per write.

What a stream holds is bounded (raftd.settings.Limits): requests received and not answered, in number and in
bytes (reading pauses past either); once a message's worth of values waits to go out, a read's value is
fetched only as its answer is sent, so answers queued behind a slow reader hold no more values; and a
client that reads nothing for --stream-write-timeout has its stream ended, since gRPC's flow control
stops the writes once the client stops reading.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any, NamedTuple, cast

import grpc

from raftd.errors import NotLeader, Unavailable
from raftd.kv import Command, Result
from raftd.node import RaftNode
from raftd.pb import kv_pb2 as pb
from raftd.pipe import UNKNOWN
from raftd.settings import Limits, Tuning

from .common import RequestFailed, check_key, delete_command, failure, put_command

log = logging.getLogger("raftd.api")


class _Read(NamedTuple):
    """A read's answer in the queue before its value is fetched (StreamSession._take)."""

    id: int
    key: bytes


class StreamSession:
    """One Stream call: the reader serves requests, callbacks queue answers, the writer sends them."""

    def __init__(self, node: RaftNode, limits: Limits, tuning: Tuning) -> None:
        """limits: what the stream may hold (max_stream_*, max_batch_requests, stream_write_timeout_s, the
        request checks); tuning: its answers' size and its requests' deadline (response_batch_bytes,
        max_deadline_s, stream_expiry_grain_s)."""
        self.node = node
        self.limits = limits
        self.tuning = tuning
        self.out: list[pb.Response | _Read] = []
        self.out_bytes = 0  # value bytes of the answers in out that hold their values
        self.deferred = 0  # reads in out whose values are fetched when they go out
        self.unanswered = 0
        # Requests received and not answered yet: id -> (when it expires, its bytes). In arrival order, so
        # in deadline order too, which lets one timer per stream, armed for the oldest, serve them all.
        self.open: dict[int, tuple[float, int]] = {}
        self.open_bytes = 0  # the bytes of the requests in open
        self.open_writes: set[int] = set()  # the ids in open that are writes: an expiry says "unknown"
        self._expiry: asyncio.TimerHandle | None = None
        self.closed = False  # the call is over: late callbacks drop their answers
        self.wake = asyncio.Event()  # for the writer: answers queued, or reading ended
        self.room = asyncio.Event()  # for the reader: below both bounds on unanswered requests
        self.room.set()
        self._task: asyncio.Task[Any] | None = None  # the call's handler, which run() runs in
        self._writing_since: float | None = None  # when the write in flight began
        self._watchdog: asyncio.TimerHandle | None = None  # _watch, armed while writes go on
        self._stalled = False  # the watchdog ended the call

    async def run(
        self, requests: AsyncIterator[pb.RequestBatch], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Serve until the client has sent its last request and every one of them is answered."""
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        self._task = asyncio.current_task()
        try:
            await self._write(context, reader)
        except RequestFailed as e:  # the reader's refusal of the stream
            await context.abort(e.code, e.message, e.trailers())
        except asyncio.CancelledError:
            if not self._stalled:
                raise
            assert self._task is not None
            self._task.uncancel()  # our own watchdog's cancellation: the call goes on, to its status
            timeout = self.limits.stream_write_timeout_s
            log.info("Ended a stream from %s: its client read no answer for %gs", context.peer(), timeout)
            message = f"the client read no answer for {timeout:g}s (--stream-write-timeout)"
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        finally:
            self.closed = True
            reader.cancel()
            if self._expiry is not None:
                self._expiry.cancel()
            if self._watchdog is not None:
                self._watchdog.cancel()

    async def _read(self, requests: AsyncIterator[pb.RequestBatch]) -> None:
        try:
            async for batch in requests:
                if len(batch.requests) > self.limits.max_batch_requests:
                    # No outcome: the stream's earlier writes may be in flight, and their outcome is unknown.
                    raise RequestFailed(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"a batch of {len(batch.requests)} requests; this node takes at most "
                        f"{self.limits.max_batch_requests} in one (--max-batch-requests), and started none",
                    )
                self.serve(batch)
                if not self._has_room():
                    self.room.clear()
                    await self.room.wait()
        finally:
            self.wake.set()

    async def _write(self, context: grpc.aio.ServicerContext[Any, Any], reader: asyncio.Task[None]) -> None:
        while True:
            self.wake.clear()
            if self.out:
                responses = self._take()
                self._writing_since = asyncio.get_running_loop().time()
                if self._watchdog is None:
                    self._arm_watchdog(self._writing_since)
                await context.write(pb.ResponseBatch(responses=responses))
                self._writing_since = None
                self.unanswered -= len(responses)
                if self._has_room():
                    self.room.set()
            elif reader.done() and (self.unanswered == 0 or reader.cancelled() or reader.exception()):
                reader.result()  # a refusal (RequestFailed), else a bug in serving: let gRPC report it
                return
            else:
                await self.wake.wait()

    def _arm_watchdog(self, since: float) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_at(since + self.limits.stream_write_timeout_s, self._watch)

    def _watch(self) -> None:
        """End the call if the write in flight has waited Limits.stream_write_timeout_s (its client reads
        nothing), else wait for the deadline of the one in flight now. One timer per stream, not one per
        write: a timer per write, cancelled at once, fills the event loop's heap with dead ones (the
        peer transport's watchdog does the same; raftd.transport.peer)."""
        self._watchdog = None
        if self._writing_since is None or self.closed or self._task is None:
            return
        if asyncio.get_running_loop().time() >= self._writing_since + self.limits.stream_write_timeout_s:
            self._stalled = True
            self._task.cancel()
        else:
            self._arm_watchdog(self._writing_since)

    def _has_room(self) -> bool:
        limits = self.limits
        return self.unanswered < limits.max_stream_requests and self.open_bytes < limits.max_stream_bytes

    def _take(self) -> list[pb.Response]:
        """The longest prefix of the queue whose values fit in one message (at least one answer); all of
        it, at once, in the common case of small values that hold their values already."""
        most = self.tuning.response_batch_bytes
        if not self.deferred and self.out_bytes <= most:
            everything, self.out, self.out_bytes = self.out, [], 0
            return cast(list[pb.Response], everything)  # no _Read in it: deferred is 0
        out = self.out
        taken: list[pb.Response] = []
        size = i = 0
        while i < len(out):
            queued = out[i]
            if isinstance(queued, _Read):
                self.deferred -= 1
                item = out[i] = self._read_now(queued)
                self.out_bytes += len(item.get.value)
            else:
                item = queued
            weight = len(item.get.value)
            if taken and size + weight > most:
                break
            taken.append(item)
            size += weight
            i += 1
        del out[:i]
        self.out_bytes -= size
        return taken

    def _read_now(self, read: _Read) -> pb.Response:
        try:
            value, index = self.node.local_read(read.key)
        except Unavailable as e:
            return pb.Response(id=read.id, error=failure(e, write=False).to_pb())
        return pb.Response(
            id=read.id, get=pb.GetResponse(found=value is not None, value=value or b"", index=index)
        )

    # -- serving ------------------------------------------------------------------------------------
    def serve(self, batch: pb.RequestBatch) -> None:
        """Start every request of a batch; its linearizable reads share one ReadIndex round. An id that is
        already open, or repeated in the batch, is started once."""
        reads: list[tuple[int, bytes]] = []
        fresh: dict[int, pb.Request] = {}  # id -> its first request in the batch, if not open already
        for request in batch.requests:
            if request.id not in self.open:
                fresh.setdefault(request.id, request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.tuning.max_deadline_s
        for rid, request in fresh.items():
            weight = _weight(request)
            self.open[rid] = (deadline, weight)
            self.open_bytes += weight
        self.open_writes.update(rid for rid, r in fresh.items() if r.WhichOneof("op") in ("put", "delete"))
        self.unanswered += len(fresh)
        if fresh and self._expiry is None:
            self._expiry = loop.call_at(deadline + self.tuning.stream_expiry_grain_s, self._expire)
        for request in fresh.values():
            kind = request.WhichOneof("op")
            try:
                if kind == "put":
                    self._propose(request.id, kind, put_command(request.put, self.limits))
                elif kind == "delete":
                    self._propose(request.id, kind, delete_command(request.delete, self.limits))
                elif kind == "get":
                    key = check_key(request.get.key, self.limits)
                    if request.get.local:
                        self._local_read(request.id, key)
                    else:
                        reads.append((request.id, key))
                else:
                    raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, "the request carries no operation")
            except RequestFailed as e:
                self._fail(request.id, failure(e, write=kind != "get"))
        if reads:
            try:
                barrier = self.node.read_barrier_nowait()
            except Unavailable as e:
                for rid, _ in reads:
                    self._fail(rid, failure(e, write=False))
            else:
                barrier.add_done_callback(functools.partial(self._barrier_passed, reads))

    def _propose(self, rid: int, kind: str, cmd: Command) -> None:
        try:
            future = self.node.propose_nowait(cmd)
        except (NotLeader, Unavailable) as e:
            raise failure(e, write=True) from None
        future.add_done_callback(functools.partial(self._written, rid, kind))

    def _written(self, rid: int, kind: str, future: asyncio.Future[Result]) -> None:
        try:
            result = future.result()
        except (Exception, asyncio.CancelledError) as e:
            self._fail(rid, failure(e, write=True))
            return
        if kind == "put":
            self._answer(pb.Response(id=rid, put=pb.PutResponse(index=result.index)))
        else:
            deleted = pb.DeleteResponse(deleted=result.existed, index=result.index)
            self._answer(pb.Response(id=rid, delete=deleted))

    def _barrier_passed(self, reads: list[tuple[int, bytes]], barrier: asyncio.Future[int]) -> None:
        try:
            barrier.result()
        except (Exception, asyncio.CancelledError) as e:
            failed = failure(e, write=False)
            for rid, _ in reads:
                self._fail(rid, failed)
            return
        for rid, key in reads:
            self._local_read(rid, key)

    def _local_read(self, rid: int, key: bytes) -> None:
        """Answer a read now while the queue holds less than a message's worth of values; past that, its
        value is fetched as it goes out (_take). A value read later than its read was confirmed is still
        linearizable (the answer has not been sent, and the state only moves on), and a client that does
        not read then holds no values queued here."""
        if self.deferred or self.out_bytes >= self.tuning.response_batch_bytes:
            self._answer(_Read(rid, key))
        else:
            self._answer(self._read_now(_Read(rid, key)))

    def _expire(self) -> None:
        """Answer the requests past their deadline, then sleep until the oldest one left is due.

        One timer per stream rather than one per batch: under load those filled the loop's timer heap
        (every batch of a minute), and they kept firing for a minute after the load ended. It runs
        Tuning.stream_expiry_grain_s late, so that the requests of a stuck stream expire in a few rounds, not
        one each.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = [rid for rid, _ in itertools.takewhile(lambda item: item[1][0] <= now, self.open.items())]
        for rid in due:
            message = f"no outcome within {self.tuning.max_deadline_s:g}s"
            if rid in self.open_writes:
                failed = RequestFailed(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"{message}; the write may have applied", UNKNOWN
                )
            else:
                failed = RequestFailed(grpc.StatusCode.DEADLINE_EXCEEDED, message)
            self._fail(rid, failed)
        self._expiry = None
        if self.open and not self.closed:
            oldest, _ = next(iter(self.open.values()))
            self._expiry = loop.call_at(oldest + self.tuning.stream_expiry_grain_s, self._expire)

    def _fail(self, rid: int, e: RequestFailed) -> None:
        self._answer(pb.Response(id=rid, error=e.to_pb()))

    def _answer(self, response: pb.Response | _Read) -> None:
        """Queue the one answer to a request; a later one (its outcome after it expired) is dropped."""
        opened = None if self.closed else self.open.pop(response.id, None)
        if opened is None:
            return
        self.open_bytes -= opened[1]
        self.open_writes.discard(response.id)
        self.out.append(response)
        if isinstance(response, _Read):
            self.deferred += 1
        else:
            self.out_bytes += len(response.get.value)
        self.wake.set()


def _weight(request: pb.Request) -> int:
    """What a request holds here until answered: its key and value (the rest is a few bytes)."""
    kind = request.WhichOneof("op")
    if kind == "put":
        return len(request.put.key) + len(request.put.value)
    if kind == "get":
        return len(request.get.key)
    if kind == "delete":
        return len(request.delete.key)
    return 0
