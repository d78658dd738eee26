"""Membership benchmarks (issue 20): prints numbers, asserts nothing.

On three local nodes seeded with --keys keys (default 1,000,000, 16-byte values, by `raftd --restore`),
under --writers steady writers (raftctl's async client), --trials rounds of:

  a. a wiped follower back by snapshot: kill it, wipe its directory, `member remove` it, `member add` its
     address (a new id: the only way back, docs/operations.md), start it with --join; timed from its start
     to its local read of a key written after the wipe, then promoted;
  b. SIGKILL of the leader, restarted once a new leader serves, then caught up;
  c. the leader removing itself (`member remove` of the leader), then
  d. adding a node and promoting it: from the `member add` call to the promotion's answer, the node started
     with --join right after the add, a promotion asked every 0.1 s (refused while it is behind).

Figures: d against a (target: d <= 3x a); the unavailability of c against b, each the longest time in
which no write was acknowledged, from 1 s before the event to 15 s after (target: c <= the median of b).
Medians over the trials.

Then, on a fresh cluster with no seed and --clients writers: writes per second over the 10 s from the
start of a change against the 10 s before it, for an addition (member add, start with --join
--auto-promote, caught up and promoted inside the window) and for the removal of a follower (target:
>= 0.8x each).

Run: .venv/bin/python bench/membership.py [--keys N] [--trials T] [--clients C]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from snapshots import VALUE, seed_backup

from raftctl.aio import AsyncClient
from raftctl.client import Client, ClientError, NotFound, OutcomeUnknown, ServerError
from raftd.launcher import HOST, LocalCluster, free_ports

T = TypeVar("T")
WAIT_S = 180.0
EVENT_BEFORE_S = 1.0
EVENT_AFTER_S = 15.0
WINDOW_S = 10.0


def wait(what: str, check: Callable[[], T | None], timeout: float = WAIT_S, poll: float = 0.02) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
            if got:
                return got
        except ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(poll)


class Bench(LocalCluster):
    """Three nodes from a map, and nodes that join them (ids from the cluster), all killed at close()."""

    def __init__(self, root: Path, args: list[str]) -> None:
        super().__init__(root, 3, args=args)
        self.addresses = {i: self.address(i) for i in range(3)}

    def admin(self) -> Client:
        return Client(sorted(self.addresses.values()), timeout=30.0)

    def leader(self) -> int:
        with self.admin() as c:
            return wait("a leader", lambda: c.member_list().leader_id + 1) - 1

    def join_cluster(self, node: int, *extra: str) -> None:
        """Start node (added already) on an empty directory with --join the other members."""
        self.join(node, [a for i, a in self.addresses.items() if i != node], *extra)

    def add(self, address: str) -> int:
        with self.admin() as c:
            node = c.member_add(address).member.id
        self.addresses[node] = address
        return node

    def promote(self, node: int) -> None:
        with self.admin() as c:
            while True:
                try:
                    c.member_promote(node)
                    return
                except ServerError:  # behind still
                    time.sleep(0.1)

    def remove(self, node: int) -> None:
        """Refused while the voters left would not include a quorum heard from lately (a node just
        restarted, say): asked again, as an operator would."""
        with self.admin() as c:
            deadline = time.monotonic() + WAIT_S
            while True:
                try:
                    c.member_remove(node)
                    break
                except OutcomeUnknown:  # as an operator does: look
                    wait(f"node {node} gone", lambda: node not in {m.id for m in c.member_list().members})
                    break
                except ServerError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        del self.addresses[node]
        self.procs[node].wait(30)

    def local_read(self, node: int, key: str) -> bool:
        with Client([self.addresses[node]], timeout=1.0, pin=True) as c:
            try:
                return c.get(key, linearizable=False) is not None
            except NotFound:
                return False


_LOOP: asyncio.AbstractEventLoop | None = None


def _writers_loop() -> asyncio.AbstractEventLoop:
    """One event loop, in a thread of its own, for every Writers: grpc.aio binds itself to the first loop
    that uses it, and a second asyncio.run spilled "Event loop is closed" tracebacks."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        threading.Thread(target=_LOOP.run_forever, daemon=True).start()
    return _LOOP


