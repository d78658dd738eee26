"""KV.Stream's per-stream bookkeeping, in-process: a request whose outcome never comes is answered anyway,
and what a stream holds is bounded however its client behaves (issue 19)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from raftd.api.stream import StreamSession
from raftd.kv import Result
from raftd.pb import kv_pb2 as pb
from raftd.settings import DEFAULTS, TUNING, Limits, Tuning


class StuckNode:
    """A leader whose proposals never commit (say, its quorum went away)."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Result]] = []

    def propose_nowait(self, cmd: object) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


def test_a_request_without_an_outcome_expires_and_frees_its_slot() -> None:
    tuning = Tuning(max_deadline_s=0.05, stream_expiry_grain_s=0.01)

    async def scenario() -> None:
        node = StuckNode()
        session = StreamSession(node, DEFAULTS, tuning)  # type: ignore[arg-type]
        put = pb.Request(id=7, put=pb.PutRequest(key=b"k", value=b"v"))
        session.serve(pb.RequestBatch(requests=[put, put]))  # a repeated id counts once
        session.serve(pb.RequestBatch(requests=[put]))  # and so does one that is still open
        assert session.unanswered == 1 and session.out == []
        assert len(node.futures) == 1, "a repeated id must not be proposed again"
        await asyncio.sleep(0.15)  # the timer runs at 0.06 s
        expired = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert [(r.id, r.error.code) for r in session.out] == [(7, expired)]
        node.futures[0].set_result(Result(index=5, existed=False))
        await asyncio.sleep(0)
        assert len(session.out) == 1, "the late outcome must not answer the request a second time"

    asyncio.run(scenario())


