"""KV.Stream's per-stream bookkeeping, in-process: a request whose outcome never comes is answered anyway."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from raftd.api import stream
from raftd.api.stream import StreamSession
from raftd.kv import Result
from raftd.pb import kv_pb2 as pb


class StuckNode:
    """A leader whose proposals never commit (say, its quorum went away)."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Result]] = []

    def propose_nowait(self, cmd: object) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


def test_a_request_without_an_outcome_expires_and_frees_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "REQUEST_DEADLINE_S", 0.05)
    monkeypatch.setattr(stream, "EXPIRY_GRAIN_S", 0.01)

    async def scenario() -> None:
        node = StuckNode()
        session = StreamSession(node)  # type: ignore[arg-type]
        put = pb.Request(id=7, put=pb.PutRequest(key=b"k", value=b"v"))
        session.serve(pb.RequestBatch(requests=[put, put]))  # a repeated id counts once
        assert session.unanswered == 1 and session.out == []
        await asyncio.sleep(0.18)  # after the timer, before request 101 is due (0.3 s) and its round (0.35 s)
        expired = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert [(r.id, r.error.code) for r in session.out] == [(7, expired)]
        node.futures[0].set_result(Result(index=5, existed=False))
        await asyncio.sleep(0)
        assert len(session.out) == 1, "the late outcome must not answer the request a second time"

    asyncio.run(scenario())


def test_each_request_expires_at_its_own_deadline_from_one_timer_per_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream, "REQUEST_DEADLINE_S", 1.0)
    monkeypatch.setattr(stream, "EXPIRY_GRAIN_S", 0.2)  # the timer runs 1.2 s after the first request

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        timers = 0
        call_at = loop.call_at

        def counting_call_at(
            when: float, callback: Callable[..., object], *args: object, **kwargs: Any
        ) -> asyncio.TimerHandle:
            nonlocal timers
            timers += getattr(callback, "__self__", None) is session  # the session's timers, not sleep()'s
            return call_at(when, callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_at", counting_call_at)  # call_later goes through call_at too
        node = StuckNode()
        session = StreamSession(node)  # type: ignore[arg-type]

        def put(rid: int) -> pb.RequestBatch:
            return pb.RequestBatch(requests=[pb.Request(id=rid, put=pb.PutRequest(key=b"k", value=b"v"))])

        for rid in range(1, 101):
            session.serve(put(rid))
        assert timers == 1, "one timer for the stream, not one per batch"
        node.futures[0].set_result(Result(index=1, existed=False))  # request 1 is answered in time
        await asyncio.sleep(0.5)
        session.serve(put(101))  # arrives 0.5 s later: due at 1.5 s, its round at 1.7 s
        await asyncio.sleep(0.85)
        expired = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert session.out[0].id == 1 and session.out[0].WhichOneof("result") == "put"
        assert [(r.id, r.error.code) for r in session.out[1:]] == [(rid, expired) for rid in range(2, 101)]
        assert 101 in session.open, "not due yet"
        await asyncio.sleep(0.5)
        assert [(r.id, r.error.code) for r in session.out[100:]] == [(101, expired)]
        assert session.open == {} and session._expiry is None, "nothing left to wait for"
        assert timers == 2

    asyncio.run(scenario())
