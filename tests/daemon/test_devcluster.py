"""`make run`'s launcher (raftd/devcluster.py): every way of stopping it stops every node (issue 17: a
SIGTERM to its process group left the nodes running, orphaned), and `make stop` finds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raftd.launcher import free_ports

from .cluster import raftd_env, wait_until

STOP_S = 20.0


def launch(cwd: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """The launcher on a 3-node conf map of free ports, in a process group of its own (as a terminal's)."""
    ports = free_ports(3)
    (cwd / "config.conf").write_text("".join(f"{i} 127.0.0.1 {p}\n" for i, p in enumerate(ports)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "raftd.devcluster", "config.conf"],
        cwd=cwd,
        env=raftd_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, ports


def make_stop(cwd: Path) -> subprocess.CompletedProcess[str]:
    """What `make stop` runs."""
    return subprocess.run(
        [sys.executable, "-m", "raftd.devcluster", "--stop"],
        cwd=cwd,
        env=raftd_env(),
        capture_output=True,
        text=True,
        timeout=STOP_S,
        check=False,
    )


def node_pids(cwd: Path) -> list[int]:
    """Live raftd node processes whose working directory is cwd."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            here = Path(os.readlink(entry / "cwd")) == cwd
        except OSError:
            continue
        if here and b"raftd" in cmdline and b"--config" in cmdline and b"raftd.devcluster" not in cmdline:
            pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("how", ["sigterm-to-group", "make-stop"])
def test_stopping_the_launcher_stops_every_node(tmp_path: Path, how: str) -> None:
    cwd = tmp_path.resolve()
    proc, _ = launch(cwd)
    try:
        nodes = wait_until("three nodes", lambda: (lambda p: p if len(p) == 3 else None)(node_pids(cwd)))
        wait_until("the pid file", lambda: (cwd / "data" / "devcluster.pid").exists())
        if how == "sigterm-to-group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            stopped = make_stop(cwd)
            assert (stopped.returncode, stopped.stdout) == (0, "The cluster stopped\n"), stopped
        proc.wait(timeout=STOP_S)
        deadline = time.monotonic() + STOP_S
        while any(alive(pid) for pid in nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in nodes if alive(pid)], "nodes outlived their launcher"
        assert not (cwd / "data" / "devcluster.pid").exists()
    finally:
        for pid in node_pids(cwd):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_make_stop_with_nothing_running_says_so(tmp_path: Path) -> None:
    r = make_stop(tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "no cluster is running from this directory\n", "")
