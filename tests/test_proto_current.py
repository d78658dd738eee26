"""The generated code in raftd/pb must be what `make proto` produces from proto/ today."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.proto"))
    assert protos, "no .proto files found"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            f"--python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
        # protoc finds the typed-stub plugin (mypy-protobuf's protoc-gen-mypy_grpc) on PATH.
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(ROOT): p.read_bytes()
        for p in (ROOT / "raftd" / "pb").iterdir()
        if p.is_file() and p.name != "__init__.py"
    }
    assert fresh.keys() == committed.keys(), "raftd/pb and proto/ list different files: run `make proto`"
    stale = sorted(str(k) for k in fresh if fresh[k] != committed[k])
    assert not stale, f"stale generated code, run `make proto`: {stale}"
