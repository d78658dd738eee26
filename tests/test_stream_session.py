"""KV.Stream's per-stream bookkeeping, in-process: a request whose outcome never comes is answered anyway."""

from __future__ import annotations

import asyncio

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

    async def scenario() -> None:
        node = StuckNode()
        session = StreamSession(node)  # type: ignore[arg-type]
        put = pb.Request(id=7, put=pb.PutRequest(key=b"k", value=b"v"))
        session.serve(pb.RequestBatch(requests=[put, put]))  # a repeated id counts once
        assert session.unanswered == 1 and session.out == []
        await asyncio.sleep(0.15)
        expired = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert [(r.id, r.error.code) for r in session.out] == [(7, expired)]
        node.futures[0].set_result(Result(index=5, existed=False))
        await asyncio.sleep(0)
        assert len(session.out) == 1, "the late outcome must not answer the request a second time"

    asyncio.run(scenario())
