"""Snapshot benchmarks (issue 5): prints numbers, asserts nothing.

  1. restart of a node holding 1,000,000 keys (16-byte values) until it serves again (target < 3 s);
  2. a wiped follower catching up by InstallSnapshot of those 1,000,000 keys (target < 10 s), back under a
     new id as a wiped node must come back (member remove, member add, raftd --join);
  3. whether taking a snapshot of 1,000,000 keys on the leader disturbs the cluster (term and leader
     unchanged while it runs);
  4. database file size after 1,000,000 overwrites of 10,000 keys, relative to the live data (target < 5x),
     driven through the storage and state machine exactly as a node drives them, without the network.

The cluster is seeded with `raftd --restore` from a generated backup, so no million writes are needed to
get a million keys. Run: .venv/bin/python bench/snapshots.py [--keys N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc

from raftctl.client import Client
from raftd.backup import pack
from raftd.core import Entry, HardState, Snapshot, SnapshotMeta
from raftd.kv import Command, Image, KVStore, Op, encode
from raftd.launcher import LocalCluster
from raftd.pb import kv_pb2, kv_pb2_grpc
from raftd.settings import Limits
from raftd.snapshots import snapshot_due
from raftd.storage import SqliteStorage

VALUE = b"v" * 16


class Bench(LocalCluster):
    """Three nodes (raftd.launcher) that snapshot every 2,000 entries."""

    def __init__(self, root: Path, keys: int) -> None:
        super().__init__(root, 3, args=["--snapshot-entries", "2000"])
        self.keys = keys

    def stub(self, i: int) -> tuple[kv_pb2_grpc.KVStub, kv_pb2_grpc.AdminStub]:
        ch = grpc.insecure_channel(f"127.0.0.1:{self.ports[i]}")
        return kv_pb2_grpc.KVStub(ch), kv_pb2_grpc.AdminStub(ch)

    def wait(self, what: str, check, timeout: float = 120.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = check()
                if got:
                    return got
            except grpc.RpcError:
                pass
            time.sleep(0.01)
        raise SystemExit(f"timed out waiting for {what}")

    def leader(self) -> int:
        def check() -> int | None:
            for i, p in self.procs.items():
                if p.poll() is None:
                    r = self.stub(i)[1].GetLeader(kv_pb2.GetLeaderRequest(), timeout=1)
                    if r.leader_id >= 0:
                        return r.leader_id + 1
            return None

        return self.wait("a leader", check) - 1


def seed_backup(path: Path, keys: int) -> None:
    data = {b"key%07d" % i: VALUE for i in range(keys)}
    image = encode(Image.of(data))
    path.write_bytes(pack("bench", keys, 1, image))


def restart_and_catch_up(root: Path, keys: int) -> dict[str, float]:
    backup = root / "seed.bak"
    seed_backup(backup, keys)
    b = Bench(root, keys)
    out: dict[str, float] = {}
    try:
        for i in range(3):
            b.start(i, "--restore", str(backup))
        leader = b.leader()
        probe = b"key%07d" % (keys - 1)

        # 1. Restart of a follower holding the keys: SIGKILL, start, time to a served local read.
        follower = (leader + 1) % 3
        b.kill(follower)
        started = time.monotonic()
        b.start(follower)
        kv = b.stub(follower)[0]
        b.wait(
            "the restarted node", lambda: kv.Get(kv_pb2.GetRequest(key=probe, local=True), timeout=1).found
        )
        out["restart_s"] = time.monotonic() - started

        # 3. A snapshot of all keys on every node (2,000 writes trigger one) must not disturb the cluster.
        term_before = b.stub(leader)[1].Status(kv_pb2.StatusRequest(), timeout=5).term
        lkv = b.stub(leader)[0]
        for n in range(2100):
            lkv.Put(kv_pb2.PutRequest(key=b"extra%d" % n, value=VALUE), timeout=10)
        time.sleep(3)  # let the snapshots finish
        st = b.stub(leader)[1].Status(kv_pb2.StatusRequest(), timeout=5)
        out["term_change_during_snapshot"] = st.term - term_before
        out["leader_kept"] = float(st.role == "leader")

        # 2. A wiped follower catches up by InstallSnapshot. Under its old id its peers would refuse it
        # (its vote is forgotten): it comes back as a new member at its old address, as
        # docs/operations.md says to replace a node.
        wiped = (leader + 2) % 3
        b.kill(wiped)
        shutil.rmtree(b.data_dir(wiped))
        lkv.Put(kv_pb2.PutRequest(key=b"after-wipe", value=b"x"), timeout=10)
        with Client([b.address(i) for i in range(3) if i != wiped], timeout=30.0) as admin:
            admin.member_remove(wiped)
            new = admin.member_add(b.address(wiped)).member.id
        started = time.monotonic()
        b.join(new, [b.address(i) for i in range(3) if i != wiped])
        wkv = b.stub(wiped)[0]
        b.wait(
            "the wiped node to catch up",
            lambda: wkv.Get(kv_pb2.GetRequest(key=b"after-wipe", local=True), timeout=1).found,
        )
        out["catch_up_s"] = time.monotonic() - started
    finally:
        b.close()
    return out


def db_growth(root: Path, overwrites: int, keyspace: int) -> dict[str, float]:
    """The node's persistence pattern and snapshot policy without the network: batches of entries saved,
    applied, snapshotted when raftd.snapshots.snapshot_due says so, space reclaimed."""
    store = SqliteStorage.open(root / "growth", "bench", 0)
    kv = KVStore()
    index, term, batch = 0, 1, 64
    snap_index = log_bytes = image_bytes = 0
    peak = peak_wal = 0
    try:
        while index < overwrites:
            entries = []
            for _ in range(batch):
                index += 1
                key = b"key%05d" % (index % keyspace)
                entries.append(Entry(index, term, Command(Op.PUT, key, VALUE, b"client", index).encode()))
            store.save(HardState(term, 1, index), entries)
            for e in entries:
                kv.apply(e.index, Command.decode(e.data))
                log_bytes += len(e.data)
            if snapshot_due(index - snap_index, log_bytes, image_bytes, Limits.snapshot_entries):
                image = encode(kv.image())
                store.save(None, [], Snapshot(SnapshotMeta(index, term), image))
                store.reclaim()
                snap_index, log_bytes, image_bytes = index, 0, len(image)
            if index % 10_000 < batch:
                peak = max(peak, _db_bytes(root / "growth", "raft.db", "snapshot-*"))
                peak_wal = max(peak_wal, _db_bytes(root / "growth", "raft.db-wal"))
        size = _db_bytes(root / "growth", "raft.db", "snapshot-*")
        wal = _db_bytes(root / "growth", "raft.db-wal")
    finally:
        store.close()
    live = sum(len(k) + len(v) for k, v in kv.data.items())
    return {
        "db_bytes": size,
        "wal_bytes": wal,
        "db_peak_bytes": max(peak, size),
        "wal_peak_bytes": max(peak_wal, wal),
        "live_bytes": live,
    }


def _db_bytes(d: Path, *patterns: str) -> int:
    return sum(p.stat().st_size for pattern in patterns for p in d.glob(pattern))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--overwrites", type=int, default=1_000_000)
    ap.add_argument("--keyspace", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="raftd-bench-") as tmp:
        root = Path(tmp)
        print(f"# snapshot benchmarks: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        r = restart_and_catch_up(root, args.keys)
        print(
            f"restart of a node holding {args.keys:,} keys, to a served read: {r['restart_s']:.2f} s (< 3 s)"
        )
        print(f"wiped follower caught up by InstallSnapshot: {r['catch_up_s']:.2f} s (target < 10 s)")
        print(
            f"snapshot of {args.keys:,} keys under load: term changed by "
            f"{int(r['term_change_during_snapshot'])}, leader kept: {'yes' if r['leader_kept'] else 'no'}"
        )
        g = db_growth(root, args.overwrites, args.keyspace)
        live = g["live_bytes"]
        total = g["db_bytes"] + g["wal_peak_bytes"]
        print(
            f"disk after {args.overwrites:,} overwrites of {args.keyspace:,} keys "
            f"({live / 1e6:.2f} MB live): raft.db + snapshot {g['db_bytes'] / 1e6:.2f} MB "
            f"({g['db_bytes'] / live:.1f}x), with the WAL at its peak {total / 1e6:.2f} MB "
            f"({total / live:.1f}x; target < 5x)"
        )


if __name__ == "__main__":
    main()
