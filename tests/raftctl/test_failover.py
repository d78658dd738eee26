"""The client follows the leader: killed between two commands, killed under the async client's streams,
or suspended under a connected shell.

Each test has a cluster of its own, since it takes a node down.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftctl.aio import AsyncClient
from raftctl.client import Client, ClientError, InvalidArgument, NotFound
from raftd.testing.history import History
from raftd.testing.linearizability import check
from tests.daemon.cluster import Cluster, wait_until

from .conftest import run_ctl


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster", 3)
    try:
        c.start_all()
        yield c
    finally:
        c.close()


def test_leader_killed_between_two_commands(tmp_path: Path, own_cluster: Cluster) -> None:
    c = own_cluster
    old = c.wait_leader()
    # The killed leader is listed first, so the client meets it before any live node.
    order = [old, *c.followers(old)]
    e = ["--endpoints", ",".join(c.address(i) for i in order), "--timeout", "15"]
    r = run_ctl(*e, "setval", "before", "1", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")

    c.kill(old)
    r = run_ctl(*e, "setval", "after", "2", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), c.dump_logs()

    r = run_ctl(*e, "getleader", cwd=tmp_path)
    assert r.returncode == 0
    new_id, new_address = r.stdout.split()
    assert int(new_id) != old and new_address == c.address(int(new_id))
    for key, value in (("before", "1"), ("after", "2")):
        r = run_ctl(*e, "getval", key, cwd=tmp_path)
        assert (r.returncode, r.stdout) == (0, f"{value}\n")
    r = run_ctl(*e, "status", cwd=tmp_path)
    assert r.returncode == 3 and r.stdout.count("| yes ") == 2 and r.stdout.count("| no ") == 1


def test_original_example_2_suspend_the_leader(tmp_path: Path, own_cluster: Cluster) -> None:
    """connect to the leader, suspend it, and getleader names the leader elected meanwhile."""
    c = own_cluster
    old = c.wait_leader()
    script = f"connect {c.address(old).replace(':', ' ')}\ngetleader\nsuspend 2\ngetleader\nquit\n"
    r = run_ctl("--timeout", "15", cwd=tmp_path, input=script, env=None)
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert lines[:2] == ["The client starts", f"{old} {c.address(old)}"]
    assert lines[3] == "The client ends"
    new_id, new_address = lines[2].split()
    assert int(new_id) != old and new_address == c.address(int(new_id))
    wait_until(f"node {old} to be back", lambda: not c.status(old).suspended, 20)


def test_async_writes_go_on_after_the_leader_is_killed_under_its_stream(own_cluster: Cluster) -> None:
    """16 writers on one AsyncClient: the killed leader's stream breaks with writes in flight; they and
    every later write are acknowledged through the new leader, and every acknowledged write is there."""
    c = own_cluster
    old = c.wait_leader()
    order = [old, *c.followers(old)]
    acked: dict[str, str] = {}
    acked_after_kill: dict[int, int] = {}

    async def go() -> None:
        async with AsyncClient([c.address(i) for i in order], timeout=15) as client:
            killed = False

            async def writer(w: int) -> None:
                n = 0
                while acked_after_kill.get(w, 0) < 10:
                    key, value = f"w{w}-{n}", str(n)
                    await client.put(key, value)
                    acked[key] = value
                    if killed:
                        acked_after_kill[w] = acked_after_kill.get(w, 0) + 1
                    n += 1

            async def killer() -> None:
                nonlocal killed
                while len(acked) < 100:
                    await asyncio.sleep(0.01)
                await asyncio.get_running_loop().run_in_executor(None, c.kill, old)
                killed = True

            await asyncio.gather(killer(), *(writer(w) for w in range(16)))
            new = c.address(c.wait_leader(exclude=old))
            pipe = client._connection(new).pipe
            assert pipe is not None and pipe.batches_sent > 0, "the writes after the kill went by stream"

    asyncio.run(go())
    with Client([c.address(i) for i in c.followers(old)], timeout=15) as check:
        for key, value in acked.items():
            assert check.get(key) == value, f"acknowledged write {key}={value} is lost"


def test_async_streamed_history_is_linearizable_across_a_leader_kill(own_cluster: Cluster) -> None:
    """Puts, gets (sharing ReadIndex rounds per batch) and deletes on 3 keys from 24 coroutines over the
    streams of one AsyncClient, the leader SIGKILLed midway: the recorded history must be linearizable.
    Classified as raftd/testing/workload.py does: a failed write is "info" (it may still apply), a failed
    get is "fail"; after an info op the coroutine goes on as a new process."""
    c = own_cluster
    old = c.wait_leader()
    history = History()
    keys = ["a", "b", "c"]
    workers = 24
    stop_at = time.monotonic() + 6.0

    async def worker(index: int, client: AsyncClient) -> None:
        rng = random.Random(index)
        process, written = index, 0
        while time.monotonic() < stop_at:
            kind = rng.choice(("put", "put", "get", "get", "delete"))
            key = rng.choice(keys)
            value = None
            if kind == "put":
                written += 1
                value = f"p{process}-{written}"
            op = history.invoke(process, kind, key, value)
            try:
                if kind == "put":
                    await client.put(key, value)  # type: ignore[arg-type]
                    history.ok(op)
                elif kind == "delete":
                    history.ok(op, "true" if await client.delete(key) else "false")
                else:
                    try:
                        found: str | None = await client.get(key)
                    except NotFound:
                        found = None
                    history.ok(op, found)
            except InvalidArgument:
                history.fail(op)
            except ClientError:
                if kind == "get":
                    history.fail(op)
                else:
                    history.info(op)
                    process += workers

    async def killer() -> None:
        await asyncio.sleep(2.0)
        await asyncio.get_running_loop().run_in_executor(None, c.kill, old)

    async def go() -> None:
        async with AsyncClient([c.address(i) for i in range(c.n)], timeout=2.0) as client:
            await asyncio.gather(killer(), *(worker(i, client) for i in range(workers)))

    asyncio.run(go())
    ops = history.ops()
    done = [op for op in ops if op.status == "ok"]
    assert len(done) > 500 and any(op.kind == "get" and op.output for op in done), "too little happened"
    result = check(ops)
    assert result.ok, f"not linearizable on key {result.key}:\n{result.explanation}"