def test_each_request_expires_at_its_own_deadline_from_one_timer_per_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tuning = Tuning(max_deadline_s=1.0, stream_expiry_grain_s=0.2)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        clock = loop.time()
        monkeypatch.setattr(loop, "time", lambda: clock)  # no real timer comes due: the test runs them
        armed: list[float] = []
        call_at = loop.call_at

        def recording_call_at(
            when: float, callback: Callable[..., object], *args: object, **kwargs: Any
        ) -> asyncio.TimerHandle:
            if getattr(callback, "__self__", None) is session:
                armed.append(when - start)
            return call_at(when, callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_at", recording_call_at)  # call_later goes through call_at too
        node = StuckNode()
        session = StreamSession(node, DEFAULTS, tuning)  # type: ignore[arg-type]
        start = clock

        def put(rid: int) -> pb.RequestBatch:
            return pb.RequestBatch(requests=[pb.Request(id=rid, put=pb.PutRequest(key=b"k", value=b"v"))])

        for rid in range(1, 101):
            session.serve(put(rid))
        assert armed == [pytest.approx(1.2)], "one timer for the stream, not one per batch"
        node.futures[0].set_result(Result(index=1, existed=False))  # request 1 is answered in time
        await asyncio.sleep(0)
        clock = start + 0.5
        session.serve(put(101))  # due at 1.5 s
        clock = start + 1.2
        session._expire()  # the timer's run
        expired = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert session.out[0].id == 1 and session.out[0].WhichOneof("result") == "put"
        assert [(r.id, r.error.code) for r in session.out[1:]] == [(rid, expired) for rid in range(2, 101)]
        assert list(session.open) == [101], "not due yet"
        assert armed == [pytest.approx(1.2), pytest.approx(1.7)], "next, the oldest open request's round"
        clock = start + 1.7
        session._expire()
        assert [(r.id, r.error.code) for r in session.out[100:]] == [(101, expired)]
        assert session.open == {} and session._expiry is None, "nothing left to wait for"
        assert len(armed) == 2

    asyncio.run(scenario())


class AnsweringNode(StuckNode):
    def propose_nowait(self, cmd: object) -> asyncio.Future[Result]:
        future = super().propose_nowait(cmd)
        future.set_result(Result(index=len(self.futures), existed=False))
        return future


class Context:
    def __init__(self) -> None:
        self.written: list[pb.ResponseBatch] = []

    async def write(self, batch: pb.ResponseBatch) -> None:
        self.written.append(batch)


def test_the_expiry_timer_ends_with_the_call() -> None:
    async def scenario() -> None:
        session = StreamSession(AnsweringNode(), DEFAULTS, TUNING)  # type: ignore[arg-type]

        async def requests() -> AsyncIterator[pb.RequestBatch]:
            yield pb.RequestBatch(requests=[pb.Request(id=1, put=pb.PutRequest(key=b"k", value=b"v"))])

        context = Context()
        await session.run(requests(), context)  # type: ignore[arg-type]
        assert [r.id for batch in context.written for r in batch.responses] == [1]
        assert session._expiry is not None and session._expiry.cancelled(), "no timer outlives its call"

    asyncio.run(scenario())


MIB = 1024 * 1024


class ReadingNode(AnsweringNode):
    """A node holding one 1 MiB value under every key, counting the reads of it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read_barrier_nowait(self) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_result(1)
        return future

    def local_read(self, key: bytes) -> tuple[bytes, int]:
        self.reads += 1
        return b"v" * MIB, 1


class StalledContext(Context):
    """A client that stopped reading: once gRPC's window is full, write() never returns."""

    def __init__(self, window: int = 1) -> None:
        super().__init__()
        self.window = window
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def write(self, batch: pb.ResponseBatch) -> None:
        if len(self.written) >= self.window:
            await asyncio.Event().wait()
        self.written.append(batch)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise asyncio.CancelledError  # as grpc.aio's abort ends the handler

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def _gets(first: int, n: int) -> pb.RequestBatch:
    return pb.RequestBatch(
        requests=[pb.Request(id=i, get=pb.GetRequest(key=b"k")) for i in range(first, first + n)]
    )


def test_reads_queued_behind_a_slow_reader_hold_no_values() -> None:
    """The issue's probe: 1,500 Gets of a 1 MiB value on a stream whose client never reads grew the node by
    912 MB. Values are fetched as answers go out, one message's worth at a time."""

    async def scenario() -> None:
        node = ReadingNode()
        session = StreamSession(node, Limits(stream_write_timeout_s=60), TUNING)  # type: ignore[arg-type]
        context = StalledContext(window=1)

        async def requests() -> AsyncIterator[pb.RequestBatch]:
            yield _gets(1, 1500)
            await asyncio.Event().wait()

        task = asyncio.get_running_loop().create_task(session.run(requests(), context))  # type: ignore[arg-type]
        for _ in range(20):
            await asyncio.sleep(0)
        sent = sum(len(v) for b in context.written for r in b.responses for v in [r.get.value])
        assert 0 < sent <= TUNING.response_batch_bytes, "one message's worth sent"
        # One message sent, one in the write that never returns, and the value that did not fit in it.
        most = 2 * TUNING.response_batch_bytes // MIB + 1
        assert node.reads <= most, f"{node.reads} values fetched for a stalled client"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_a_stream_reads_no_more_requests_past_its_byte_bound() -> None:
    async def scenario() -> None:
        node = StuckNode()  # writes never commit: every put stays unanswered
        session = StreamSession(node, Limits(max_stream_bytes=3 * MIB), TUNING)  # type: ignore[arg-type]
        read = 0

        async def requests() -> AsyncIterator[pb.RequestBatch]:
            nonlocal read
            for i in range(1, 1000):
                read += 1
                yield pb.RequestBatch(
                    requests=[pb.Request(id=i, put=pb.PutRequest(key=b"k", value=b"v" * MIB))]
                )

        task = asyncio.get_running_loop().create_task(session.run(requests(), Context()))  # type: ignore[arg-type]
        for _ in range(50):
            await asyncio.sleep(0)
        assert read == 3 and session.open_bytes == 3 * (MIB + 1), "reading pauses once 3 MiB are held"
        assert len(node.futures) == 3
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_a_stream_reads_no_more_requests_past_its_count_bound() -> None:
    """--max-stream-requests: tiny requests weigh little in bytes, so their count is bounded too."""

    async def scenario() -> None:
        node = StuckNode()
        session = StreamSession(node, Limits(max_stream_requests=5), TUNING)  # type: ignore[arg-type]
        read = 0

        async def requests() -> AsyncIterator[pb.RequestBatch]:
            nonlocal read
            for i in range(1, 1000):
                read += 1
                yield pb.RequestBatch(requests=[pb.Request(id=i, put=pb.PutRequest(key=b"k", value=b"v"))])

        task = asyncio.get_running_loop().create_task(session.run(requests(), Context()))  # type: ignore[arg-type]
        for _ in range(50):
            await asyncio.sleep(0)
        assert read == 5 and session.unanswered == 5, "reading pauses once 5 requests are unanswered"
        node.futures[0].set_result(Result(index=1, existed=False))
        for _ in range(50):
            await asyncio.sleep(0)
        assert read == 6 and session.unanswered == 5, "an answer makes room for one more"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_a_client_that_reads_nothing_is_cut_off() -> None:
    async def scenario() -> None:
        node = ReadingNode()
        session = StreamSession(node, Limits(stream_write_timeout_s=0.05), TUNING)  # type: ignore[arg-type]
        context = StalledContext(window=0)

        async def requests() -> AsyncIterator[pb.RequestBatch]:
            yield _gets(1, 10)
            await asyncio.Event().wait()

        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(session.run(requests(), context), 5)  # type: ignore[arg-type]
        assert context.aborted is not None
        code, details = context.aborted
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details == "the client read no answer for 0.05s (--stream-write-timeout)"
        assert session.closed

    asyncio.run(scenario())


class Aborted(Exception):
    """grpc.aio's abort() raises an AbortError, an Exception."""


class RefusingContext(Context):
    def __init__(self) -> None:
        super().__init__()
        self.aborted: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None

    async def abort(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...]) -> None:
        self.aborted = (code, details, trailers)
        raise Aborted(details)


def test_a_batch_of_too_many_requests_ends_the_stream_before_any_starts() -> None:
    """A 64 MiB message of tiny requests is millions of them, each far bigger in memory than on the wire:
    the count per batch is bounded, not only the bytes."""

    async def scenario() -> None:
        node = StuckNode()
        session = StreamSession(node, Limits(max_batch_requests=100), TUNING)  # type: ignore[arg-type]
        context = RefusingContext()

        def puts(first: int, n: int) -> pb.RequestBatch:
            return pb.RequestBatch(
                requests=[
                    pb.Request(id=i, put=pb.PutRequest(key=b"k", value=b"")) for i in range(first, first + n)
                ]
            )

        async def requests() -> AsyncIterator[pb.RequestBatch]:
            yield puts(1, 100)  # at the bound: taken
            yield puts(101, 101)

        with pytest.raises(Aborted):
            await asyncio.wait_for(session.run(requests(), context), 5)  # type: ignore[arg-type]
        assert session.closed
        assert len(node.futures) == 100, "the first batch started, none of the second"
        assert context.aborted is not None
        code, details, trailers = context.aborted
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "a batch of 101 requests" in details and "--max-batch-requests" in details
        assert trailers == (), "no outcome: the first batch's writes may apply"

    asyncio.run(scenario())
