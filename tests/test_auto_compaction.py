"""The leader compacts the keyspace's history to --auto-compaction-retention through the log; 0 turns it
off (docs/operations.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from raftd.kv import Command, Op
from raftd.kv.mvcc import CompactRequest, decode_request
from raftd.settings import Limits
from tests.nodes import commit_all, leader, logged, release_node


def _compactions(node: object) -> list[int]:
    out = []
    for _, cmd in logged(node):  # type: ignore[arg-type]
        if cmd.op is Op.MVCC:
            request = decode_request(cmd.value)
            if isinstance(request, CompactRequest):
                out.append(request.revision)
    return out


def _run(tmp_path: Path, retention: int) -> tuple[list[int], int]:
    async def main() -> tuple[list[int], int]:
        node = await leader(tmp_path, limits=Limits(auto_compaction_retention=retention))
        node.peer_speaks(2, 6)
        node.peer_speaks(3, 6)
        node._take_input()
        await commit_all(node)
        assert node.kv.merged
        for i in range(12):
            node.propose_nowait(Command(Op.PUT, b"k", b"%d" % i))
            await commit_all(node)
        await commit_all(node)  # the compaction proposed by the last apply
        result = _compactions(node), node.kv.keyspace.compact_revision
        release_node(node)
        return result

    return asyncio.run(main())


def test_the_leader_compacts_past_the_retention_and_its_tenth(tmp_path: Path) -> None:
    proposed, compacted = _run(tmp_path, 10)
    # Once 11 revisions (the retention and a tenth of it) are kept, the leader compacts to the last 10:
    # at the 11th write to revision 1, at the 12th to 2.
    assert proposed == [1, 2] and compacted == 2


def test_a_retention_of_zero_never_compacts(tmp_path: Path) -> None:
    assert _run(tmp_path, 0) == ([], 0)


def test_the_leader_compacts_by_age_what_is_older_than_the_period(tmp_path: Path) -> None:
    """--auto-compaction-period (etcd's periodic mode): a revision goes once it is the period old, as
    the node's samples of its revision, one every tenth of the period, tell."""

    async def main() -> tuple[list[int], int]:
        limits = Limits(auto_compaction_retention=0, auto_compaction_period_s=10.0)
        node = await leader(tmp_path, limits=limits)
        node.peer_speaks(2, 6)
        node.peer_speaks(3, 6)
        node._take_input()
        await commit_all(node)

        async def write(n: int) -> None:
            for i in range(n):
                node.propose_nowait(Command(Op.PUT, b"k", b"%d" % i))
                await commit_all(node)

        await write(3)
        node._sample_revision(100.0)  # revision 3 at t=100
        await write(2)
        node._sample_revision(105.0)  # revision 5 at t=105
        await write(2)
        node._sample_revision(109.9)
        await commit_all(node)
        assert _compactions(node) == [], "nothing is 10 s old yet"
        node._sample_revision(110.0)  # revision 3 is 10 s old
        await commit_all(node)
        node._sample_revision(114.0)
        await commit_all(node)
        assert _compactions(node) == [3]
        node._sample_revision(115.5)  # revision 5 is 10 s old
        await commit_all(node)
        result = _compactions(node), node.kv.keyspace.compact_revision
        release_node(node)
        return result

    assert asyncio.run(main()) == ([3, 5], 5)
