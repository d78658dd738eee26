"""Jepsen on raftd containers: concurrent clients on a few keys while a seeded nemesis kills containers,
freezes them (docker pause) and cuts them off the peer network; then heal, read every key, and check the
whole history for linearizability. A ledger writer beside the workload writes fresh keys, so a lost
acknowledged write is also caught directly, not only through the checker.

RAFTD_TEST_JEPSEN_SECONDS sets the workload's length (default 60; e.g. 600 for a long run);
RAFTD_TEST_JEPSEN_SEED replays a nemesis schedule (the seed is printed; container timing is not seeded, so a
replay is close, not identical). On a violation the history is dumped as JSON lines under the test's
tmp_path and the offending operations and every node's log are printed."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from integration_tests.harness import ContainerCluster, MappedClient
from raftctl.client import Client, ClientError, NotFound
from raftd.testing import History, Op, check
from raftd.testing import workload as workload_module
from raftd.testing.etcd_jepsen import EtcdWorkload
from raftd.testing.nemesis import Fault, MembershipNemesis, Nemesis, ScheduledNemesis
from raftd.testing.workload import run_workload

SECONDS = float(os.environ.get("RAFTD_TEST_JEPSEN_SECONDS", "60"))
# The membership run: each change starts a container (seconds), so fewer happen per second than faults.
MEMBERSHIP_SECONDS = float(os.environ.get("RAFTD_TEST_JEPSEN_SECONDS", "30"))
KEYS = ["k0", "k1", "k2"]
CLIENTS = 5
CAS_CLIENTS = 3  # Jepsen's etcd workloads beside the others: CAS registers and a watcher per node
FINAL_READ_PROCESS = 1_000_000  # process ids of the final reads, far from the workload's
CHECK_TIMEOUT_S = 180.0


class ContainerNemesis(ScheduledNemesis):
    """Faults on raftd containers: SIGKILL then restart with the volume, docker pause then unpause, and a
    partition that cuts one node off every peer (the host still reaches it, so its clients keep trying).
    At most max_faulty nodes at once; the leader is a favourite target (ScheduledNemesis)."""

    KINDS = ("kill", "pause", "partition")

    def __init__(self, cluster: ContainerCluster, *, max_faulty: int | None = None) -> None:
        super().__init__(cluster.n, self.KINDS, max_faulty=max_faulty)
        self.cluster = cluster

    def inject(self, kind: str, node: int, rng: random.Random) -> Fault | None:
        if kind == "kill":
            self.cluster.kill(node)
        elif kind == "pause":
            self.cluster.pause(node)
        else:
            self.cluster.disconnect(node)
        return Fault(kind, node)

    def heal(self, fault: Fault) -> None:
        if fault.kind == "kill":
            self.cluster.start(fault.node)
        elif fault.kind == "pause":
            self.cluster.unpause(fault.node)
        else:
            self.cluster.connect(fault.node)

    def leader(self) -> int | None:
        for i in range(self.n):
            if i in self.active:
                continue
            try:
                r = self.cluster.get_leader(i)
            except grpc.RpcError:
                continue
            if r.leader_id >= 0:
                return r.leader_id
        return None


class ContainerMembershipNemesis(MembershipNemesis):
    """MembershipNemesis on containers: a node added runs in a container of its own (harness join), and
    is named nID like the others, so a replacement is a new name, never the removed node's."""

    def __init__(self, cluster: ContainerCluster) -> None:
        super().__init__({i: cluster.address(i) for i in range(cluster.n)}, wait_s=60.0)
        self.cluster = cluster

    def client(self, endpoints: list[str], pin: bool = False) -> Client:
        return MappedClient(endpoints, self.cluster.mapping, self.wait_s, pin)

    def new_address(self, replacing: str | None = None) -> str:
        return self.cluster.address(self.cluster.n)  # ids are given in order: the next one's name

    def launch(self, node_id: int, endpoints: list[str], auto_promote: bool) -> None:
        self.cluster.join(node_id, endpoints, auto_promote=auto_promote)

    def wait_exit(self, node_id: int, timeout: float) -> tuple[int | None, str]:
        return self.cluster.wait_exit(node_id, timeout), self.cluster.logs(node_id)


