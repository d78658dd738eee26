"""raftd runs on gRPC's older polling engine unless told otherwise (raftd/grpcenv.py), and gRPC still
knows the switches that choose it: a gRPC release that dropped them would quietly cost the speed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from raftd.grpcenv import POLL_ENGINE

# A server and a call: enough for gRPC to read its settings and start its engine.
_USE_GRPC = """
import asyncio, grpc
async def main():
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await channel.unary_unary("/no.Such/Method")(b"", timeout=5)
        except grpc.aio.AioRpcError:
            pass
    await server.stop(None)
asyncio.run(main())
"""


def _grpc_errors(experiments: str) -> str:
    env = {"GRPC_VERBOSITY": "ERROR", "GRPC_EXPERIMENTS": experiments}
    proc = subprocess.run(
        [sys.executable, "-c", _USE_GRPC], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return proc.stderr


def test_grpc_still_knows_the_switches() -> None:
    assert "Unknown experiment" in _grpc_errors("-no_such_switch"), "the check must see an unknown switch"
    assert "Unknown experiment" not in _grpc_errors(POLL_ENGINE)


# Records GRPC_EXPERIMENTS at the moment grpc is first imported, then imports the program's module.
_WATCH_GRPC_LOAD = """
import importlib, importlib.abc, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_EXPERIMENTS"))
sys.meta_path.insert(0, Watch())
importlib.import_module(sys.argv[1])
print(repr(seen[0]) if seen else "grpc not loaded")
"""


@pytest.mark.parametrize("program", ["raftd.cli", "raftctl.cli", "raftctl.benchmark"])
@pytest.mark.parametrize(("setting", "seen"), [(None, POLL_ENGINE), ("", "")])
def test_programs_choose_the_older_engine_before_grpc_loads_unless_told_otherwise(
    program: str, setting: str | None, seen: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    if setting is not None:
        env["GRPC_EXPERIMENTS"] = setting  # the user's own choice ("": gRPC's defaults) is kept
    proc = subprocess.run(
        [sys.executable, "-c", _WATCH_GRPC_LOAD, program],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.strip() == repr(seen)
