"""Real raftd processes on 127.0.0.1 for process-level tests: raftd.launcher's LocalCluster, plus what
tests need (SIGSTOP, log reading, gRPC stubs, waiting with every node's output in the failure).

Each node's stdout and stderr are appended to per-node files (node-ID.out, .err), so a failing test can
show what every node printed. Every process is killed at close(), which fixtures call in a finally block;
the launcher's atexit hook is the last line of defence when pytest itself dies.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from raftctl.benchmark import proc_rss_kib
from raftd.launcher import HOST as HOST
from raftd.launcher import LocalCluster, node_env, write_map
from raftd.launcher import free_ports as free_ports
from raftd.pb import kv_pb2, kv_pb2_grpc

START_TIMEOUT_S = 20.0
LEADER_TIMEOUT_S = 20.0
RPC_TIMEOUT_S = 2.0
POLL_S = 0.05
# Small reconnect backoff: after a node restarts, a test's channel must find it again within a poll or two.
CLIENT_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]

T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T | None], timeout: float = LEADER_TIMEOUT_S) -> T:
    """Poll check() until it returns something other than None/False; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
        except (grpc.RpcError, OSError, AssertionError) as e:
            result = None
            last = e.details() if isinstance(e, grpc.RpcError) else e  # type: ignore[attr-defined]
        else:
            last = result
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last outcome: {last!r}")
        time.sleep(POLL_S)


def raftd_env() -> dict[str, str]:
    """The environment of a raftd process the tests start themselves (raftd.launcher.node_env)."""
    return node_env()