class Ledger(threading.Thread):
    """Writes fresh keys one after another with a short timeout; remembers the acknowledged ones."""

    def __init__(self, client: Client) -> None:
        super().__init__(name="ledger", daemon=True)
        self.client = client
        self.acked: dict[str, str] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        j = 0
        while not self.halt.is_set():
            key, value = f"ledger/{j}", f"v{j}"
            try:
                self.client.put(key, value)
            except ClientError:
                pass  # unknown outcome: only acknowledged writes are checked
            else:
                self.acked[key] = value
            j += 1
            time.sleep(0.02)


def beside(
    nemesis: Nemesis, rng: random.Random, stop: threading.Event, interval_s: tuple[float, float]
) -> tuple[threading.Thread, list[str], list[BaseException]]:
    """A thread (to start) that runs the nemesis until stop; what it did, and what it raised."""
    schedule: list[str] = []
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            schedule.extend(nemesis.run(rng, stop, interval_s=interval_s))
        except BaseException as e:
            errors.append(e)

    return threading.Thread(target=loop, name="nemesis", daemon=True), schedule, errors


def final_reads(client: Client, history: History) -> None:
    """After the heal: one linearizable read per key, recorded, so a lost acknowledged write shows up."""
    for j, key in enumerate(KEYS):
        op = history.invoke(FINAL_READ_PROCESS + j, "get", key)
        try:
            value: str | None = client.get(key)
        except NotFound:
            value = None
        except ClientError as e:
            history.fail(op)
            raise AssertionError(f"the healed cluster cannot serve a read of {key}: {e}") from None
        history.ok(op, value)


def summary(ops: list[Op]) -> str:
    counts = Counter(f"{op.kind}:{op.status}" for op in ops)
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


@pytest.fixture
def cluster(image: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ContainerCluster]:
    """Three containers. The workload's clients dial their published 127.0.0.1 ports but follow leader
    hints by the nodes' own addresses, as production clients would."""
    # The etcd watchers' record is a watch from the run's first revision: no history is compacted under it.
    with ContainerCluster(3, image, env={"RAFTD_AUTO_COMPACTION_RETENTION": "0"}) as c:
        monkeypatch.setattr(
            workload_module,
            "Client",
            lambda endpoints, timeout, pin=False: MappedClient(endpoints, c.mapping, timeout, pin),
        )
        yield c


def test_jepsen_container_cluster(cluster: ContainerCluster, tmp_path: Path) -> None:
    seed = int(os.environ.get("RAFTD_TEST_JEPSEN_SEED", random.randrange(2**32)))
    replay = f"RAFTD_TEST_JEPSEN_SEED={seed} replays the schedule"
    print(f"\njepsen (containers): seed {seed} ({replay}), {SECONDS:g}s")
    c = cluster
    rng = random.Random(seed)
    # Up to two of three nodes faulty: with a majority down nothing commits, and the entries left
    # uncommitted in a dead or cut-off leader's log are the interesting ones when it comes back.
    nemesis = ContainerNemesis(c, max_faulty=2)
    history = History()
    stop = threading.Event()
    thread, schedule, nemesis_errors = beside(nemesis, random.Random(rng.getrandbits(64)), stop, (1.0, 3.0))
    workload_seed = rng.getrandbits(64)
    ledger = Ledger(c.client(timeout=1.0))
    etcd = EtcdWorkload(c.endpoints, clients=CAS_CLIENTS, duration_s=SECONDS, seed=rng.getrandbits(64))
    thread.start()
    ledger.start()
    try:
        run_workload(c.addresses, history, clients=CLIENTS, keys=KEYS, duration_s=SECONDS, seed=workload_seed)
    finally:
        stop.set()
        ledger.halt.set()
        thread.join(120)
        ledger.join(30)
        nemesis.heal_all()
        c.heal_all()
    context = f"seed {seed}\nnemesis schedule:\n" + "\n".join(schedule)
    assert not nemesis_errors, f"the nemesis failed: {nemesis_errors[0]!r}\n{context}"
    try:
        c.wait_converged(range(c.n), timeout=60)
    except Exception:
        print(c.dump_logs(tail=300))
        raise
    final_reads(c.client(timeout=20.0), history)
    etcd.finish()

    ops = history.ops()
    path = tmp_path / "history.jsonl"
    history.dump(path)
    start = time.monotonic()
    result = check(ops, timeout_s=CHECK_TIMEOUT_S)
    print(f"checked {len(ops)} ops in {time.monotonic() - start:.2f}s: {summary(ops)}; history: {path}")
    if not result.ok:
        print(c.dump_logs(tail=300))
    assert result.ok, (
        f"NOT LINEARIZABLE on key {result.key} (history in {path}):\n{result.explanation}\n{context}"
    )

    # Every write the ledger saw acknowledged is there, on every node.
    client = c.client(timeout=20.0)
    lost = {}
    for key, value in ledger.acked.items():
        try:
            got: str | None = client.get(key)
        except NotFound:
            got = None
        if got != value:
            lost[key] = (value, got)
    assert not lost, f"acknowledged writes lost (key: (acked, read)): {lost}\n{context}"

    # The run must have tested something: faults, and a fair number of acknowledged operations.
    assert nemesis.injected >= min(3, int(SECONDS / 6)), context
    done = Counter(op.kind for op in ops if op.status == "ok")
    assert done["put"] >= 20 and done["get"] >= 20, summary(ops)
    assert len(ledger.acked) >= 10, f"the ledger got only {len(ledger.acked)} writes acknowledged"
    assert all(op.status != "pending" for op in ops)

    # Jepsen's etcd workloads: CAS registers linearizable per key, every watcher saw the record.
    registers, watches = etcd.check()
    print(etcd.summary())
    if not (registers.ok and watches.ok):
        print(c.dump_logs(tail=300))
    assert registers.ok, (
        f"CAS REGISTERS NOT LINEARIZABLE ({registers.key}):\n{registers.explanation}\n{context}"
    )
    assert watches.ok, f"WATCHES WRONG:\n{watches.explanation}\n{etcd.summary()}\n{context}"
    swapped = [op for op in etcd.registers.ops if op.kind == "cas" and op.output is True]
    assert len(swapped) >= 5 and len(etcd.record) >= 20, etcd.summary()


