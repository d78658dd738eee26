"""Nemeses: a seeded random schedule of faults and heals, for process clusters and (elsewhere) containers.

The interface is two calls, so that a test drives any nemesis the same way: step(rng) injects or heals one
fault, heal_all() undoes everything. ScheduledNemesis holds the schedule (which node, which fault, when to
heal); a concrete nemesis only says how to inject and heal one kind of fault on one node, so a container
nemesis (kill, docker pause, network disconnect) mirrors ProcessNemesis by overriding four small methods.
"""

from __future__ import annotations

import abc
import contextlib
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from raftctl.client import (
    CHANNEL_OPTIONS,
    Client,
    ClientError,
    InvalidArgument,
    OutcomeUnknown,
    ServerError,
    Unavailable,
)
from raftd.launcher import HOST, free_ports
from raftd.pb import kv_pb2, kv_pb2_grpc


class Nemesis(abc.ABC):
    """Faults on demand."""

    @abc.abstractmethod
    def step(self, rng: random.Random) -> str:
        """Inject or heal one fault; returns a one-line description of what it did."""

    @abc.abstractmethod
    def heal_all(self) -> None:
        """Undo every fault still in force; afterwards every node runs and is reachable."""

    def run(
        self,
        rng: random.Random,
        stop: threading.Event,
        interval_s: tuple[float, float] = (0.5, 2.0),
        log: Callable[[str], None] = print,
    ) -> list[str]:
        """Step at random intervals until stop is set (e.g. in a thread beside the workload)."""
        done: list[str] = []
        start = time.monotonic()
        while not stop.wait(rng.uniform(*interval_s)):
            what = self.step(rng)
            line = f"nemesis +{time.monotonic() - start:6.2f}s: {what}"
            done.append(line)
            log(line)
        return done


@dataclass
class Fault:
    kind: str
    node: int
    until: float | None = None  # for faults that end by themselves (suspend): monotonic end time


class ScheduledNemesis(Nemesis):
    """At most max_faulty nodes faulty at once, one fault per node; the leader is a favourite target."""

    def __init__(self, n: int, kinds: Sequence[str], *, max_faulty: int | None = None) -> None:
        if not kinds:
            raise ValueError("no fault kinds")
        self.n = n
        self.kinds = list(kinds)
        self.max_faulty = max_faulty if max_faulty is not None else (n - 1) // 2
        self.active: dict[int, Fault] = {}
        self.injected = 0

    # -- what a concrete nemesis provides ------------------------------------------------------------
    @abc.abstractmethod
    def inject(self, kind: str, node: int, rng: random.Random) -> Fault | None:
        """Start a fault (rng picks its parameters); None when the node refused it (a suspend that failed)."""

    @abc.abstractmethod
    def heal(self, fault: Fault) -> None:
        """End a fault (for self-ending ones: wait for its end)."""

    def leader(self) -> int | None:
        """The current leader as some healthy node names it, if any; a hint for choosing targets."""
        return None

    # -- the schedule ---------------------------------------------------------------------------------
    def step(self, rng: random.Random) -> str:
        now = time.monotonic()
        for node, fault in list(self.active.items()):  # self-ending faults that have ended
            if fault.until is not None and fault.until <= now:
                del self.active[node]
        healthy = [i for i in range(self.n) if i not in self.active]
        if self.active and (len(self.active) >= self.max_faulty or not healthy or rng.random() < 0.4):
            fault = self.active.pop(rng.choice(sorted(self.active)))
            self.heal(fault)
            return f"heal {fault.kind} of node {fault.node}"
        if not healthy or self.max_faulty <= 0:
            return "nothing to do"
        kind = rng.choice(self.kinds)
        lead = self.leader() if rng.random() < 0.5 else None
        node = lead if lead in healthy else rng.choice(healthy)
        injected = self.inject(kind, node, rng)
        if injected is None:
            return f"{kind} of node {node} did not take"
        self.active[node] = injected
        self.injected += 1
        return f"{kind} node {node}" + (" (the leader)" if node == lead else "")

    def heal_all(self) -> None:
        for node in sorted(self.active):
            self.heal(self.active.pop(node))


