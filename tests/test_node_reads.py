"""The driver's side of linearizable reads, in-process: a forwarded ReadIndex that is never answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftd import node as node_module
from raftd.core import ReadState
from raftd.node import Unavailable
from tests.nodes import follower, release_node


def test_reads_whose_forwarded_read_index_is_lost_fail_retryably(tmp_path: Path) -> None:
    async def main() -> None:
        node = follower(tmp_path)
        now = asyncio.get_running_loop().time()
        lost = node.read_barrier_nowait()
        node._take_input()  # forwards a ReadIndex request, which nobody delivers
        answered = node.read_barrier_nowait()
        node._take_input()
        (ctx_answered,) = [c for c in node.read_wait if node.read_wait[c] == [answered]]
        node._confirm_reads([ReadState(0, ctx_answered)])
        assert answered.done() and answered.result() == 0

        node._expire_reads(now + node_module.READ_CONFIRM_S - 1)
        assert not lost.done()  # still within its time
        node._expire_reads(now + node_module.READ_CONFIRM_S + 1)
        assert lost.done()
        with pytest.raises(Unavailable, match="not confirmed"):
            lost.result()
        assert not node.read_wait and not node.read_deadlines  # nothing is left behind
        release_node(node)

    asyncio.run(main())


def test_a_settled_read_s_deadline_is_dropped_so_the_loop_does_not_wake_for_it(tmp_path: Path) -> None:
    async def main() -> None:
        node = follower(tmp_path)
        now = asyncio.get_running_loop().time()
        answered = node.read_barrier_nowait()
        node._take_input()
        (ctx,) = node.read_wait
        node._expire_reads(now)
        assert len(node.read_deadlines) == 1  # the control: a live read keeps its deadline
        node._confirm_reads([ReadState(0, ctx)])
        assert answered.done()
        node._expire_reads(now)  # long before the deadline
        assert not node.read_deadlines
        release_node(node)

    asyncio.run(main())


def test_the_driver_loop_wakes_to_fail_an_unconfirmed_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing else wakes this follower for 100 s: the read's own deadline must."""
    monkeypatch.setattr(node_module, "READ_CONFIRM_S", 0.3)

    async def main() -> None:
        node = follower(tmp_path)
        runner = asyncio.create_task(node.run())
        try:
            await asyncio.sleep(0.2)  # lets the loop take in the leader it learned (a wait before acting)
            read = node.read_barrier_nowait()
            done, _ = await asyncio.wait({read}, timeout=5)
            assert read in done, "the read was never failed"
            with pytest.raises(Unavailable, match="not confirmed"):
                read.result()
        finally:
            await node.stop()
            await runner
            node.storage.close()

    asyncio.run(main())