class Writers:
    """Steady writers in a thread of their own; ack times kept for the gap and rate figures. After a
    failed write the client is made anew from the members' addresses then (at most once a second), since
    the addresses it started with may all have been removed."""

    def __init__(self, endpoints: Callable[[], list[str]], n: int) -> None:
        self.endpoints, self.n = endpoints, n
        self.acks: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._done = asyncio.run_coroutine_threadsafe(self._run(), _writers_loop())

    async def _run(self) -> None:
        client = AsyncClient(self.endpoints(), timeout=30.0)
        made = time.monotonic()
        old: list[AsyncClient] = []

        async def one(w: int) -> None:
            nonlocal client, made
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    await client.put(f"w{w}/{i % 100}", "x" * 16)
                except ClientError:
                    self.errors += 1
                    if time.monotonic() - made > 1.0:
                        old.append(client)
                        client, made = AsyncClient(self.endpoints(), timeout=30.0), time.monotonic()
                    continue
                self.acks.append(time.monotonic())

        await asyncio.gather(*(one(w) for w in range(self.n)))
        for c in [*old, client]:
            await c.close()

    def stop(self) -> None:
        self._stop.set()
        self._done.result(60)

    def longest_gap(self, event: float) -> float:
        """The longest time without an acknowledged write, from EVENT_BEFORE_S before event to
        EVENT_AFTER_S after it (waits until then)."""
        time.sleep(max(0.0, event + EVENT_AFTER_S - time.monotonic()))
        acks = sorted(self.acks)
        lo, hi = event - EVENT_BEFORE_S, event + EVENT_AFTER_S
        inside = [lo, *acks[bisect.bisect_left(acks, lo) : bisect.bisect_right(acks, hi)]]
        return max(b - a for a, b in itertools.pairwise(inside)) if len(inside) > 1 else hi - lo

    def rate(self, start: float, seconds: float = WINDOW_S) -> float:
        acks = sorted(self.acks)
        return (bisect.bisect_left(acks, start + seconds) - bisect.bisect_left(acks, start)) / seconds


