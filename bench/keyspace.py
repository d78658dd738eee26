"""How the multi-version keyspace (raftd/kv/mvcc.py) costs as it grows: the engine alone, no Raft, no gRPC.

For each size in --keys, a fresh sqlite file (WAL, synchronous=NORMAL, a 32 MiB page cache: the settings a
node's state database is meant to run with) is loaded with that many keys of 16-byte values through
Keyspace.put, 10,000 to a transaction; then it prints the median and p99 of a point get, a put (its own
transaction) and a prefix range of 1,000 keys, the load rate, the file's size and this process's RSS.
Issue 21's scale targets are for a served node (`make bench-scale`, to come); this measures the part of
them that the storage engine decides.

    cd bench && ../.venv/bin/python keyspace.py --keys 10000,1000000 [--dir DIR] [--samples N]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raftd.kv.mvcc import Keyspace, PutRequest, RangeRequest, prefix_end  # noqa: E402

BATCH = 10_000
VALUE = b"v" * 16


def key(i: int) -> bytes:
    """Keys in groups of 1,000 under one prefix, so that a prefix range returns exactly 1,000 keys."""
    return b"key/%07d/%03d" % (i // 1000, i % 1000)


def open_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-32768")
    return conn


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(samples: int, work: object) -> tuple[float, float]:
    """(p50, p99) in microseconds of work() over samples calls."""
    took = []
    for _ in range(samples):
        t = time.perf_counter()
        work()  # type: ignore[operator]
        took.append((time.perf_counter() - t) * 1e6)
    took.sort()
    return statistics.median(took), took[int(len(took) * 0.99) - 1]


def measure(n: int, root: Path, samples: int) -> None:
    path = root / f"keyspace-{n}.db"
    conn = open_db(path)
    ks = Keyspace(conn)
    start = time.perf_counter()
    for first in range(0, n, BATCH):
        conn.execute("BEGIN")
        for i in range(first, min(n, first + BATCH)):
            ks.put(PutRequest(key(i), VALUE))
        conn.execute("COMMIT")
    load_s = time.perf_counter() - start
    rng = random.Random(n)
    get = timed(samples, lambda: ks.get(key(rng.randrange(n))))
    put = timed(samples, lambda: ks.put(PutRequest(key(rng.randrange(n)), VALUE)))
    groups = max(1, n // 1000)

    def prefix() -> None:
        p = b"key/%07d/" % rng.randrange(groups)
        assert len(ks.range(RangeRequest(p, prefix_end(p))).kvs) == min(n, 1000)

    ranged = timed(max(10, samples // 20), prefix)
    conn.close()
    size_mb = sum(f.stat().st_size for f in root.glob(f"keyspace-{n}.db*")) / 1e6
    print(
        f"| {n:,} | {n / load_s:,.0f}/s | {get[0]:.1f} / {get[1]:.1f} | {put[0]:.1f} / {put[1]:.1f} "
        f"| {ranged[0] / 1000:.2f} / {ranged[1] / 1000:.2f} | {ranged[0] / get[0]:.0f}x | {size_mb:,.0f} MB "
        f"| {rss_mb():.0f} MB |",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="10000,1000000", help="comma-separated sizes")
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    sizes = [int(x) for x in args.keys.split(",")]
    print(
        "| keys | load | get p50 / p99 µs | put p50 / p99 µs | 1,000-key prefix p50 / p99 ms "
        "| prefix / get | file | RSS after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in sizes:
            measure(n, Path(tmp), args.samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