class ProcessCluster(Protocol):
    """What ProcessNemesis needs of a process cluster (tests/daemon/cluster.py's Cluster has it)."""

    n: int
    procs: dict[int, subprocess.Popen[bytes]]

    def address(self, i: int) -> str: ...
    def out_path(self, i: int) -> Path: ...
    def err_path(self, i: int) -> Path: ...
    def join(self, i: int, endpoints: Sequence[str], *extra: str) -> object: ...
    def kill(self, i: int) -> int: ...
    def start(self, i: int, *extra: str) -> object: ...
    def stop(self, i: int) -> None: ...
    def cont(self, i: int) -> None: ...


class ProcessNemesis(ScheduledNemesis):
    """Faults on local raftd processes: SIGKILL then restart, SIGSTOP then SIGCONT, and Admin.Suspend."""

    KINDS = ("kill", "stop", "suspend")

    def __init__(
        self,
        cluster: ProcessCluster,
        *,
        kinds: Sequence[str] = KINDS,
        max_faulty: int | None = None,
        suspend_s: tuple[int, int] = (1, 3),
        rpc_timeout_s: float = 1.0,
    ) -> None:
        unknown = set(kinds) - set(self.KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        super().__init__(cluster.n, kinds, max_faulty=max_faulty)
        self.cluster = cluster
        self.suspend_s = suspend_s
        self.rpc_timeout_s = rpc_timeout_s
        self._channels: dict[int, grpc.Channel] = {}

    def _admin(self, i: int) -> kv_pb2_grpc.AdminStub:
        if i not in self._channels:
            self._channels[i] = grpc.insecure_channel(self.cluster.address(i), options=CHANNEL_OPTIONS)
        return kv_pb2_grpc.AdminStub(self._channels[i])

    def inject(self, kind: str, node: int, rng: random.Random) -> Fault | None:
        if kind == "kill":
            self.cluster.kill(node)
            return Fault(kind, node)
        if kind == "stop":
            self.cluster.stop(node)
            return Fault(kind, node)
        period = rng.randint(*self.suspend_s)
        try:
            self._admin(node).Suspend(kv_pb2.SuspendRequest(period=period), timeout=self.rpc_timeout_s)
        except grpc.RpcError:
            return None  # e.g. the node is still starting after a restart
        # A little slack past the period: the node's own timer, then its first heartbeat.
        return Fault(kind, node, until=time.monotonic() + period + 0.5)

    def heal(self, fault: Fault) -> None:
        if fault.kind == "kill":
            self.cluster.start(fault.node)
        elif fault.kind == "stop":
            self.cluster.cont(fault.node)
        elif fault.until is not None:
            time.sleep(max(0.0, fault.until - time.monotonic()))

    def leader(self) -> int | None:
        for i in range(self.n):
            if i in self.active:
                continue
            with contextlib.suppress(grpc.RpcError):
                r = self._admin(i).GetLeader(kv_pb2.GetLeaderRequest(), timeout=self.rpc_timeout_s)
                if r.leader_id >= 0:
                    return r.leader_id
        return None

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()


class MembershipNemesis(Nemesis):
    """Membership changes beside the workload, through the Admin API as an operator makes them: add a node
    (a learner that joins with an empty directory, then is promoted, by the operator or by itself), remove
    one (the leader half the time), and replace one (remove it, then add an empty node under a new id, at
    its address where the deployment allows: the documented way back for a wiped disk).

    The cluster keeps between min_voters and max_members members between steps. What a change did is read
    back from the cluster (MemberList), never assumed: a change whose outcome is unknown may have applied,
    and every step starts from what the leader says. A removed node must stop by itself with status 0; one
    that does not is a failure of the run (raised), not something to paper over by killing it.
    """

    KINDS = ("add", "remove", "replace")

    def __init__(
        self,
        members: dict[int, str],
        *,
        kinds: Sequence[str] = KINDS,
        min_voters: int = 3,
        max_members: int = 5,
        wait_s: float = 20.0,
    ) -> None:
        unknown = set(kinds) - set(self.KINDS)
        if unknown or not kinds:
            raise ValueError(f"bad membership changes {sorted(unknown) or 'none'}")
        self.kinds = list(kinds)
        self.members = dict(members)  # id -> address, as last listed
        self.learners: set[int] = set()
        self.recorded = False
        self.listed = ""  # the last listing, for messages
        self.min_voters = min_voters
        self.max_members = max_members
        self.wait_s = wait_s
        self.changes: Counter[str] = Counter()  # changes known to have applied, by kind
        self.removed: list[int] = []

    # -- what a concrete nemesis provides ------------------------------------------------------------
    @abc.abstractmethod
    def new_address(self, replacing: str | None = None) -> str:
        """An address for a node to add: replacing's (a removed member's) where the deployment can reuse
        it, else one no member uses."""

    @abc.abstractmethod
    def launch(self, node_id: int, endpoints: list[str], auto_promote: bool) -> None:
        """Start node_id on an empty data directory with --join endpoints."""

    @abc.abstractmethod
    def wait_exit(self, node_id: int, timeout: float) -> tuple[int | None, str]:
        """Wait for node_id's process to end: its exit status (None if it still runs) and its stderr."""

    # -- the cluster, through the Admin API ----------------------------------------------------------
    def client(self, endpoints: list[str], pin: bool = False) -> Client:
        """A raftctl client of the members at endpoints (their addresses as the cluster lists them)."""
        return Client(endpoints, timeout=self.wait_s, pin=pin)

    def _client(self) -> Client:
        return self.client(sorted(self.members.values()))

    def refresh(self) -> kv_pb2.MemberListResponse:
        """The membership as the leader applied it (a follower's may lag it); self.members follows."""
        deadline = time.monotonic() + self.wait_s
        while True:
            with contextlib.suppress(ClientError):
                with self._client() as client:
                    leader = client.get_leader()
                with self.client([leader.address], pin=True) as client:
                    listed = client.member_list()
                if listed.leader_id == leader.id:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"no leader listed the membership in {self.wait_s:g}s: {self.listed}")
            time.sleep(0.1)
        self.members = {m.id: m.address for m in listed.members}
        self.learners = {m.id for m in listed.members if m.learner}
        self.recorded = listed.recorded
        self.listed = (
            ", ".join(
                f"{m.id}@{m.address}{' learner' if m.learner else ''} match {m.match_index}"
                for m in listed.members
            )
            + f"; leader {listed.leader_id}"
        )
        return listed

    def _change(self, what: str, call: Callable[[Client], object], done: Callable[[], bool]) -> bool:
        """Make one change, retrying while it is refused for the moment (another change pending, a learner
        still behind, no leader) or its outcome is unknown; True once `done` holds of the listed
        membership, False if it was refused for good (InvalidArgument) and has not happened."""
        deadline = time.monotonic() + self.wait_s
        last: ClientError | None = None
        while True:
            try:
                with self._client() as client:
                    call(client)
            except InvalidArgument:
                self.refresh()
                return done()
            except (ServerError, OutcomeUnknown, Unavailable) as e:
                last = e
            self.refresh()
            if done():
                return True
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not done after {self.wait_s:g}s ({last}); {self.listed}")
            time.sleep(0.2)

    def _add(self, address: str, rng: random.Random) -> int:
        before = set(self.members)
        added: list[int] = []

        def add(client: Client) -> None:
            added.append(client.member_add(address).member.id)

        def done() -> bool:
            return any(self.members.get(i) == address for i in set(self.members) - before)

        if not self._change(f"add {address}", add, done):
            raise AssertionError(f"add {address} was refused: members {self.members}")
        node = next(i for i in set(self.members) - before if self.members[i] == address)
        assert not added or added[-1] == node, f"the add answered id {added[-1]}, the cluster lists {node}"
        auto = rng.random() < 0.5
        self.launch(node, sorted(a for i, a in self.members.items() if i != node), auto)
        if auto:
            self._wait(f"node {node} to promote itself", lambda: node not in self.learners)
        else:
            self._promote(node)
        self.changes["add"] += 1
        return node

    def _promote(self, node: int) -> None:
        """Promote a learner: refused (for the moment) while it is behind, so retried until it is not."""

        def promoted() -> bool:
            return node not in self.learners

        if not self._change(f"promote {node}", lambda c: c.member_promote(node), promoted):
            raise AssertionError(f"promote {node} was refused: members {self.members}")

    def _remove(self, node: int) -> None:
        address = self.members[node]
        if not self._change(
            f"remove {node}", lambda c: c.member_remove(node), lambda: node not in self.members
        ):
            raise AssertionError(f"remove {node} was refused: members {self.members}")
        status, stderr = self.wait_exit(node, self.wait_s)
        if status != 0 or "removed from the cluster" not in stderr:
            raise AssertionError(
                f"node {node} ({address}) was removed but its process "
                + ("still runs" if status is None else f"exited {status}")
                + f":\n{stderr[-2000:]}"
            )
        self.removed.append(node)
        self.changes["remove"] += 1

    def _wait(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            with contextlib.suppress(ClientError):
                self.refresh()
                if check():
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {self.wait_s:g}s for {what}: {self.listed}")
            time.sleep(0.2)

    def wait_recorded(self) -> None:
        """Changes are refused until the cluster has recorded its membership (its first leader does)."""
        self._wait("the membership record", lambda: self.recorded)

    # -- the schedule ---------------------------------------------------------------------------------
    def step(self, rng: random.Random) -> str:
        listed = self.refresh()
        voters = sorted(set(self.members) - self.learners)
        for node in sorted(self.learners):  # a learner left by an earlier step: promote it first
            self._promote(node)
        possible = [
            kind
            for kind in self.kinds
            if (kind == "add" and len(self.members) < self.max_members)
            or (kind == "remove" and len(voters) > self.min_voters)
            or (kind == "replace" and len(voters) >= self.min_voters)
        ]
        if not possible:
            return "nothing to do"
        kind = rng.choice(possible)
        if kind == "add":
            node = self._add(self.new_address(), rng)
            return f"add node {node} at {self.members[node]}"
        lead = listed.leader_id if listed.leader_id in voters and rng.random() < 0.5 else None
        target = lead if lead is not None else rng.choice(voters)
        suffix = " (the leader)" if target == lead else ""
        if kind == "remove":
            self._remove(target)
            return f"remove node {target}{suffix}"
        address = self.new_address(replacing=self.members[target])
        self._remove(target)
        node = self._add(address, rng)
        self.changes["replace"] += 1
        return f"replace node {target}{suffix} by node {node} at {address}"

    def heal_all(self) -> None:
        """Membership changes are not faults to undo: this waits until every member is a voter."""
        self._wait("every member a voter", lambda: not self.learners)


class ProcessMembershipNemesis(MembershipNemesis):
    """MembershipNemesis on local processes: the cluster's own nodes, and nodes it starts with --join
    (LocalCluster.join: the cluster stops them too)."""

    def __init__(self, cluster: ProcessCluster, **kw: Any) -> None:
        super().__init__({i: cluster.address(i) for i in range(cluster.n)}, **kw)
        self.cluster = cluster
        self.joined: list[int] = []

    def new_address(self, replacing: str | None = None) -> str:
        return replacing or f"{HOST}:{free_ports(1)[0]}"

    def launch(self, node_id: int, endpoints: list[str], auto_promote: bool) -> None:
        self.cluster.join(node_id, endpoints, *(["--auto-promote"] if auto_promote else []))
        self.joined.append(node_id)

    def wait_exit(self, node_id: int, timeout: float) -> tuple[int | None, str]:
        proc = self.cluster.procs[node_id]
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        err = self.cluster.err_path(node_id)
        return proc.poll(), err.read_text(errors="replace") if err.exists() else ""

    def dump_logs(self) -> str:
        """The joined nodes' output (the cluster's own nodes are the cluster's to show)."""
        parts = []
        for i in self.joined:
            for path in (self.cluster.out_path(i), self.cluster.err_path(i)):
                if path.exists():
                    parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)
