"""InstallSnapshot over the peer transport: a transfer cut off midway reports failure (so the leader
starts a fresh one), and a complete one arrives byte for byte. In-process, against a scripted receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from raftd.core import Message, MsgType, Snapshot, SnapshotMeta
from raftd.identity import Identity
from raftd.pb import peer_pb2, peer_pb2_grpc
from raftd.settings import Tuning
from raftd.transport.peer import PeerClient

CHUNK_BYTES = 1000  # small chunks: an image of 10 KB goes in several


class Receiver(peer_pb2_grpc.RaftPeerServicer):
    """Takes chunks; with cut_after set, aborts the stream after that many chunks (a dying follower)."""

    def __init__(self, cut_after: int | None) -> None:
        self.cut_after = cut_after
        self.chunks: list[peer_pb2.SnapshotChunk] = []

    async def InstallSnapshot(
        self, chunks: AsyncIterator[peer_pb2.SnapshotChunk], context: grpc.aio.ServicerContext
    ) -> peer_pb2.StepResponse:
        async for chunk in chunks:
            self.chunks.append(chunk)
            if self.cut_after is not None and len(self.chunks) >= self.cut_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "receiver went away")
        return peer_pb2.StepResponse()


async def _transfer(cut_after: int | None, data: bytes) -> tuple[bool, Receiver]:
    receiver = Receiver(cut_after)
    server = grpc.aio.server()
    peer_pb2_grpc.add_RaftPeerServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    identity = Identity("c", "0123456789abcdef")
    tuning = Tuning(snapshot_chunk_bytes=CHUNK_BYTES)
    client = PeerClient(2, f"127.0.0.1:{port}", identity, lambda _peer: None, tuning=tuning)
    try:
        snap = Snapshot(SnapshotMeta(100, 3), data)
        ok = await client.send_snapshot(Message(MsgType.SNAP, to=2, frm=1, term=3, snapshot=snap))
    finally:
        await client.close()
        await server.stop(None)
    return ok, receiver


def test_a_transfer_cut_off_midway_reports_failure() -> None:
    ok, receiver = asyncio.run(_transfer(cut_after=3, data=bytes(range(256)) * 40))
    assert ok is False
    assert 3 <= len(receiver.chunks) < 1 + 10240 // CHUNK_BYTES


def test_a_complete_transfer_arrives_intact() -> None:
    data = bytes(range(256)) * 40
    ok, receiver = asyncio.run(_transfer(cut_after=None, data=data))
    assert ok is True
    first, rest = receiver.chunks[0], receiver.chunks[1:]
    assert (first.cluster, first.cluster_id, first.total_size) == ("c", "0123456789abcdef", len(data))
    assert (first.header.snapshot.meta.index, first.header.snapshot.meta.term) == (100, 3)
    assert first.header.snapshot.data == b""  # the image travels in the chunks, not in the header
    assert b"".join(c.data for c in rest) == data
    assert all(len(c.data) <= CHUNK_BYTES for c in rest)