def test_jepsen_container_cluster_under_membership_changes(cluster: ContainerCluster, tmp_path: Path) -> None:
    """The workload while containers are added (then promoted), removed (the leader half the time) and
    replaced (removed, then a new container added under a new id), between three and five members."""
    seed = int(os.environ.get("RAFTD_TEST_JEPSEN_SEED", random.randrange(2**32)))
    print(f"\njepsen membership (containers): seed {seed}, {MEMBERSHIP_SECONDS:g}s")
    c = cluster
    rng = random.Random(seed)
    nemesis = ContainerMembershipNemesis(c)
    nemesis.wait_recorded()
    history = History()
    stop = threading.Event()
    thread, schedule, nemesis_errors = beside(nemesis, random.Random(rng.getrandbits(64)), stop, (0.5, 2.0))
    workload_seed = rng.getrandbits(64)
    thread.start()
    try:
        run_workload(
            c.addresses,
            history,
            clients=CLIENTS,
            keys=KEYS,
            duration_s=MEMBERSHIP_SECONDS,
            seed=workload_seed,
        )
    finally:
        stop.set()
        thread.join(180)
    context = f"seed {seed}\nnemesis schedule:\n" + "\n".join(schedule)
    if nemesis_errors:
        print(c.dump_logs(tail=100))
    assert not nemesis_errors, f"the nemesis failed: {nemesis_errors[0]!r}\n{context}"
    nemesis.heal_all()
    members = sorted(nemesis.members)
    with MappedClient([c.address(i) for i in members], c.mapping, 20.0, False) as client:
        final_reads(client, history)

    ops = history.ops()
    path = tmp_path / "history.jsonl"
    history.dump(path)
    result = check(ops, timeout_s=CHECK_TIMEOUT_S)
    print(f"checked {len(ops)} ops: {summary(ops)}; history: {path}\n{context}")
    if not result.ok:
        print(c.dump_logs(tail=300))
    assert result.ok, (
        f"NOT LINEARIZABLE on key {result.key} (history in {path}):\n{result.explanation}\n{context}"
    )
    assert sum(nemesis.changes.values()) >= min(3, int(MEMBERSHIP_SECONDS / 8)), context
    assert nemesis.removed, f"no member was removed: {context}"
    done = Counter(op.kind for op in ops if op.status == "ok")
    assert done["put"] >= 20 and done["get"] >= 20, summary(ops)
    assert all(op.status != "pending" for op in ops)
