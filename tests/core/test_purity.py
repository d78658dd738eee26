"""The core stays pure: no I/O, no clock, no threads, so it is deterministic and simulable."""

from __future__ import annotations

import ast
from pathlib import Path

import raftd.core

FORBIDDEN = {
    "asyncio",
    "grpc",
    "sqlite3",
    "time",
    "threading",
    "socket",
    "os",
    "subprocess",
    "logging",
    "datetime",
}


def test_core_imports_nothing_impure() -> None:
    core = Path(raftd.core.__file__).parent
    found = []
    for path in sorted(core.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not found, found
