"""Backup and restore: `raftctl snapshot save FILE`, then `raftd --restore FILE` seeds a new cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .cluster import Cluster, cluster_of, raftd_env


def _raftctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftctl", *args], capture_output=True, text=True, env=raftd_env(), timeout=60
    )


def _raftd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftd", *args],
        capture_output=True,
        text=True,
        env=raftd_env(),
        cwd=cwd,
        timeout=60,
    )


def test_backup_then_restore_into_a_new_cluster(tmp_path: Path) -> None:
    expected = {f"k{i}": f"v{i}" for i in range(30)}
    with cluster_of(tmp_path / "old") as old:
        leader = old.wait_leader()
        for key, value in expected.items():
            old.put(leader, key, value)
        old.delete(leader, "k0")
        del expected["k0"]
        # Asked at a follower: the leader takes it, the follower relays it.
        follower = old.followers(leader)[0]
        backup = tmp_path / "store.bak"
        r = _raftctl("--endpoints", old.address(follower), "snapshot", "save", str(backup))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"Snapshot saved to {backup} (index ")
        # Written after the backup: must not be in it.
        old.put(leader, "later", "x")

    new = Cluster(tmp_path / "new", 3)
    try:
        for i in range(3):
            new.start(i, "--restore", str(backup))
        leader = new.wait_leader()
        for key, value in expected.items():
            assert new.get(leader, key).value == value.encode()
        assert not new.get(leader, "k0").found
        assert not new.get(leader, "later").found
        new.put(leader, "fresh", "y")
        for i in range(3):
            new.wait_value(i, "fresh", "y", local=True)
            assert f"Restored {backup}" in new.log(i)
        # A data directory that already holds state is never overwritten by a restore.
        new.kill(0)
        r = _raftd(
            "0",
            "--config",
            str(new.config_path),
            "--data-dir",
            str(new.data_dir(0)),
            "--restore",
            str(backup),
            cwd=new.root,
        )
        assert r.returncode == 1
        assert "already holds Raft state" in r.stderr and r.stderr.count("\n") == 1
    finally:
        new.close()


def test_restore_refuses_corrupt_or_foreign_files(tmp_path: Path) -> None:
    conf = tmp_path / "config.conf"
    conf.write_text("0 127.0.0.1 1\n")
    good = tmp_path / "good.bak"
    with cluster_of(tmp_path / "c") as c:
        c.put(c.wait_leader(), "k", "v")
        assert _raftctl("--endpoints", c.address(0), "snapshot", "save", str(good)).returncode == 0
    raw = good.read_bytes()
    cases = {
        "foreign.bak": (b"PK\x03\x04 not a backup", "not a raftd backup file"),
        "truncated.bak": (raw[: len(raw) - 3], "checksum mismatch"),
        "flipped.bak": (raw[:-10] + bytes([raw[-10] ^ 1]) + raw[-9:], "checksum mismatch"),
        "header.bak": (raw[:13] + b"x" + raw[14:], "damaged backup header"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        data = tmp_path / f"data-{name}"
        r = _raftd("0", "--config", str(conf), "--data-dir", str(data), "--restore", str(path), cwd=tmp_path)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (
            name,
            r.stderr,
        )
        assert not data.exists(), f"{name}: a refused restore must leave nothing behind"
