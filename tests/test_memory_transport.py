"""Three real RaftNodes in one process, on the in-memory transport and storage twins (issue 18): the node
that ships elects, replicates and applies without sockets or disks, and a cut-off leader is replaced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from raftd.config import load_cluster
from raftd.errors import NotLeader, Unavailable
from raftd.kv import Command, Op
from raftd.node import RaftNode, to_core
from raftd.settings import DEFAULTS, TUNING, Limits, Tuning
from raftd.storage import MemoryStorage
from raftd.transport.memory import MemoryNetwork

WAIT_S = 10.0


@asynccontextmanager
async def memory_cluster(
    tmp_path: Path,
    network: MemoryNetwork | None = None,
    limits: Limits = DEFAULTS,
    tuning: Tuning = TUNING,
) -> AsyncIterator[tuple[MemoryNetwork, dict[int, RaftNode]]]:
    """Three nodes on the in-memory transport (network: one that drops or delays, say); every node in the
    dict at the end is stopped, joiners the test added too."""
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "election_timeout_ms: [150, 300]\nheartbeat_interval_ms: 50\nnodes:\n"
        + "".join(f"  - {{id: {i}, host: 127.0.0.1, port: {1 + i}}}\n" for i in range(3))
    )
    cluster = load_cluster(conf)
    network = network if network is not None else MemoryNetwork()
    nodes = {}
    for i in range(3):
        node = RaftNode(cluster, i, MemoryStorage(), limits, network.transport(to_core(i)), tuning)
        network.attach(to_core(i), node)
        nodes[i] = node
    runners = [asyncio.get_running_loop().create_task(n.run()) for n in nodes.values()]
    try:
        yield network, nodes
    finally:
        for n in nodes.values():
            await n.stop()
        await asyncio.gather(*runners, return_exceptions=True)


async def _leader(nodes: dict[int, RaftNode], among: set[int]) -> int:
    """The one node of among that leads and that every other node of among follows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while loop.time() < deadline:
        leaders = [i for i in among if nodes[i].is_leader()]
        if len(leaders) == 1:
            named = {nodes[i].leader() for i in among}
            if len(named) == 1 and None not in named:
                return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no single leader among {sorted(among)} within {WAIT_S:g}s")


async def _write(nodes: dict[int, RaftNode], among: set[int], key: bytes, value: bytes) -> int:
    """Through whichever node of among leads; again if leadership moved meanwhile (a loaded machine's
    election timer can fire at 150 ms). The value is unique, so a retry cannot be mistaken for it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        leader = await _leader(nodes, among)
        try:
            await asyncio.wait_for(nodes[leader].propose_nowait(Command(Op.PUT, key, value)), 2.0)
            return leader
        except (NotLeader, Unavailable, TimeoutError):
            assert loop.time() < deadline, f"no write of {value!r} committed within {WAIT_S:g}s"


async def _applied_everywhere(nodes: dict[int, RaftNode], among: set[int], key: bytes, value: bytes) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while any(nodes[i].kv.get(key) != value for i in among):
        assert loop.time() < deadline, {i: nodes[i].kv.get(key) for i in among}
        await asyncio.sleep(0.02)


def test_real_nodes_on_the_memory_transport_elect_replicate_and_replace_a_cut_off_leader(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with memory_cluster(tmp_path) as (network, nodes):
            everyone = set(nodes)
            first = await _write(nodes, everyone, b"k", b"1")
            await _applied_everywhere(nodes, everyone, b"k", b"1")

            network.cut.add(to_core(first))
            rest = everyone - {first}
            await _write(nodes, rest, b"k", b"2")
            await _applied_everywhere(nodes, rest, b"k", b"2")
            assert nodes[first].kv.get(b"k") == b"1", "a cut-off node learns nothing"

            network.cut.clear()
            assert await _leader(nodes, everyone) in rest, "a log that is behind wins no election"
            await _applied_everywhere(nodes, everyone, b"k", b"2")  # the old leader catches up

    asyncio.run(main())
