"""Exactly-once sessions in the node (issue 19): a write that is not its client's first, on a session the
cluster no longer holds, fails with SessionExpired; the flag that says so, and the replicated session
limit, reach the log only once every peer can read them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from raftd.api.common import failure, put_command
from raftd.errors import SessionExpired
from raftd.kv import Command, Op
from raftd.node import RaftNode
from raftd.pb import kv_pb2 as pb
from raftd.pipe import UNKNOWN
from raftd.settings import DEFAULTS, Limits

from .nodes import commit_all, leader, logged, release_node


def _commands(node: RaftNode) -> list[Command]:
    return [c for _, c in logged(node)]


def test_the_first_flag_reaches_the_log_only_once_every_peer_can_read_it(tmp_path: Path) -> None:
    """A node of the previous release would stop on an entry with the flags (an op it does not know)."""

    async def main() -> None:
        node = await leader(tmp_path)
        node.propose_nowait(Command(Op.PUT, b"k", b"1", b"c", 1, first=True))
        node.peer_speaks(2, 2)
        node.peer_speaks(3, 1)  # node 2 runs the previous release
        node.propose_nowait(Command(Op.PUT, b"k", b"2", b"c", 2, first=False))
        node.peer_speaks(3, 2)
        node.propose_nowait(Command(Op.PUT, b"k", b"3", b"c", 3, first=False))
        node._take_input()
        assert [c.first for c in _commands(node) if c.op is Op.PUT] == [None, None, False]
        release_node(node)

    asyncio.run(main())


def test_an_expired_session_s_write_fails_as_session_expired_with_an_unknown_outcome(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path)
        node.peer_speaks(2, 2)
        node.peer_speaks(3, 2)
        fut = node.propose_nowait(
            put_command(pb.PutRequest(key=b"k", value=b"v", session=_session(7, False)), DEFAULTS)
        )
        await commit_all(node)
        with pytest.raises(SessionExpired):
            fut.result()
        assert node.local_read(b"k")[0] is None
        refused = failure(fut.exception() or Exception(), write=True)
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.outcome == UNKNOWN
        assert refused.message == "session expired; the write may have applied"
        release_node(node)

    asyncio.run(main())


def _session(seq: int, first: bool | None) -> pb.WriteSession:
    session = pb.WriteSession(client_id="c", seq=seq)
    if first is not None:
        session.first = first
    return session


def test_a_client_that_does_not_say_is_first_at_seq_1() -> None:
    """Clients written before WriteSession.first number their writes from 1."""
    assert put_command(pb.PutRequest(key=b"k", session=_session(1, None)), DEFAULTS).first is True
    assert put_command(pb.PutRequest(key=b"k", session=_session(2, None)), DEFAULTS).first is False
    assert put_command(pb.PutRequest(key=b"k", session=_session(1, False)), DEFAULTS).first is False
    assert put_command(pb.PutRequest(key=b"k", session=_session(9, True)), DEFAULTS).first is True
    assert put_command(pb.PutRequest(key=b"k"), DEFAULTS).first is None  # no session, nothing to check


def test_the_leader_makes_its_session_limit_the_cluster_s(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path, limits=Limits(max_sessions=5))
        node._take_input()
        await node._drain_ready()
        assert not [c for c in _commands(node) if c.op is Op.SESSION_LIMIT], (
            "not before every peer can apply it"
        )
        node.peer_speaks(2, 2)
        node.peer_speaks(3, 2)
        node.peer_speaks(3, 2)
        await commit_all(node)
        limits = [c for c in _commands(node) if c.op is Op.SESSION_LIMIT]
        assert limits == [Command(Op.SESSION_LIMIT, b"", b"5")], "once per term"
        assert node.kv.session_limit == 5
        node._maybe_propose_session_limit()
        node._take_input()
        assert len([c for c in _commands(node) if c.op is Op.SESSION_LIMIT]) == 1, "applied: nothing to do"
        release_node(node)

    asyncio.run(main())


def test_a_leader_with_the_default_limit_proposes_none(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path)
        node.peer_speaks(2, 2)
        node.peer_speaks(3, 2)
        await commit_all(node)
        assert not [c for c in _commands(node) if c.op is Op.SESSION_LIMIT]
        release_node(node)

    asyncio.run(main())
