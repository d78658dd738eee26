"""What each side may import (issue 18): the client reads the backup format without the node's insides."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DAEMON_INSIDES = ("raftd.core", "raftd.storage", "raftd.node", "raftd.server", "raftd.api")


def test_raftctl_imports_none_of_the_daemons_insides() -> None:
    code = (
        "import sys, raftctl.cli, raftctl.aio, raftctl.shell, raftctl.benchmark\n"
        f"print(sorted(m for m in sys.modules if m.startswith({DAEMON_INSIDES!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


ROOT = Path(__file__).resolve().parent.parent


def test_the_services_use_the_nodes_public_surface_only() -> None:
    """Issue 18: the services reached into the driver (node.raw.raft.term, node.raw.status(),
    node.kv.applied, node.peers[to_core(id)].channel), so the +1 id mapping leaked into api/."""
    insides = re.compile(
        r"\bnode\.(raw|kv|peers|addresses|inbox|proposals|waiting)\b|\b(to_core|from_core)\b"
    )
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in [*sorted((ROOT / "raftd" / "api").glob("*.py")), ROOT / "raftd" / "server.py"]
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if insides.search(line)
    ]
    assert found == []


def test_only_the_core_reads_the_raft_state_machine() -> None:
    """raw.raft is the core's own; the driver and the simulator's checkers read the core through RawNode
    (its entry() and snapshot_index are there for the checkers, which compare logs across nodes)."""
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "raftd").rglob("*.py"))
        if not path.is_relative_to(ROOT / "raftd" / "core")
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if re.search(r"\braw\.raft\b", line)
    ]
    assert found == []
