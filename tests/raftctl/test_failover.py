"""The client follows the leader: killed between two commands, or suspended under a connected shell.

Each test has a cluster of its own, since it takes a node down.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
