"""An N-node raftd cluster of containers for fault tests, built on testcontainers-python.

Why this shape:
- Ryuk (testcontainers' reaper) cannot be pulled here, so it is disabled and cleanup is ours: every
  container and network carries the labels below, `close()` removes them, an atexit hook and a SIGTERM
  handler cover interrupted runs, and `sweep_leftovers()` removes what a killed test process left behind.
- The host talks to nodes only through ports published on 127.0.0.1 (testcontainers' docker_host mode with
  TC_HOST=127.0.0.1). Each container sits on two networks: an ordinary bridge that only carries those
  published ports, and an *internal* bridge (no route anywhere else) where the nodes talk to each other
  under the aliases n0..nN-1 of the cluster map. Partitioning a node disconnects it from the internal
  network only, so the host can still send it requests, which is what the partition tests need.
- A node's data lives in the container's /data volume; kill/start keep the container (docker-py's
  wrapped container), so a restarted node comes back with its disk.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

# Before testcontainers is imported: its configuration is read at import time.
os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
os.environ["TESTCONTAINERS_CONNECTION_MODE"] = "docker_host"
os.environ["TC_HOST"] = "127.0.0.1"

import docker
import docker.errors
import grpc
from testcontainers.core.container import DockerContainer

from raftctl.client import Client, NodeStatus
from raftd.config import DEFAULT_ELECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_INTERVAL_MS
from raftd.launcher import free_ports
from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc

T = TypeVar("T")

IMAGE = "raftd:latest"
PORT = 50000  # every node listens on it inside its own container; the host sees a free 127.0.0.1 port
MAP_PATH = "/etc/raftd/cluster.yaml"
LABEL = "io.raftd.it.cluster"  # value: the cluster's name
LABEL_PID = "io.raftd.it.pid"  # the test process that owns it: leftovers of dead processes are swept
DEFAULT_WAIT_S = 30.0
POLL_S = 0.2


class ClusterError(AssertionError):
    """A bounded wait ran out; the message says what was awaited and what was seen last."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = POLL_S) -> T:
    """Poll predicate until it returns something truthy; ClusterError after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as e:  # a node mid-restart refuses connections: keep polling
            last = f"{type(e).__name__}: {e}"
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


class MappedClient(Client):
    """A raftctl Client whose endpoints are the cluster's own addresses ("n1:50000").

    Nodes name the leader by its address in the cluster map, which does not resolve on the host; dialing
    goes through the published 127.0.0.1 port instead, so leader hints are followed as in production.
    """

    def __init__(self, endpoints: list[str], mapping: dict[str, str], timeout: float, pin: bool) -> None:
        super().__init__(endpoints, timeout, pin=pin)
        self._mapping = mapping  # the cluster's own: nodes that join later are dialed too

    def _channel(self, endpoint: str) -> grpc.Channel:
        return super()._channel(self._mapping.get(endpoint, endpoint))


# -- cleanup of everything a test process created ------------------------------------------------------

_live: set[ContainerCluster] = set()
_live_lock = threading.Lock()
_hooks_installed = False


def _docker() -> docker.DockerClient:
    return docker.from_env()


def sweep_leftovers(only_mine: bool = False) -> list[str]:
    """Remove containers and networks of this harness whose owning process is gone (or, with only_mine,
    those of this process). Returns what was removed. Never touches anything without our label."""
    client = _docker()
    removed: list[str] = []

    def doomed(labels: dict[str, str]) -> bool:
        try:
            pid = int(labels.get(LABEL_PID, "0"))
        except ValueError:
            return False
        if only_mine:
            return pid == os.getpid()
        return pid != os.getpid() and not _pid_alive(pid)

    try:
        for c in client.containers.list(all=True, filters={"label": LABEL}):
            if doomed(c.labels):
                with contextlib.suppress(docker.errors.APIError):
                    c.remove(force=True, v=True)
                    removed.append(c.name)
        for net in client.networks.list(filters={"label": LABEL}):
            labels = net.attrs.get("Labels") or {}
            if doomed(labels):
                with contextlib.suppress(docker.errors.APIError):
                    net.remove()
                    removed.append(net.name)
                # The cluster map's temporary directory, named after the cluster.
                for leftover in Path(tempfile.gettempdir()).glob(f"{labels.get(LABEL, '?')}-*"):
                    shutil.rmtree(leftover, ignore_errors=True)
    finally:
        client.close()
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _close_all() -> None:
    with _live_lock:
        clusters = list(_live)
    for cluster in clusters:
        with contextlib.suppress(Exception):
            cluster.close()
    with contextlib.suppress(Exception):
        sweep_leftovers(only_mine=True)


def _install_hooks() -> None:
    """atexit always; SIGTERM becomes KeyboardInterrupt, which pytest treats as an interrupted session:
    it stops and still runs the fixture teardowns (a SystemExit would only fail the current test)."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):

        def on_term(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, on_term)
    with contextlib.suppress(Exception):
        sweep_leftovers()


