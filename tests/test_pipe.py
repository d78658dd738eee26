"""The stream pipe (raftd.pipe), against a fake call: what it sends, when, and what a failure says."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from raftd.pb import kv_pb2 as pb
from raftd.pipe import MAX_BATCH_REQUESTS, NOT_APPLIED, UNKNOWN, Pipe, RequestError
from raftd.settings import Limits


class _FakeCall:
    """A KV.Stream call whose first write stays in flight until released; it never answers."""

    def __init__(self) -> None:
        self.sent: list[list[int]] = []
        self.release = asyncio.Event()

    async def write(self, batch: pb.RequestBatch) -> None:
        self.sent.append([r.id for r in batch.requests])
        if len(self.sent) == 1:
            await self.release.wait()

    async def read(self) -> pb.ResponseBatch:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def cancel(self) -> None:
        pass


class _FakeStub:
    def __init__(self, call: _FakeCall) -> None:
        self.call = call

    def Stream(self) -> _FakeCall:
        return self.call


def test_a_request_that_expires_while_queued_is_not_sent() -> None:
    async def main() -> None:
        call = _FakeCall()
        pipe = Pipe(_FakeStub(call))  # type: ignore[arg-type]
        first = asyncio.create_task(pipe.request(pb.Request(), timeout=5))
        await asyncio.sleep(0.05)  # the first request's write is now in flight
        with pytest.raises(RequestError) as expired:
            await pipe.request(pb.Request(), timeout=0.05)  # queued behind it, and gives up
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        third = asyncio.create_task(pipe.request(pb.Request(), timeout=5))
        await asyncio.sleep(0)
        call.release.set()
        await asyncio.sleep(0.05)
        assert call.sent == [[1], [3]], "the expired request 2 was not sent"
        first.cancel()
        third.cancel()
        await pipe.close()

    asyncio.run(main())


def test_a_request_whose_deadline_fired_is_not_taken_even_before_its_caller_resumes() -> None:
    """The deadline may fire in the loop turn in which a write completes: the caller has not yet removed
    its entry, but its future is done (review finding)."""

    async def main() -> None:
        pipe = Pipe(_FakeStub(_FakeCall()))  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        expired, live = loop.create_future(), loop.create_future()
        expired.set_exception(RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer"))
        expired.exception()  # retrieved, as its caller would
        pipe.waiting = {1: expired, 2: live}
        pipe.queue = [pb.Request(id=1), pb.Request(id=2)]
        assert [r.id for r in pipe._take()] == [2]

    asyncio.run(main())


def test_a_write_expired_while_queued_did_not_apply_one_expired_after_sending_may_have() -> None:
    async def main() -> None:
        call = _FakeCall()
        pipe = Pipe(_FakeStub(call))  # type: ignore[arg-type]
        with pytest.raises(RequestError) as sent:
            await pipe.request(pb.Request(), timeout=0.05)  # written (the write stays in flight), unanswered
        with pytest.raises(RequestError) as queued:
            await pipe.request(pb.Request(), timeout=0.05)  # queued behind that write
        assert (sent.value.outcome, queued.value.outcome) == (UNKNOWN, NOT_APPLIED)
        await pipe.close()

    asyncio.run(main())


class _BreakingCall(_FakeCall):
    """Its first write stays in flight until the stream breaks; then every call fails."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = asyncio.Event()
        self.error = RequestError(grpc.StatusCode.UNAVAILABLE, "Stream removed")

    async def read(self) -> pb.ResponseBatch:
        await self.broken.wait()
        raise self.error


def test_a_broken_stream_fails_what_it_carried_as_unknown_and_the_rest_as_not_applied() -> None:
    async def main() -> None:
        call = _BreakingCall()
        pipe = Pipe(_FakeStub(call))  # type: ignore[arg-type]
        carried = asyncio.create_task(pipe.request(pb.Request(), timeout=5))
        await asyncio.sleep(0.05)  # its write is in flight
        queued = asyncio.create_task(pipe.request(pb.Request(), timeout=5))
        await asyncio.sleep(0.05)
        call.broken.set()
        outcomes = []
        for task in (carried, queued):
            with pytest.raises(RequestError) as failed:
                await task
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            outcomes.append(failed.value.outcome)
        assert outcomes == [UNKNOWN, NOT_APPLIED]
        await pipe.close()

    asyncio.run(main())


class _AnsweringCall(_FakeCall):
    """Answers every request with the given error."""

    def __init__(self, error: pb.Error) -> None:
        super().__init__()
        self.error = error
        self.answers: asyncio.Queue[pb.ResponseBatch] = asyncio.Queue()

    async def write(self, batch: pb.RequestBatch) -> None:
        self.sent.append([r.id for r in batch.requests])
        responses = [pb.Response(id=r.id, error=self.error) for r in batch.requests]
        self.answers.put_nowait(pb.ResponseBatch(responses=responses))

    async def read(self) -> pb.ResponseBatch:
        return await self.answers.get()


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [(pb.OUTCOME_NOT_APPLIED, NOT_APPLIED), (pb.OUTCOME_UNKNOWN, UNKNOWN), (pb.OUTCOME_UNSPECIFIED, None)],
)
def test_an_error_answer_carries_the_node_s_outcome(outcome: int, expected: str | None) -> None:
    async def main() -> None:
        error = pb.Error(code=grpc.StatusCode.UNAVAILABLE.value[0], message="no leader", outcome=outcome)
        pipe = Pipe(_FakeStub(_AnsweringCall(error)))  # type: ignore[arg-type]
        with pytest.raises(RequestError) as failed:
            await pipe.request(pb.Request(), timeout=5)
        assert (failed.value.code(), failed.value.details(), failed.value.outcome) == (
            grpc.StatusCode.UNAVAILABLE,
            "no leader",
            expected,
        )
        await pipe.close()

    asyncio.run(main())


def test_a_stream_that_never_connected_carried_nothing() -> None:
    async def main() -> None:
        call = _BreakingCall()
        pipe = Pipe(_FakeStub(call))  # type: ignore[arg-type]
        handed = asyncio.create_task(pipe.request(pb.Request(), timeout=5))
        await asyncio.sleep(0.05)  # handed to the stream's write
        call.error = RequestError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
        call.broken.set()
        with pytest.raises(RequestError) as failed:
            await handed
        assert failed.value.outcome == NOT_APPLIED
        await pipe.close()

    asyncio.run(main())


def test_a_batch_carries_at_most_max_batch_requests() -> None:
    """Nodes refuse a batch of more than Limits.max_batch_requests (16,384 by default): the pipe never
    sends one, however many tiny requests are queued."""

    async def main() -> None:
        pipe = Pipe(_FakeStub(_FakeCall()))  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        n = MAX_BATCH_REQUESTS * 2 + 5
        pipe.waiting = {i: loop.create_future() for i in range(n)}
        pipe.queue = [pb.Request(id=i) for i in range(n)]
        sizes = []
        while taken := pipe._take():
            sizes.append(len(taken))
        assert sizes == [MAX_BATCH_REQUESTS, MAX_BATCH_REQUESTS, 5]
        assert Limits.max_batch_requests >= MAX_BATCH_REQUESTS

    asyncio.run(main())
