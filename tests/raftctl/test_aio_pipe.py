"""The async client's stream pipe, against a fake call: what it sends and when."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from raftctl.aio import RequestError, _Pipe
from raftd.pb import kv_pb2 as pb


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
        pipe = _Pipe(_FakeStub(call))  # type: ignore[arg-type]
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
        pipe = _Pipe(_FakeStub(_FakeCall()))  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        expired, live = loop.create_future(), loop.create_future()
        expired.set_exception(RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer"))
        expired.exception()  # retrieved, as its caller would
        pipe.waiting = {1: expired, 2: live}
        pipe.queue = [pb.Request(id=1), pb.Request(id=2)]
        assert [r.id for r in pipe._take()] == [2]

    asyncio.run(main())
