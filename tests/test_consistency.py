"""The cross-node consistency check (issue 19; raftd/consistency.py): replicas hash their state at the
same index, and a node that sees a peer's hash differ from its own raises an alarm."""

from __future__ import annotations

import asyncio
from pathlib import Path

from raftd.consistency import StateHashes, state_hash
from raftd.kv import Command, KVStore, Op, encode
from raftd.node import RaftNode
from raftd.settings import Limits

from .nodes import commit_all, leader, logged, release_node


def _store(values: list[bytes]) -> KVStore:
    kv = KVStore()
    for i, v in enumerate(values, start=1):
        kv.apply(i, Command(Op.PUT, f"k{i % 7}".encode(), v, f"c{i % 3}".encode(), i, True))
    return kv


def test_replicas_at_one_index_hash_alike_and_any_difference_shows() -> None:
    values = [f"v{i}".encode() for i in range(50)]
    a, b = _store(values), _store(values)
    restored = KVStore()
    restored.restore(a.applied, encode(a.image()))
    assert state_hash(a.image()) == state_hash(b.image()) == state_hash(restored.image())
    flipped = list(values)
    flipped[-1] = b"v48"  # one value, as a bug or a flipped bit would leave it
    assert state_hash(_store(flipped).image()) != state_hash(a.image())
    b.apply(51, Command(Op.PUT, b"k", b"v", b"fresh", 1, True))  # a session alone counts too
    b.apply(52, Command(Op.DELETE, b"k"))
    assert state_hash(b.image()) != state_hash(a.image())


def test_a_different_hash_at_the_same_index_raises_one_alarm_per_peer() -> None:
    h = StateHashes()
    assert h.record(10, 0xAAAA) == [] and h.latest == (10, 0xAAAA)
    assert h.report(1, 10, 0xAAAA) is None
    alarm = h.report(2, 10, 0xBBBB)
    assert (
        alarm == "CORRUPT: the state at index 10 differs from node 2's"
        " (hash 000000000000aaaa here, 000000000000bbbb there)"
    )
    assert h.alarms == {2: "CORRUPT: the state at index 10 differs from node 2's"}
    assert h.report(2, 10, 0xBBBB) is None, "raised once"


def test_a_report_from_ahead_waits_until_this_node_has_hashed_that_index() -> None:
    h = StateHashes()
    h.record(10, 1)
    assert h.report(2, 20, 5) is None and h.alarms == {}
    assert h.record(20, 6) == [
        (
            2,
            "CORRUPT: the state at index 20 differs from node 2's"
            " (hash 0000000000000006 here, 0000000000000005 there)",
        )
    ]
    h.report(1, 30, 7)
    assert h.record(30, 7) == [] and h.alarms.keys() == {2}


def test_reports_of_indexes_no_longer_kept_are_not_compared() -> None:
    h = StateHashes(kept=4)
    for i in range(1, 6):
        h.record(i, i)
    assert h.report(2, 1, 999) is None and h.alarms == {}, "index 1 is forgotten: nothing to compare"
    assert h.report(2, 2, 999) is not None


def test_the_leader_has_every_replica_hash_its_state_once_every_peer_can(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path, limits=Limits(corrupt_check_interval_s=60))
        node._maybe_propose_hash_check(now=1000.0)
        node._take_input()
        assert not _checks(node), "a node of an earlier release would stop on the entry"
        node.peer_speaks(2, 3)
        node.peer_speaks(3, 3)
        node._maybe_propose_hash_check(now=1000.0)
        node._maybe_propose_hash_check(now=1059.0)  # within the interval: no second one
        await commit_all(node)
        (index,) = _checks(node)
        await asyncio.gather(*node._background)
        assert node.hashes.latest == (index, state_hash(node.kv.image()))
        node.peer_state_hash(3, index, node.hashes.latest[1] ^ 1)
        assert node.status().alarms == (f"CORRUPT: the state at index {index} differs from node 2's",)
        release_node(node)

    asyncio.run(main())


def _checks(node: RaftNode) -> list[int]:
    return [i for i, c in logged(node) if c.op is Op.HASH_CHECK]


def test_one_hash_at_a_time_so_a_backlog_of_checks_costs_one_pass(tmp_path: Path) -> None:
    """An idle cluster logs a check a minute: a node applying many at once (catching up, or replaying its
    log after a restart) must not hash its whole state for each."""

    async def main() -> None:
        node = await leader(tmp_path)
        for _ in range(5):
            node.propose_nowait(Command(Op.HASH_CHECK, b""))
        await commit_all(node)
        await asyncio.gather(*node._background)
        assert len(node.hashes.own) == 1 and not node._hashing
        node.propose_nowait(Command(Op.HASH_CHECK, b""))
        await commit_all(node)
        await asyncio.gather(*node._background)
        assert len(node.hashes.own) == 2, "the next one, once the first is done"
        release_node(node)

    asyncio.run(main())


def test_the_hash_is_of_the_state_at_the_check_s_index_not_after_its_batch(tmp_path: Path) -> None:
    """The copy is taken as the entry applies: a write later in the same batch is not in it."""

    async def main() -> None:
        node = await leader(tmp_path)
        before = state_hash(node.kv.image())
        node.propose_nowait(Command(Op.HASH_CHECK, b""))
        node.propose_nowait(Command(Op.PUT, b"k", b"v"))
        await commit_all(node)
        await asyncio.gather(*node._background)
        (index,) = _checks(node)
        assert node.hashes.own[index] == before != state_hash(node.kv.image())
        release_node(node)

    asyncio.run(main())
