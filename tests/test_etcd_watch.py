"""What a Watch call makes a node hold, on a node of this process (tests/daemon/test_etcd.py drives watches
with etcdctl and python etcd3)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from raftd.api.etcd_watch import MAX_REPLIES, WatchStream
from raftd.kv import Command, Op
from raftd.kv.mvcc import PutRequest, encode_request
from raftd.pb import etcd_rpc_pb2 as pb

from .nodes import commit_all, leader, release_node


class Stuck:
    """A call whose client reads nothing: every write waits."""

    def __init__(self) -> None:
        self.writes = 0

    async def write(self, message: Any) -> None:
        self.writes += 1
        await asyncio.Event().wait()


def test_a_client_that_asks_and_reads_nothing_holds_at_most_max_replies(tmp_path: Path) -> None:
    """Creates flooding in while no answer goes out: the call stops reading them."""

    async def main() -> None:
        node = await leader(tmp_path)
        sent = 0

        async def creates() -> AsyncIterator[pb.WatchRequest]:
            nonlocal sent
            for i in range(10 * MAX_REPLIES):
                sent += 1
                yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k%d" % i))

        stream = WatchStream(node, Stuck())  # type: ignore[arg-type]
        call = asyncio.ensure_future(stream.run(creates()))
        await asyncio.sleep(0.2)
        assert len(stream.replies) <= MAX_REPLIES and sent <= MAX_REPLIES + 2, (len(stream.replies), sent)
        call.cancel()
        release_node(node)

    asyncio.run(main())


def test_waiting_for_the_keyspace_holds_one_future_however_often_it_is_asked(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path)
        first = node.keyspace_moved()
        assert all(node.keyspace_moved() is first for _ in range(1000))
        node.peer_speaks(2, 5)
        node.peer_speaks(3, 5)
        node.propose_nowait(Command(Op.MVCC, b"", encode_request(PutRequest(b"k", b"v"))))
        await commit_all(node)
        assert first.done() and node.keyspace().revision == 1
        assert node.keyspace_moved() is not first and not node.keyspace_moved().done()
        release_node(node)

    asyncio.run(main())


class Aborted(Exception):
    pass


class Recording:
    """A call that reads every reply and records how it was aborted."""

    def __init__(self) -> None:
        self.aborted: tuple[object, str] | None = None

    async def write(self, message: Any) -> None:
        return None

    async def abort(self, code: object, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted()


def test_a_watch_that_asked_for_a_leader_ends_once_its_node_has_none_for_three_election_timeouts(
    tmp_path: Path,
) -> None:
    """etcd's "hasleader": a node cut off from its cluster ends the call ("etcdserver: no leader") rather
    than keep a silent watch; a leader found again in time keeps it open."""

    async def main() -> None:
        node = await leader(tmp_path)
        node.cluster = dataclasses.replace(node.cluster, election_timeout_ms=(20, 40))
        lost = False
        node.leader = lambda: None if lost else 1  # type: ignore[assignment,method-assign,return-value]
        hold = asyncio.Event()

        async def requests() -> AsyncIterator[pb.WatchRequest]:
            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k"))
            await hold.wait()

        call = Recording()
        stream = WatchStream(node, call, require_leader=True)  # type: ignore[arg-type]
        task = asyncio.ensure_future(stream.run(requests()))
        await asyncio.sleep(0.3)
        assert not task.done() and call.aborted is None, "a leader is known: the watch stays"
        lost = True
        started = asyncio.get_running_loop().time()
        with pytest.raises(Aborted):
            await asyncio.wait_for(task, 2.0)
        waited = asyncio.get_running_loop().time() - started
        assert call.aborted == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
        assert waited >= 3 * 0.040, waited
        hold.set()
        release_node(node)

    asyncio.run(main())