def run_raftd(
    args: list[str], cwd: Path, timeout: float = START_TIMEOUT_S, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run raftd to completion (for inputs it must refuse), with env added to its environment; it is
    killed if it outlives timeout."""
    return subprocess.run(
        [sys.executable, "-m", "raftd", *args],
        cwd=cwd,
        env={**raftd_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Cluster(LocalCluster):
    """N raftd nodes with ids 0..N-1 on free loopback ports; a conf (default) or YAML cluster map."""

    def __init__(
        self,
        root: Path,
        n: int = 3,
        *,
        fmt: str = "conf",
        election_timeout_ms: tuple[int, int] | None = None,
        heartbeat_ms: int | None = None,
        ports: list[int] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        args: list[str] = []
        if election_timeout_ms is not None:
            args += ["--election-timeout", "{}-{}".format(*election_timeout_ms)]
        if heartbeat_ms is not None:
            args += ["--heartbeat-interval", str(heartbeat_ms)]
        super().__init__(root, n, ports=ports, fmt=fmt, args=args, env=env)
        self.paused: set[int] = set()
        self._channels: dict[int, grpc.Channel] = {}

    def write_map(self, fmt: str) -> None:
        """Write the map again (after a test changed self.ports)."""
        write_map(self.config_path, self.ports, fmt)

    # -- logs ----------------------------------------------------------------------------------------
    def log(self, i: int, since: int = 0) -> str:
        """Node i's stdout over all its runs (from byte offset since)."""
        path = self.out_path(i)
        if not path.exists():
            return ""
        with path.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def log_size(self, i: int) -> int:
        """A mark to pass as log(i, since=...) to look only at what comes after now."""
        path = self.out_path(i)
        return path.stat().st_size if path.exists() else 0

    def rss_mib(self, i: int) -> float:
        """Node i's resident memory now, in MiB."""
        return proc_rss_kib(self.procs[i].pid) / 1024

    def stderr(self, i: int) -> str:
        path = self.err_path(i)
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(
        self, i: int, pattern: str, since: int = 0, timeout: float = LEADER_TIMEOUT_S
    ) -> re.Match[str]:
        """Wait until node i's stdout (from since) has a line matching the regex pattern."""
        rx = re.compile(pattern, re.MULTILINE)
        return wait_until(f"node {i} to print /{pattern}/", lambda: rx.search(self.log(i, since)), timeout)

    def dump_logs(self) -> str:
        """Every node's output, for assertion messages."""
        parts = []
        for i in range(self.n):
            parts.append(f"--- node {i} stdout ---\n{self.log(i)[-4000:]}")
            err = self.stderr(i)
            if err:
                parts.append(f"--- node {i} stderr ---\n{err[-4000:]}")
        return "\n".join(parts)

    # -- processes -----------------------------------------------------------------------------------
    def start(self, i: int, *extra: str) -> subprocess.Popen[bytes]:
        """Start node i (appending to its log files); does not wait for it to listen."""
        assert self.procs.get(i) is None or self.procs[i].poll() is not None, f"node {i} is running"
        proc = super().start(i, *extra)
        self.paused.discard(i)
        self._drop_channel(i)
        return proc

    def start_all(self, *, wait: bool = True) -> int | None:
        """Start every node; with wait, return the leader once all of them agree on one."""
        super().start_all()
        return self.wait_leader() if wait else None

    def running(self) -> list[int]:
        """The map's nodes whose process is alive and not SIGSTOPped (not those started with join())."""
        return [i for i in self.alive() if i in self.ids and i not in self.paused]

    def kill(self, i: int) -> int:
        """SIGKILL node i and reap it; returns its exit status."""
        return self._signal_and_wait(i, signal.SIGKILL)

    def terminate(self, i: int, timeout: float = START_TIMEOUT_S) -> int:
        """SIGTERM node i and wait for it to exit on its own; returns its exit status."""
        return self._signal_and_wait(i, signal.SIGTERM, timeout)

    def stop(self, i: int) -> None:
        """SIGSTOP node i: it is frozen, its sockets stay open but nothing answers."""
        os.kill(self.procs[i].pid, signal.SIGSTOP)
        self.paused.add(i)

    def cont(self, i: int) -> None:
        os.kill(self.procs[i].pid, signal.SIGCONT)
        self.paused.discard(i)

    def restart(self, i: int) -> None:
        """SIGKILL (if running) and start again with the same data directory."""
        if self.procs.get(i) is not None and self.procs[i].poll() is None:
            self.kill(i)
        self.start(i)

    def _signal_and_wait(self, i: int, sig: signal.Signals, timeout: float = START_TIMEOUT_S) -> int:
        if i in self.paused and sig != signal.SIGKILL and self.procs[i].poll() is None:
            self.cont(i)
        try:
            return self.wait_exit(i, sig, timeout)
        except TimeoutError as e:
            raise AssertionError(f"{e} (killed now)\n{self.dump_logs()}") from None
        finally:
            self.paused.discard(i)
            self._drop_channel(i)

    def close(self) -> None:
        """Kill every process and close every channel; safe to call more than once."""
        super().close()
        self.paused.clear()
        for i in list(self._channels):
            self._drop_channel(i)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- gRPC ------------------------------------------------------------------------------------------
    def channel(self, i: int) -> grpc.Channel:
        if i not in self._channels:
            self._channels[i] = grpc.insecure_channel(self.address(i), options=CLIENT_CHANNEL_OPTIONS)
        return self._channels[i]

    def _drop_channel(self, i: int) -> None:
        ch = self._channels.pop(i, None)
        if ch is not None:
            ch.close()

    def kv(self, i: int) -> kv_pb2_grpc.KVStub:
        return kv_pb2_grpc.KVStub(self.channel(i))

    def admin(self, i: int) -> kv_pb2_grpc.AdminStub:
        return kv_pb2_grpc.AdminStub(self.channel(i))

    def get_leader(self, i: int) -> kv_pb2.GetLeaderResponse:
        return self.admin(i).GetLeader(kv_pb2.GetLeaderRequest(), timeout=RPC_TIMEOUT_S)

    def status(self, i: int) -> kv_pb2.StatusResponse:
        return self.admin(i).Status(kv_pb2.StatusRequest(), timeout=RPC_TIMEOUT_S)

    def wait_up(self, i: int, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until node i answers Status (its port is open and its loop runs)."""
        wait_until(f"node {i} to answer", lambda: self.status(i), timeout)

    def wait_leader(
        self, nodes: list[int] | None = None, timeout: float = LEADER_TIMEOUT_S, exclude: int | None = None
    ) -> int:
        """Wait until every given node (default: the running ones) names the same leader; return its id.

        exclude: a node that must not be the answer (the one just killed or suspended).
        """

        def agreed() -> int | None:
            ids = nodes if nodes is not None else self.running()
            leaders = {self.get_leader(i).leader_id for i in ids}
            if len(leaders) != 1:
                raise AssertionError(f"nodes {ids} name leaders {sorted(leaders)}")
            (lead,) = leaders
            if lead < 0 or lead == exclude or lead not in ids:
                raise AssertionError(f"nodes {ids} name leader {lead}")
            return lead

        try:
            return wait_until(f"a leader agreed by nodes {nodes or self.running()}", agreed, timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.dump_logs()}") from None

    def followers(self, leader: int) -> list[int]:
        return [i for i in range(self.n) if i != leader]

    # -- KV helpers (retrying only where a retry is safe) ----------------------------------------------
    def put(self, i: int, key: str | bytes, value: str | bytes, **kw: object) -> kv_pb2.PutResponse:
        return self.kv(i).Put(kv_pb2.PutRequest(key=_b(key), value=_b(value), **kw), timeout=5.0)

    def get(self, i: int, key: str | bytes, *, local: bool = False) -> kv_pb2.GetResponse:
        return self.kv(i).Get(kv_pb2.GetRequest(key=_b(key), local=local), timeout=5.0)

    def delete(self, i: int, key: str | bytes, **kw: object) -> kv_pb2.DeleteResponse:
        return self.kv(i).Delete(kv_pb2.DeleteRequest(key=_b(key), **kw), timeout=5.0)

    def put_retrying(self, i: int, key: str, value: str, timeout: float = LEADER_TIMEOUT_S) -> int:
        """A Put that is idempotent to repeat (same key, same value): retried until acknowledged."""
        return wait_until(f"put {key}={value} via node {i}", lambda: self.put(i, key, value).index, timeout)

    def wait_value(self, i: int, key: str, value: str | None, *, local: bool, timeout: float = 20.0) -> None:
        """Wait until node i serves key with value (None: absent), e.g. while it catches up."""

        def check() -> bool:
            r = self.get(i, key, local=local)
            return (r.found and r.value == value.encode()) if value is not None else not r.found

        wait_until(f"node {i} to serve {key}={value!r} (local={local})", check, timeout)


def _b(x: str | bytes) -> bytes:
    return x.encode() if isinstance(x, str) else x


@contextlib.contextmanager
def cluster_of(root: Path, n: int = 3, **kw: object) -> Iterator[Cluster]:
    """A started cluster with a leader; every process killed on the way out, whatever happened."""
    c = Cluster(root, n, **kw)  # type: ignore[arg-type]
    try:
        c.start_all()
        yield c
    finally:
        c.close()


# -- tools made by others, which tests drive raftd with ---------------------------------------------------
ETCDCTL_INSTALL = "Debian's etcd-client package has it: apt-get install etcd-client"


def need(what: str, present: bool, install: str) -> None:
    """A test that needs a tool skips, saying how to install it, when it is absent; under CI=true it fails
    instead, since .ci/run installs every tool the suite needs."""
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing under CI, whose .ci/run installs it ({install})")
    pytest.skip(f"{what} is not installed ({install}; .ci/run installs it)")


def etcdctl_env() -> dict[str, str]:
    """Our environment for etcdctl 3.4: its v3 API, and no ETCDCTL_* variable of the caller's (it refuses
    to run when ETCDCTL_ENDPOINTS and --endpoints are both set)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}, "ETCDCTL_API": "3"}


# -- earlier releases, for upgrade tests ------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]


def release_env(commit: str, dest: Path) -> dict[str, str]:
    """The environment that runs raftd as of commit (exported from git history under dest). Skips when
    this clone lacks the commit (a shallow clone), and fails under CI=true, which must run the test."""
    if not _export(commit, dest):
        if os.environ.get("CI"):
            pytest.fail(f"commit {commit} is not in this clone (a shallow clone?)")
        pytest.skip(
            f"the upgrade test runs an earlier release's code from git history, and this clone lacks "
            f"commit {commit} (a shallow clone: `git fetch --unshallow` brings it)"
        )
    return {"PYTHONPATH": str(dest)}


def meta_of(db: Path) -> dict[str, object]:
    """A node's database's meta table, read without taking its lock."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()


def _export(commit: str, dest: Path) -> bool:
    """The raftd package as of commit, under dest; False when the clone does not have that commit."""
    probe = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return False
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "raftd"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return True