def seeded_rounds(root: Path, keys: int, trials: int, writers_n: int) -> dict[str, list[float]]:
    backup = root / "seed.bak"
    seed_backup(backup, keys)
    b = Bench(root / "seeded", ["--snapshot-entries", "2000"])
    out: dict[str, list[float]] = {"wiped": [], "add_promote": [], "kill_gap": [], "remove_gap": []}
    try:
        for i in range(3):
            b.start(i, "--restore", str(backup))
        b.leader()
        with b.admin() as c:
            wait("the membership record", lambda: c.member_list().recorded)
        writers = Writers(lambda: list(b.addresses.values()), writers_n)
        try:
            for trial in range(1, trials + 1):
                # a. A wiped follower, back under a new id.
                lead = b.leader()
                wiped = next(i for i in b.addresses if i != lead)
                address = b.addresses[wiped]
                b.procs[wiped].kill()
                b.procs[wiped].wait()
                shutil.rmtree(b.root / f"data-{wiped}")
                b.remove(wiped)
                key = f"after-wipe-{trial}"
                with b.admin() as c:
                    c.put(key, "x")
                new = b.add(address)
                started = time.monotonic()
                b.join_cluster(new)
                wait(f"node {new} to catch up", lambda n=new, k=key: b.local_read(n, k), poll=0.005)
                out["wiped"].append(time.monotonic() - started)
                b.promote(new)

                # b. SIGKILL of the leader.
                lead = b.leader()
                killed_at = time.monotonic()
                b.procs[lead].kill()
                b.procs[lead].wait()
                wait("a new leader", lambda lead=lead: b.leader() != lead)
                out["kill_gap"].append(writers.longest_gap(killed_at))
                if lead < 3:
                    b.start(lead)
                else:
                    b.join_cluster(lead)  # its directory holds its join
                back = f"after-kill-{trial}"
                with b.admin() as c:
                    c.put(back, "x")
                wait(f"node {lead} back", lambda n=lead, k=back: b.local_read(n, k))

                # c. The leader removes itself.
                lead = b.leader()
                removed_at = time.monotonic()
                b.remove(lead)
                out["remove_gap"].append(writers.longest_gap(removed_at))

                # d. Add a node and promote it.
                started = time.monotonic()
                new = b.add(f"{HOST}:{free_ports(1)[0]}")
                b.join_cluster(new)
                b.promote(new)
                out["add_promote"].append(time.monotonic() - started)
                print(
                    f"trial {trial}: wiped follower back {out['wiped'][-1]:.2f} s, add+promote "
                    f"{out['add_promote'][-1]:.2f} s, no ack for {out['kill_gap'][-1] * 1000:.0f} ms after "
                    f"a leader kill, {out['remove_gap'][-1] * 1000:.0f} ms after the leader removed itself",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            writers.stop()
    finally:
        b.close()
    return out


def rates_around_changes(root: Path, clients: int) -> dict[str, float]:
    b = Bench(root / "rates", [])
    out: dict[str, float] = {}
    try:
        b.start_all()
        b.leader()
        with b.admin() as c:
            wait("the membership record", lambda: c.member_list().recorded)
        writers = Writers(lambda: list(b.addresses.values()), clients)
        try:
            time.sleep(3.0)  # warm up
            t0 = time.monotonic()
            time.sleep(WINDOW_S)
            t1 = time.monotonic()
            new = b.add(f"{HOST}:{free_ports(1)[0]}")
            b.join_cluster(new, "--auto-promote")
            with b.admin() as c:
                wait(f"node {new} promoted", lambda: not any(m.learner for m in c.member_list().members))
            out["add_promoted_s"] = time.monotonic() - t1
            time.sleep(max(0.0, t1 + 2 * WINDOW_S - time.monotonic()))
            t3 = time.monotonic()
            follower = next(i for i in b.addresses if i != b.leader())
            b.remove(follower)
            time.sleep(max(0.0, t3 + WINDOW_S - time.monotonic()))
            out["before_add"], out["add"] = writers.rate(t0), writers.rate(t1)
            out["before_remove"], out["remove"] = writers.rate(t1 + WINDOW_S), writers.rate(t3)
        finally:
            writers.stop()
    finally:
        b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--dir", help="Keep the nodes' data and logs here (default: a temporary directory).")
    args = ap.parse_args()
    assert len(VALUE) == 16
    with contextlib.ExitStack() as stack:
        root = Path(args.dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="raftd-bench-")))
        root.mkdir(parents=True, exist_ok=True)
        print(f"# membership benchmarks: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        r = seeded_rounds(root, args.keys, args.trials, args.writers)
        wiped, add = statistics.median(r["wiped"]), statistics.median(r["add_promote"])
        kill, remove = statistics.median(r["kill_gap"]), statistics.median(r["remove_gap"])
        print(
            f"add and promote with {args.keys:,} keys: {add:.2f} s; a wiped follower back by snapshot: "
            f"{wiped:.2f} s; {add / wiped:.2f}x (target <= 3x); medians of {args.trials}, "
            f"under {args.writers} writers"
        )
        print(
            f"no write acknowledged for {remove * 1000:.0f} ms when the leader removes itself, "
            f"{kill * 1000:.0f} ms after a leader SIGKILL; {remove / kill:.2f}x (target <= 1x); "
            f"medians of {args.trials}"
        )
        q = rates_around_changes(root, args.clients)
        print(
            f"writes/s at {args.clients} clients: {q['before_add']:.0f} in the 10 s before an addition, "
            f"{q['add']:.0f} in the 10 s from it ({q['add'] / q['before_add']:.2f}x; promoted after "
            f"{q['add_promoted_s']:.1f} s); {q['before_remove']:.0f} before a removal, {q['remove']:.0f} "
            f"from it ({q['remove'] / q['before_remove']:.2f}x); target >= 0.8x"
        )


if __name__ == "__main__":
    main()
