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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from raftctl.client import CHANNEL_OPTIONS
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

    def address(self, i: int) -> str: ...
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
