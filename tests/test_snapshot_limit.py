"""InstallSnapshot refuses an image larger than --max-snapshot-bytes before buffering any of it (issue 19:
a caller announced 10 GiB and streamed 300 MiB, all of it buffered)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from raftd.core import Message, MsgType, Snapshot, SnapshotMeta
from raftd.pb import peer_pb2
from raftd.server import PeerService
from raftd.settings import Limits
from raftd.transport.codec import message_to_pb

from .nodes import follower, release_node


class Aborted(Exception):
    pass


class Context:
    """What PeerService asks of a call's context."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.status: tuple[grpc.StatusCode, str] | None = None

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise Aborted(details)


def test_a_snapshot_over_the_maximum_is_refused_before_its_data_is_read(tmp_path: Path) -> None:
    """The issue's probe announced 10 GiB and streamed 300 MiB, all of it buffered."""

    async def main() -> None:
        node = follower(tmp_path, limits=Limits(max_snapshot_bytes=1000))
        service = PeerService(node)
        header = message_to_pb(
            Message(MsgType.SNAP, to=1, frm=2, term=1, snapshot=Snapshot(SnapshotMeta(10, 1)))
        )
        read: list[int] = []

        async def chunks() -> AsyncIterator[peer_pb2.SnapshotChunk]:
            yield peer_pb2.SnapshotChunk(cluster=node.identity.name, header=header, total_size=10 * 1024**3)
            read.append(1)
            yield peer_pb2.SnapshotChunk(data=b"x" * 1000)

        context = Context("ipv4:127.0.0.1:40002")
        with pytest.raises(Aborted):
            await service.InstallSnapshot(chunks(), context)  # type: ignore[arg-type]
        assert context.status is not None and context.status[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-snapshot-bytes" in context.status[1] and read == []
        release_node(node)

    asyncio.run(main())