# -- the cluster ----------------------------------------------------------------------------------------


class ContainerCluster:
    """n raftd containers n0..n{n-1} on their own networks, reachable from the host on 127.0.0.1 only.

    Use as a context manager or call up()/close(). Node operations take the node id (0..n-1).
    """

    def __init__(
        self,
        n: int,
        image: str = IMAGE,
        *,
        election_timeout_ms: tuple[int, int] = DEFAULT_ELECTION_TIMEOUT_MS,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        env: dict[str, str] | None = None,
    ) -> None:
        """env: RAFTD_* settings for every node (raftd's flags as variables)."""
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        self.n = n
        self.image = image
        self.name = f"raftd-it-{uuid.uuid4().hex[:10]}"
        self.election_timeout_ms = election_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.env = dict(env or {})
        self.labels = {LABEL: self.name, LABEL_PID: str(os.getpid())}
        self.host_ports = free_ports(n)
        self.nodes: list[DockerContainer] = []
        self.ips: list[str] = []
        self.subnet = ""
        self._docker = _docker()
        self._access: Any = None  # docker-py Network: published ports only
        self._internal: Any = None  # docker-py Network: peer traffic
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.map_file = self._tmp / "cluster.yaml"
        self.down: set[int] = set()  # killed or stopped
        self.paused: set[int] = set()
        self.disconnected: set[int] = set()
        self._clients: list[Client] = []
        self._cache: dict[tuple[tuple[int, ...], float, bool], Client] = {}
        self._routes: dict[str, str] = {}

    # -- addresses ----------------------------------------------------------------------------------
    def address(self, i: int) -> str:
        """Node i's address in the cluster map (what nodes call each other and name as leader)."""
        return f"n{i}:{PORT}"

    def endpoint(self, i: int) -> str:
        """Node i's published port on the host."""
        return f"127.0.0.1:{self.host_ports[i]}"

    @property
    def addresses(self) -> list[str]:
        return [self.address(i) for i in range(self.n)]

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in range(self.n)]

    @property
    def mapping(self) -> dict[str, str]:
        """Address -> published endpoint, one dict for the cluster's life (join() adds to it)."""
        self._routes.update((self.address(i), self.endpoint(i)) for i in range(self.n))
        return self._routes

    def node_of(self, address: str) -> int:
        return self.addresses.index(address)

    # -- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> ContainerCluster:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self, wait_s: float = 60.0) -> ContainerCluster:
        """Create the networks and containers, start them and wait for a leader every node knows."""
        _install_hooks()
        with _live_lock:
            _live.add(self)
        try:
            self._create_networks()
            self.map_file.write_text(self._cluster_map())
            os.chmod(self._tmp, 0o755)
            os.chmod(self.map_file, 0o644)  # the image runs as uid 10001
            for i in range(self.n):
                self.nodes.append(self._container(i))
            for i in range(self.n):
                self._create_and_start(i)
            self.wait_converged(timeout=wait_s)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove containers (with their volumes), networks and the map; safe to call twice."""
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()
        self._cache.clear()
        for node in self.nodes:
            wrapped = getattr(node, "_container", None)
            if wrapped is not None:
                with contextlib.suppress(docker.errors.APIError):
                    wrapped.remove(force=True, v=True)
        # Anything else with our name (a container created but not recorded when up() was interrupted).
        with contextlib.suppress(docker.errors.APIError):
            for c in self._docker.containers.list(all=True, filters={"label": f"{LABEL}={self.name}"}):
                c.remove(force=True, v=True)
        for net in (self._internal, self._access):
            if net is not None:
                with contextlib.suppress(docker.errors.APIError):
                    net.remove()
        self._internal = self._access = None
        for path in (self.map_file, self._tmp):
            with contextlib.suppress(OSError):
                path.unlink() if path.is_file() else path.rmdir()
        with _live_lock:
            _live.discard(self)
        with contextlib.suppress(Exception):
            self._docker.close()

    def _create_networks(self) -> None:
        self._access = self._docker.networks.create(
            f"{self.name}-access", driver="bridge", labels=self.labels, check_duplicate=True
        )
        # A user-chosen subnet lets a reconnected node get its old address back, so peers' cached
        # connections stay valid; pick one at random and try again if another network holds it.
        last_error: Exception | None = None
        for _ in range(20):
            subnet = f"10.{random.randint(128, 254)}.{random.randint(0, 255)}.0/24"
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
            try:
                self._internal = self._docker.networks.create(
                    f"{self.name}-raft",
                    driver="bridge",
                    internal=True,
                    ipam=ipam,
                    labels=self.labels,
                    check_duplicate=True,
                )
            except docker.errors.APIError as e:
                last_error = e
                continue
            self.subnet = subnet
            base = subnet.rsplit(".", 1)[0]
            self.ips = [f"{base}.{10 + i}" for i in range(self.n)]
            return
        raise RuntimeError(f"no free subnet for the cluster network: {last_error}")

    def _cluster_map(self) -> str:
        lo, hi = self.election_timeout_ms
        lines = [
            f"name: {self.name}",
            f"election_timeout_ms: [{lo}, {hi}]",
            f"heartbeat_interval_ms: {self.heartbeat_interval_ms}",
            "nodes:",
        ]
        lines += [f"  - {{id: {i}, host: n{i}, port: {PORT}}}" for i in range(self.n)]
        return "\n".join(lines) + "\n"

    def _container(
        self, i: int, join: list[str] | None = None, auto_promote: bool = False
    ) -> DockerContainer:
        c = DockerContainer(self.image)
        c.with_name(f"{self.name}-n{i}")
        c.with_env("RAFTD_NODE_ID", str(i))
        c.with_env("RAFTD_LISTEN", f"0.0.0.0:{PORT}")
        c.with_env("RAFTCTL_ENDPOINTS", ",".join(self.addresses))
        for name, value in self.env.items():
            c.with_env(name, value)
        if join is None:
            c.with_env("RAFTD_CONFIG", MAP_PATH)
            c.with_volume_mapping(str(self.map_file), MAP_PATH, "ro")
        else:  # told the cluster by the members it names: no map
            c.with_env("RAFTD_JOIN", ",".join(join))
            if auto_promote:
                c.with_env("RAFTD_AUTO_PROMOTE", "1")
        # Published on 127.0.0.1 only; docker-py takes (host ip, host port).
        c.ports[f"{PORT}/tcp"] = ("127.0.0.1", self.host_ports[i])  # type: ignore[assignment]
        # The peers' names come from the internal network's aliases only. A hostname or extra_hosts of
        # n0..nN-1 made them resolve to addresses on the access network too, once Docker rewrote
        # /etc/hosts at a disconnect: a cut-off node then reached its peers over the access network
        # (the partition leaked), from an address that is not the one their names resolve to.
        c.with_kwargs(
            labels=self.labels,
            network=self._access.name,
            stop_signal="SIGTERM",
        )
        return c

    def _create_and_start(self, i: int) -> None:
        """testcontainers' start() creates and starts at once; the node must be on the internal network
        before its first election, so create here through the same client, connect, then start."""
        c = self.nodes[i]
        client = c.get_docker_client()
        c._container = client.create(  # the wrapped container that start() would have made
            c.image,
            environment=c.env,
            ports=c.ports,
            name=c._name,
            volumes={host: {"bind": m["bind"], "mode": m["mode"]} for host, m in c.volumes.items()},
            **c._kwargs,
        )
        self._internal.connect(c._container, aliases=[f"n{i}"], ipv4_address=self.ips[i])
        c._container.start()

    def join(self, i: int, members: list[str], *, auto_promote: bool = False) -> None:
        """Start node i, added to the cluster already (member add of address(i)), in a container of its
        own that starts with --join members. The cluster gives ids in order, so i is the next index."""
        if i != self.n:
            raise ValueError(f"node {i} cannot join a harness of {self.n} nodes: ids are given in order")
        self.n += 1
        self.host_ports.append(free_ports(1)[0])
        self.ips.append(f"{self.subnet.rsplit('.', 1)[0]}.{10 + i}")
        self.nodes.append(self._container(i, members, auto_promote))
        self._routes[self.address(i)] = self.endpoint(i)
        self._create_and_start(i)

    def wait_exit(self, i: int, timeout: float) -> int | None:
        """Node i's exit status once its container has stopped by itself; None if it still runs."""
        deadline = time.monotonic() + timeout
        while self._state(i) != "exited":
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_S)
        return int(self.wrapped(i).attrs["State"]["ExitCode"])

    def wrapped(self, i: int) -> Any:
        """The docker-py container of node i."""
        return self.nodes[i].get_wrapped_container()

    # -- faults ---------------------------------------------------------------------------------------
    def kill(self, i: int) -> None:
        """SIGKILL node i's process (the container stays, with its volume)."""
        if i in self.paused:
            self.unpause(i)
        self.wrapped(i).kill()
        self.down.add(i)
        wait_until(lambda: self._state(i) == "exited", 15, f"n{i} to exit after kill")

    def stop(self, i: int, timeout: int = 10) -> None:
        """SIGTERM node i (a graceful stop: a leader hands over), SIGKILL after timeout seconds."""
        if i in self.paused:
            self.unpause(i)
        self.wrapped(i).stop(timeout=timeout)
        self.down.add(i)

    def start(self, i: int, wait_s: float = 30.0) -> None:
        """Start node i's existing container again (same volume, same addresses); wait until it serves."""
        self.wrapped(i).start()
        self.down.discard(i)
        self.wait_serving(i, timeout=wait_s)

    def pause(self, i: int) -> None:
        """Freeze node i (cgroup freezer): it neither runs nor answers, but its sockets stay open."""
        self.wrapped(i).pause()
        self.paused.add(i)

    def unpause(self, i: int) -> None:
        self.wrapped(i).unpause()
        self.paused.discard(i)

    def disconnect(self, i: int) -> None:
        """Cut node i off from every peer; the host can still reach it through its published port."""
        self._internal.disconnect(self.wrapped(i), force=True)
        self.disconnected.add(i)

    def connect(self, i: int) -> None:
        """Heal disconnect(i): back on the peer network with the same alias and address."""
        self._internal.connect(self.wrapped(i), aliases=[f"n{i}"], ipv4_address=self.ips[i])
        self.disconnected.discard(i)

    def heal_all(self) -> None:
        """Undo every fault: unpause, reconnect and start whatever is paused, cut off or down."""
        for i in sorted(self.paused):
            with contextlib.suppress(docker.errors.APIError):
                self.unpause(i)
        for i in sorted(self.disconnected):
            with contextlib.suppress(docker.errors.APIError):
                self.connect(i)
        for i in range(self.n):
            if self._state(i) != "running":
                self.wrapped(i).start()
            self.down.discard(i)

    def _state(self, i: int) -> str:
        w = self.wrapped(i)
        w.reload()
        return str(w.status)

    def describe(self) -> str:
        """Each container's state as the engine reports it (exit code, OOM), and the harness's faults:
        when a node vanished, this tells a crash from a kill from outside."""
        parts = []
        for i in range(self.n):
            try:
                w = self.wrapped(i)
                w.reload()
                st = w.attrs.get("State", {})
                parts.append(
                    f"n{i}: {st.get('Status')} exit={st.get('ExitCode')} oom={st.get('OOMKilled')} "
                    f"finished={st.get('FinishedAt')}"
                )
            except Exception as e:
                parts.append(f"n{i}: ? ({e})")
        faults = f"down={sorted(self.down)} paused={sorted(self.paused)} cut={sorted(self.disconnected)}"
        return "; ".join(parts) + f"; harness: {faults}"

    def reachable(self) -> list[int]:
        """Nodes that are up, unpaused and on the peer network (as far as this harness did things)."""
        return [i for i in range(self.n) if i not in self.down | self.paused | self.disconnected]

    # -- observing ------------------------------------------------------------------------------------
    def client(self, timeout: float = 5.0, nodes: Iterable[int] | None = None, pin: bool = False) -> Client:
        """A raftctl Client over the given nodes (default all), dialing their 127.0.0.1 ports.

        pin=True with one node talks to that node only (no leader following). Closed by close()."""
        ids = list(range(self.n)) if nodes is None else list(nodes)
        c = MappedClient([self.address(i) for i in ids], self.mapping, timeout, pin)
        self._clients.append(c)
        return c

    def _cached(self, ids: Iterable[int], timeout: float = 2.0, pin: bool = False) -> Client:
        """One long-lived client per (nodes, timeout, pin) for the harness's own polling."""
        key = (tuple(ids), timeout, pin)
        c = self._cache.get(key)
        if c is None:
            c = self._cache[key] = self.client(timeout, key[0], pin)
        return c

    def kv(self, i: int) -> kv_pb2_grpc.KVStub:
        """A raw KV stub on node i's port (no retries, no leader following)."""
        return kv_pb2_grpc.KVStub(self._raw_channel(i))

    def admin(self, i: int) -> kv_pb2_grpc.AdminStub:
        return kv_pb2_grpc.AdminStub(self._raw_channel(i))

    def _raw_channel(self, i: int) -> grpc.Channel:
        return self._cached([i], pin=True)._channel(self.address(i))

    def status(self, i: int) -> NodeStatus:
        """Node i's own view (reachable=False when it does not answer within 2 s)."""
        return self._cached([i], pin=True).status(self.address(i))

    def statuses(self, nodes: Iterable[int] | None = None) -> dict[int, NodeStatus]:
        """The views of the given nodes (default: reachable ones), asked in parallel."""
        ids = self.reachable() if nodes is None else list(nodes)
        rows = self._cached(ids).status_all()
        return {ids[k]: row for k, row in enumerate(rows)}

    def get_leader(self, i: int, timeout: float = 1.0) -> pb.GetLeaderResponse:
        """Admin.GetLeader as node i answers it, through its mapped port."""
        return self.admin(i).GetLeader(pb.GetLeaderRequest(), timeout=timeout)

    def leader(self, among: Iterable[int] | None = None, timeout: float = DEFAULT_WAIT_S) -> int:
        """The leader a majority of the cluster agrees on (same id, same term) through Admin.GetLeader,
        asking only the given nodes (default: the reachable ones) and only naming one of them."""
        ids = self.reachable() if among is None else list(among)
        quorum = self.n // 2 + 1
        seen: dict[int, object] = {}

        def agreed() -> int | None:
            votes: dict[tuple[int, int], int] = {}
            for i in ids:
                try:
                    r = self.get_leader(i)
                except grpc.RpcError as e:
                    seen[i] = e.code().name
                    continue
                seen[i] = (r.leader_id, r.term)
                if r.leader_id >= 0:
                    votes[(r.leader_id, r.term)] = votes.get((r.leader_id, r.term), 0) + 1
            for (lead, _term), count in votes.items():
                if count >= quorum and lead in ids:
                    return lead + 1  # 0 is a valid id: keep it truthy
            return None

        try:
            return wait_until(agreed, timeout, f"a leader agreed by {quorum} of {ids}") - 1
        except ClusterError as e:
            raise ClusterError(f"{e}; (leader, term) per node: {seen}; {self.describe()}") from None

    def wait_serving(self, i: int, timeout: float = DEFAULT_WAIT_S) -> None:
        """Node i answers Status through its published port."""
        wait_until(lambda: self.status(i).reachable, timeout, f"n{i} to answer")

    def wait_converged(
        self, nodes: Iterable[int] | None = None, timeout: float = DEFAULT_WAIT_S
    ) -> dict[int, NodeStatus]:
        """Every given node (default: reachable ones) follows one leader in one term and has applied
        everything committed when they first agreed (a cluster under load never stands still, so the
        target is fixed at that moment rather than chased)."""
        ids = self.reachable() if nodes is None else list(nodes)
        target: int | None = None

        def converged() -> dict[int, NodeStatus] | None:
            nonlocal target
            rows = self.statuses(ids)
            if not all(r.reachable for r in rows.values()):
                return None
            leaders = {r.leader_id for r in rows.values()}
            terms = {r.term for r in rows.values()}
            if len(leaders) != 1 or None in leaders or len(terms) != 1:
                return None
            lead = next(iter(leaders))
            if lead in rows and rows[lead].role != "leader":
                return None
            if target is None:
                target = max(r.commit_index or 0 for r in rows.values())
            if any((r.applied_index or 0) < target for r in rows.values()):
                return None
            return rows

        try:
            return wait_until(converged, timeout, f"nodes {ids} to agree on a leader and catch up")
        except ClusterError as e:
            raise ClusterError(f"{e}; {self.describe()}") from None

    def wait_caught_up(self, i: int, index: int, timeout: float = DEFAULT_WAIT_S) -> NodeStatus:
        """Node i has applied at least index."""
        return wait_until(
            lambda: (s := self.status(i)).reachable and (s.applied_index or 0) >= index and s,
            timeout,
            f"n{i} to apply index {index}",
        )

    def logs(self, i: int, tail: int = 200) -> str:
        try:
            return self.wrapped(i).logs(tail=tail).decode("utf-8", errors="replace")
        except docker.errors.APIError as e:
            return f"(no logs: {e})"

    def dump_logs(self, tail: int = 80) -> str:
        """Every node's recent log, for failure messages."""
        return "\n".join(f"----- n{i} (last {tail} lines) -----\n{self.logs(i, tail)}" for i in range(self.n))
