"""Local clusters of raftd processes: the one launcher behind `make run`, `make bench`, the snapshot bench
and the process-level tests.

Each node is `python -m raftd ID --config MAP [--data-dir DIR] ...` in a session of its own, so that a
signal to the caller's process group (Ctrl-C, SIGTERM to `make run`) reaches only the caller, which then
stops the nodes in order: SIGTERM (a leader hands over first), SIGKILL after a grace period. Every
process a LocalCluster started is killed when it is closed, and at interpreter exit if nobody closed it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
STOP_GRACE_S = 5.0  # how long a node may take to stop on SIGTERM before it is killed

_live: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Should the caller die without closing its clusters (a test run interrupted), leave no node behind."""
    for cluster in list(_live):
        cluster.close()


def free_ports(n: int, host: str = HOST) -> list[int]:
    """n distinct free TCP ports on host (held open together so they cannot repeat)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A node's environment: ours, unbuffered (a line is in its file by the time the state it describes
    is visible), and extra on top."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}


def write_map(path: Path, ports: Sequence[int], fmt: str = "conf", host: str = HOST) -> None:
    """A cluster map of nodes 0..n-1 on host: the original conf format, or YAML."""
    if fmt == "yaml":
        lines = ["nodes:"] + [f"  - {{id: {i}, host: {host}, port: {p}}}" for i, p in enumerate(ports)]
    else:
        lines = ["# written by raftd.launcher"] + [f"{i} {host} {p}" for i, p in enumerate(ports)]
    path.write_text("\n".join(lines) + "\n")


class LocalCluster:
    """The nodes of one cluster map, started and stopped as processes of this machine.

    With `ports`, a map of nodes 0..n-1 on 127.0.0.1 is written to root (`fmt`: conf or yaml); with
    `config`, that map is used as it is and `ids` says which nodes to run. Each node's data directory is
    root/data-ID unless `data_dirs` is False (raftd's own default, ./data/node-ID from root). Output goes to
    root/node-ID.out and .err unless start() is given other streams.
    """

    def __init__(
        self,
        root: Path,
        n: int = 3,
        *,
        ports: Sequence[int] | None = None,
        config: Path | None = None,
        ids: Sequence[int] | None = None,
        fmt: str = "conf",
        data_dirs: bool = True,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ids = list(ids) if ids is not None else list(range(n))
        self.n = len(self.ids)
        self.args = list(args)  # given to every node
        self.env = dict(env or {})  # added to every node's environment (test hooks: raftd/testhooks.py)
        self.data_dirs = data_dirs
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        if config is not None:
            self.config_path = Path(config)
            self.ports: list[int] = []
        else:
            self.ports = list(ports) if ports is not None else free_ports(self.n)
            self.config_path = self.root / ("cluster.yaml" if fmt == "yaml" else "config.conf")
            write_map(self.config_path, self.ports, fmt)
        _live.add(self)

    # -- layout --------------------------------------------------------------------------------------
    def address(self, i: int) -> str:
        return f"{HOST}:{self.ports[i]}"

    @property
    def endpoints(self) -> list[str]:
        return [self.address(i) for i in self.ids]

    def data_dir(self, i: int) -> Path:
        return self.root / f"data-{i}" if self.data_dirs else self.root / "data" / f"node-{i}"

    def out_path(self, i: int) -> Path:
        return self.root / f"node-{i}.out"

    def err_path(self, i: int) -> Path:
        return self.root / f"node-{i}.err"

    # -- processes -----------------------------------------------------------------------------------
    def command(self, i: int, *extra: str) -> list[str]:
        args = [sys.executable, "-m", "raftd", str(i), "--config", str(self.config_path)]
        if self.data_dirs:
            args += ["--data-dir", str(self.data_dir(i))]
        return args + self.args + list(extra)

    def start(
        self,
        i: int,
        *extra: str,
        stdout: int | IO[bytes] | None = None,
        stderr: int | IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start node i; it does not wait for the node to listen. Output is appended to its files unless
        stdout/stderr say otherwise (subprocess.PIPE, subprocess.STDOUT, a file)."""
        return self._spawn(i, self.command(i, *extra), stdout, stderr)

    def join(self, i: int, endpoints: Sequence[str], *extra: str) -> subprocess.Popen[bytes]:
        """Start node i, added to the running cluster already (raftctl member add), with --join endpoints:
        told the cluster, it reads no map. Its directory and output are where the map's nodes keep theirs,
        and close() stops it with them."""
        args = [sys.executable, "-m", "raftd", str(i), "--join", ",".join(endpoints)]
        if self.data_dirs:
            args += ["--data-dir", str(self.data_dir(i))]
        return self._spawn(i, args + self.args + list(extra), None, None)

    def _spawn(
        self, i: int, command: list[str], stdout: int | IO[bytes] | None, stderr: int | IO[bytes] | None
    ) -> subprocess.Popen[bytes]:
        running = self.procs.get(i)
        if running is not None and running.poll() is None:
            raise RuntimeError(f"node {i} is running")
        with contextlib.ExitStack() as files:
            if stdout is None:
                stdout = files.enter_context(self.out_path(i).open("ab"))
            if stderr is None:
                stderr = files.enter_context(self.err_path(i).open("ab"))
            proc = subprocess.Popen(
                command,
                cwd=self.root,
                env=node_env(self.env),
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        self.procs[i] = proc
        return proc

    def start_all(self) -> None:
        for i in self.ids:
            self.start(i)

    def alive(self) -> list[int]:
        """Nodes whose process has not exited."""
        return [i for i, p in self.procs.items() if p.poll() is None]

    def send(self, i: int, sig: signal.Signals) -> None:
        proc = self.procs[i]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def wait_exit(self, i: int, sig: signal.Signals, timeout: float = STOP_GRACE_S) -> int:
        """Send sig to node i and wait for it to exit: its exit status. TimeoutError after timeout (the
        node is killed then)."""
        proc = self.procs[i]
        self.send(i, sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"node {i} did not exit within {timeout:g}s of {sig.name}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def kill(self, i: int) -> int:
        """SIGKILL node i and reap it: its exit status."""
        return self.wait_exit(i, signal.SIGKILL)

    def stop_all(self, grace: float = STOP_GRACE_S) -> int:
        """SIGTERM every node, give them grace seconds together, kill the rest: the worst exit status."""
        for i in self.alive():
            self.send(i, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return max((p.returncode or 0) for p in self.procs.values()) if self.procs else 0

    def close(self) -> None:
        """Kill every node this cluster started; safe to call more than once."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        _live.discard(self)
