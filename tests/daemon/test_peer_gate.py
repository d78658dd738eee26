"""A node takes Raft traffic only from its members' addresses (issue 19): a caller from 127.0.0.2, where
the map puts every member on 127.0.0.1, is refused before its messages are read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from raftd.core import Message, MsgType
from raftd.pb import peer_pb2, peer_pb2_grpc
from raftd.transport.codec import message_to_pb

from .cluster import cluster_of


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def relay(port: int, source: str) -> AsyncIterator[str]:
    """A TCP relay on 127.0.0.1 whose connections reach 127.0.0.1:port from the source address given:
    gRPC's client cannot choose its own."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def _one_batch(cluster: str) -> AsyncIterator[peer_pb2.MessageBatch]:
    m = Message(MsgType.HEARTBEAT, to=1, frm=2, term=1)
    yield peer_pb2.MessageBatch(cluster=cluster, messages=[message_to_pb(m)], version=1)


async def _call(address: str) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = peer_pb2_grpc.RaftPeerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            # A cluster name that is not this one: a caller let through is refused by the next check.
            await stub.Stream(_one_batch("some-other-cluster"), timeout=10)
        return refused.value


def test_peer_calls_from_an_address_no_member_has_are_refused(tmp_path: Path) -> None:
    with cluster_of(tmp_path) as c:
        leader = c.wait_leader()
        port = c.ports[leader]

        async def main() -> tuple[grpc.aio.AioRpcError, grpc.aio.AioRpcError]:
            async with relay(port, "127.0.0.2") as stranger, relay(port, "127.0.0.1") as member:
                return await _call(stranger), await _call(member)

        from_stranger, from_member = asyncio.run(main())
        assert from_stranger.code() is grpc.StatusCode.PERMISSION_DENIED, from_stranger
        assert "127.0.0.2" in (from_stranger.details() or "")
        assert from_member.code() is grpc.StatusCode.FAILED_PRECONDITION, from_member
        c.wait_log(leader, r"Refused peer traffic from 127\.0\.0\.2: not an address of a member")
        assert c.put(leader, "after", "v").index > 0  # the members themselves are still heard
        assert "Traceback" not in c.stderr(leader)
