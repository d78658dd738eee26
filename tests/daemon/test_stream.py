"""KV.Stream on real processes: every request answered once, errors per request, leader hints, reads that
stay linearizable, and a quiet end when the client goes away or the node stops.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from raftctl.client import _hint
from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc

from .cluster import Cluster, cluster_of

CALL_TIMEOUT_S = 20.0
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(tmp_path_factory.mktemp("stream")) as c:
        yield c


def _key(prefix: str) -> bytes:
    return f"{prefix}-{uuid.uuid4().hex[:8]}".encode()


def put(rid: int, key: bytes, value: bytes) -> pb.Request:
    return pb.Request(id=rid, put=pb.PutRequest(key=key, value=value))


def get(rid: int, key: bytes, local: bool = False) -> pb.Request:
    return pb.Request(id=rid, get=pb.GetRequest(key=key, local=local))


def delete(rid: int, key: bytes) -> pb.Request:
    return pb.Request(id=rid, delete=pb.DeleteRequest(key=key))


class Conversation:
    """One Stream call, batch by batch: ask() sends a batch and waits until each of its ids is answered."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = kv_pb2_grpc.KVStub(channel).Stream(timeout=CALL_TIMEOUT_S)
        self.seen: set[int] = set()

    async def ask(self, *requests: pb.Request) -> dict[int, pb.Response]:
        await self.call.write(pb.RequestBatch(requests=requests))
        wanted = {r.id for r in requests}
        got: dict[int, pb.Response] = {}
        while wanted - got.keys():
            batch = await self.call.read()
            assert batch is not grpc.aio.EOF, f"the stream ended before {sorted(wanted - got.keys())}"
            for r in batch.responses:
                assert r.id in wanted and r.id not in self.seen, f"unexpected or repeated answer {r}"
                self.seen.add(r.id)
                got[r.id] = r
        return got

    async def end(self) -> None:
        """Half-close: the node ends the call, with nothing more to say, once all is answered."""
        await self.call.done_writing()
        assert await self.call.read() is grpc.aio.EOF
        assert await self.call.code() == grpc.StatusCode.OK


def talk(address: str, script: object) -> None:
    """Run script(conversation) on a fresh channel to address."""

    async def go() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            await script(Conversation(channel))  # type: ignore[operator]

    asyncio.run(go())


def test_mixed_batch_answers_every_id_once_and_errors_do_not_end_the_stream(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    old, doomed, new, absent = _key("old"), _key("doomed"), _key("new"), _key("absent")
    cluster.put(leader, old, "o")
    cluster.put(leader, doomed, "d")

    async def script(s: Conversation) -> None:
        # The ids are the client's own choice: any distinct numbers, in any order.
        first = await s.ask(
            put(70, new, b"1"),
            delete(5, doomed),
            delete(600, absent),
            get(9, old),
            get(10, absent),
            get(11, old, local=True),
            put(12, b"", b"x"),
            get(13, b"\xff"),
            put(14, _key("big"), b"v" * (1024 * 1024 + 1)),
            pb.Request(id=15),
        )
        assert first[70].WhichOneof("result") == "put" and first[70].put.index > 0
        assert first[5].delete.deleted and not first[600].delete.deleted
        assert first[5].delete.index > 0 and first[600].delete.index > 0
        assert first[9].get.found and first[9].get.value == b"o" and first[9].get.index > 0
        assert first[10].WhichOneof("result") == "get" and not first[10].get.found
        assert first[11].get.found and first[11].get.value == b"o"
        errors = {rid: first[rid].error for rid in (12, 13, 14, 15)}
        assert all(first[rid].WhichOneof("result") == "error" for rid in errors)
        assert {e.code for e in errors.values()} == {INVALID}
        assert errors[12].message == "the key is empty" and errors[13].message == "the key is not valid UTF-8"
        assert "the limit is 1048576" in errors[14].message
        assert errors[15].message == "the request carries no operation"
        # The same stream goes on after the refusals.
        second = await s.ask(get(1, new), get(2, doomed))
        assert second[1].get.value == b"1" and not second[2].get.found
        third = await s.ask(put(3, new, b"2"))
        assert third[3].put.index > first[70].put.index
        assert (await s.ask(get(4, new)))[4].get.value == b"2"
        await s.end()

    talk(cluster.address(leader), script)


def test_a_follower_refuses_writes_with_the_leader_hint_and_serves_reads(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    follower = cluster.followers(leader)[0]
    key = _key("f")
    cluster.put(leader, key, "v")

    async def script(s: Conversation) -> None:
        got = await s.ask(put(1, key, b"w"), delete(2, key), get(3, key))
        for rid in (1, 2):
            error = got[rid].error
            hint = f"not the leader; try {cluster.address(leader)}"
            assert (error.code, error.message, error.leader) == (UNAVAILABLE, hint, cluster.address(leader))
            assert _hint(error.message) == cluster.address(leader), "the form older clients follow"
        assert got[3].get.found and got[3].get.value == b"v", "a linearizable read is served by a follower"
        await s.end()

    talk(cluster.address(follower), script)
    assert cluster.get(leader, key).value == b"v", "the refused writes did not apply"


def test_a_read_after_an_acknowledged_write_sees_it_on_every_node(cluster: Cluster) -> None:
    """Writes acknowledged on the leader's stream; linearizable reads on every node's stream, at once."""
    leader = cluster.wait_leader()
    key = _key("lin")

    async def go() -> None:
        channels = [grpc.aio.insecure_channel(cluster.address(i)) for i in range(cluster.n)]
        try:
            streams = [Conversation(ch) for ch in channels]
            for n in range(1, 21):
                ack = await streams[leader].ask(put(n, key, str(n).encode()))
                assert ack[n].WhichOneof("result") == "put"
                for i, s in enumerate(streams):
                    got = (await s.ask(get(1000 * n + i, key)))[1000 * n + i]
                    assert got.get.value == str(n).encode(), f"node {i} missed acknowledged write {n}"
                    assert got.get.index >= ack[n].put.index
            for s in streams:
                await s.end()
        finally:
            for ch in channels:
                await ch.close()

    asyncio.run(go())


def test_a_stream_ends_quietly_when_the_client_leaves_or_the_node_stops(tmp_path: Path) -> None:
    """Answers that complete after the client left are dropped; a stopping node ends its streams itself
    (no traceback from gRPC cancelling a handler, no "exception never retrieved")."""
    with cluster_of(tmp_path) as c:
        leader = c.wait_leader()
        follower = c.followers(leader)[0]

        async def go() -> None:
            async with (
                grpc.aio.insecure_channel(c.address(leader)) as to_leader,
                grpc.aio.insecure_channel(c.address(follower)) as to_follower,
            ):
                gone = kv_pb2_grpc.KVStub(to_leader).Stream()
                await gone.write(pb.RequestBatch(requests=[put(i, _key("gone"), b"v") for i in range(50)]))
                gone.cancel()  # with the writes still in flight
                staying = Conversation(to_leader)
                assert (await staying.ask(put(1, _key("k"), b"v")))[1].put.index > 0
                idle = Conversation(to_follower)
                assert (await idle.ask(get(1, _key("k"))))[1].WhichOneof("result") == "get"
                loop = asyncio.get_running_loop()
                for node, s in ((follower, idle), (leader, staying)):
                    assert await loop.run_in_executor(None, c.terminate, node) == 0
                    try:
                        assert await s.call.read() is grpc.aio.EOF
                    except grpc.aio.AioRpcError as e:
                        assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), e

        asyncio.run(go())
        for i in (leader, follower):
            err = c.stderr(i)
            assert "Traceback" not in err and "never retrieved" not in err, err
