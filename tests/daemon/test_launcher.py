"""raftd.launcher, the one local-cluster launcher (issue 18): it stops nodes in order and never leaves one
behind, even when its caller forgets to close it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from raftd.launcher import LocalCluster

from .cluster import wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: its parent (the script) has exited and init reaps it.
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return bool(stat) and stat.split(")")[-1].split()[0] != "Z"


def test_stop_all_stops_every_node_with_sigterm(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path)
    try:
        c.start_all()

        def started() -> bool:
            return all(
                c.out_path(i).exists() and "The server starts" in c.out_path(i).read_text() for i in c.ids
            )

        wait_until("every node to start", started)
        assert c.stop_all() == 0, [c.err_path(i).read_text() for i in c.ids]
        assert c.alive() == []
        assert all("The server stops" in c.out_path(i).read_text() for i in c.ids)
    finally:
        c.close()


def test_a_cluster_its_caller_never_closed_is_killed_at_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from raftd.launcher import LocalCluster
        c = LocalCluster(Path({str(tmp_path)!r}))
        c.start_all()
        print(" ".join(str(p.pid) for p in c.procs.values()), flush=True)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 3
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
