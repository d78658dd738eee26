"""What each side may import (issue 18): the client reads the backup format without the node's insides."""

from __future__ import annotations

import subprocess
import sys

DAEMON_INSIDES = ("raftd.core", "raftd.storage", "raftd.node", "raftd.server", "raftd.api")


def test_raftctl_imports_none_of_the_daemons_insides() -> None:
    code = (
        "import sys, raftctl.cli, raftctl.aio, raftctl.shell, raftctl.benchmark\n"
        f"print(sorted(m for m in sys.modules if m.startswith({DAEMON_INSIDES!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
