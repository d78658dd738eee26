"""Jepsen on real raftd processes: concurrent clients, a seeded nemesis of SIGKILL / SIGSTOP / suspend, and
the linearizability checker over the recorded history.

The clients are of three kinds (raftd/testing/workload.py): raftctl's leader-following Client, the original
project's RaftService (SetVal / GetVal) and raftd.v1 unary KV calls without a session; the last two make
one attempt per op at a random node, so a server's "not applied" reaches the history as a definite failure,
and no read may ever return the value of such a write.

RAFTD_TEST_JEPSEN_SECONDS sets the workload's length (default 20; e.g. 300 for a long run) and
RAFTD_TEST_JEPSEN_SEED replays a schedule (the seed is printed; the nemesis schedule is seeded, the timing
of real processes is not, so a replay is close, not identical). On a violation the history is dumped as JSON
lines under the test's tmp_path and the offending operations are printed."""

from __future__ import annotations

import os
import random
import threading
import time
import traceback
from collections import Counter
from dataclasses import replace
from pathlib import Path

import grpc

from raftctl.client import Client, NotFound
from raftd.pb import etcd_rpc_pb2, etcd_rpc_pb2_grpc
from raftd.testing import History, Op, check, check_failed_writes_unread
from raftd.testing.etcd_jepsen import EtcdWorkload
from raftd.testing.nemesis import MembershipNemesis, Nemesis, ProcessMembershipNemesis, ProcessNemesis
from raftd.testing.workload import ETCD_NAMESPACE, client_plan, run_workload

from .daemon.cluster import Cluster, cluster_of

SECONDS = float(os.environ.get("RAFTD_TEST_JEPSEN_SECONDS", "20"))
KEYS = ["k0", "k1", "k2"]
CLIENTS = 5  # raftctl Client threads: even ones follow the leader, odd ones are pinned to a node
RAFT_SERVICE_CLIENTS = 1
UNARY_CLIENTS = 1
ETCD_CLIENTS = 1  # on keys of their own (ETCD_NAMESPACE), in the keyspace raftd.v1's clients share
CAS_CLIENTS = 3  # Jepsen's etcd workloads beside them (raftd/testing/etcd_jepsen.py), and a watcher per node
# The watchers' record is a watch from the run's first revision, so no history may be compacted under it.
NO_COMPACTION = {"RAFTD_AUTO_COMPACTION_RETENTION": "0"}
PLAN = client_plan(CLIENTS, RAFT_SERVICE_CLIENTS, UNARY_CLIENTS, ETCD_CLIENTS)
FINAL_READ_PROCESS = 1_000_000  # process ids of the final reads, far from the workload's
# A linearizable history checks in well under a second per minute of run; refuting one explores every
# configuration before the violation, seconds per minute of run.
CHECK_TIMEOUT_S = max(120.0, 2 * SECONDS)


def final_reads(c: Cluster, history: History, endpoints: list[str]) -> None:
    """After the heal: one linearizable read per key, recorded, so a lost acknowledged write shows up."""
    with Client(endpoints, timeout=20.0) as client:
        for j, key in enumerate(KEYS):
            op = history.invoke(FINAL_READ_PROCESS + j, "get", key)
            try:
                value: str | None = client.get(key)
            except NotFound:
                value = None
            except Exception:
                history.fail(op)
                raise AssertionError(
                    f"the healed cluster cannot serve a read of {key}\n{c.dump_logs()}"
                ) from None
            history.ok(op, value)
    for j, key in enumerate(KEYS):
        op = history.invoke(FINAL_READ_PROCESS + len(KEYS) + j, "get", ETCD_NAMESPACE + key)
        try:
            got = _etcd_read(c, endpoints, ETCD_NAMESPACE + key)
        except AssertionError:
            history.fail(op)
            raise
        history.ok(op, got)


def _etcd_read(c: Cluster, endpoints: list[str], key: str) -> str | None:
    """A linearizable etcd Range through any node that answers, retried while a leader settles."""
    deadline = time.monotonic() + 20.0
    while True:
        for endpoint in endpoints:
            with grpc.insecure_channel(endpoint) as channel:
                try:
                    r = etcd_rpc_pb2_grpc.KVStub(channel).Range(
                        etcd_rpc_pb2.RangeRequest(key=key.encode()), timeout=2.0
                    )
                except grpc.RpcError:
                    continue
            return r.kvs[0].value.decode() if r.kvs else None
        if time.monotonic() > deadline:
            raise AssertionError(f"the healed cluster cannot serve an etcd read of {key}\n{c.dump_logs()}")
        time.sleep(0.2)


def record(c: Cluster, seconds: float, seed: int, nemesis: Nemesis | None) -> tuple[History, list[str]]:
    """The workload for `seconds` (with the nemesis beside it), then heal, a leader, and the final reads
    (from the members as they are then)."""
    history = History()
    rng = random.Random(seed)
    endpoints = [c.address(i) for i in range(c.n)]
    stop = threading.Event()
    schedule: list[str] = []
    nemesis_errors: list[BaseException] = []

    def nemesis_loop() -> None:
        assert nemesis is not None
        try:
            schedule.extend(nemesis.run(random.Random(rng.getrandbits(64)), stop))
        except BaseException as e:
            nemesis_errors.append(e)

    thread = threading.Thread(target=nemesis_loop, name="nemesis", daemon=True)
    workload_seed = rng.getrandbits(64)
    if nemesis is not None:
        thread.start()
    try:
        run_workload(
            endpoints,
            history,
            clients=CLIENTS,
            keys=KEYS,
            duration_s=seconds,
            seed=workload_seed,
            raft_service_clients=RAFT_SERVICE_CLIENTS,
            unary_clients=UNARY_CLIENTS,
            etcd_clients=ETCD_CLIENTS,
        )
    finally:
        stop.set()
        if nemesis is not None:
            thread.join()
            nemesis.heal_all()
    if nemesis_errors:
        trace = "".join(traceback.format_exception(nemesis_errors[0]))
        raise AssertionError(f"the nemesis failed: {trace}\n{c.dump_logs()}")
    if isinstance(nemesis, MembershipNemesis):
        final_reads(c, history, sorted(nemesis.members.values()))
    else:
        c.wait_leader(nodes=list(range(c.n)))
        final_reads(c, history, endpoints)
    return history, schedule


def client_kind(process: int) -> str:
    """The kind of client that ran a process ("final" for the final reads)."""
    return "final" if process >= FINAL_READ_PROCESS else PLAN[process % len(PLAN)]


def summary(ops: list[Op]) -> str:
    counts = Counter(f"{op.kind}:{op.status}" for op in ops)
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def summary_by_client(ops: list[Op]) -> str:
    counts = Counter(f"{client_kind(op.process)} {op.kind}:{op.status}" for op in ops)
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def assert_correct(ops: list[Op], history: History, path: Path, context: str) -> None:
    """No definite failure read back, then linearizability (which also catches the former, less plainly)."""
    history.dump(path)
    failed_read = check_failed_writes_unread(ops)
    assert failed_read.ok, (
        f"A FAILED WRITE WAS READ (history in {path}):\n{failed_read.explanation}\n{context}"
    )
    start = time.monotonic()
    result = check(ops, timeout_s=CHECK_TIMEOUT_S)
    print(f"checked {len(ops)} ops in {time.monotonic() - start:.2f}s: {summary(ops)}; history: {path}")
    print(f"by client: {summary_by_client(ops)}")
    assert result.ok, f"NOT LINEARIZABLE (history in {path}):\n{result.explanation}\n{context}"


def test_jepsen_process_cluster(tmp_path: Path) -> None:
    seed = int(os.environ.get("RAFTD_TEST_JEPSEN_SEED", random.randrange(2**32)))
    print(f"\njepsen: seed {seed} (RAFTD_TEST_JEPSEN_SEED={seed} replays the schedule), {SECONDS:g}s")
    with cluster_of(tmp_path / "cluster", 3, env=NO_COMPACTION) as c:
        c.wait_leader()
        etcd = EtcdWorkload(c.endpoints, clients=CAS_CLIENTS, duration_s=SECONDS, seed=seed)
        # Up to two of three nodes faulty: with a majority down nothing commits, and the entries left
        # uncommitted in a dead leader's log are the interesting ones when it comes back.
        nemesis = ProcessNemesis(c, max_faulty=2)
        try:
            history, schedule = record(c, SECONDS, seed, nemesis)
        finally:
            nemesis.close()
        etcd.finish()
        ops = history.ops()
        context = f"seed {seed}\nnemesis schedule:\n" + "\n".join(schedule) + "\n" + c.dump_logs()
        assert_correct(ops, history, tmp_path / "history.jsonl", context)
        registers, watches = etcd.check()
        print(etcd.summary())
        assert registers.ok, (
            f"CAS REGISTERS NOT LINEARIZABLE ({registers.key}):\n{registers.explanation}\n{context}"
        )
        assert watches.ok, f"WATCHES WRONG:\n{watches.explanation}\n{etcd.summary()}\n{context}"

    # The run must have tested something: faults, and a fair number of acknowledged writes and reads.
    assert nemesis.injected >= min(3, int(SECONDS / 4)), schedule
    done = Counter(op.kind for op in ops if op.status == "ok")
    assert done["put"] >= 20 and done["get"] >= 20, summary(ops)
    by_client = Counter((client_kind(op.process), op.kind) for op in ops if op.status == "ok")
    for kind in ("raft_service", "unary"):
        assert by_client[kind, "put"] >= 5 and by_client[kind, "get"] >= 5, summary_by_client(ops)
    assert all(op.status != "pending" for op in ops)
    swapped = [op for op in etcd.registers.ops if op.kind == "cas" and op.output is True]
    assert len(swapped) >= 5 and len(etcd.record) >= 20, etcd.summary()


def test_jepsen_process_cluster_under_membership_changes(tmp_path: Path) -> None:
    """The same workload while nodes are added (then promoted), removed (the leader half the time) and
    replaced (removed, then an empty node added at its address under a new id), between three and five
    members; every removed node must stop by itself."""
    seed = int(os.environ.get("RAFTD_TEST_JEPSEN_SEED", random.randrange(2**32)))
    print(f"\njepsen membership: seed {seed} (RAFTD_TEST_JEPSEN_SEED={seed} replays it), {SECONDS:g}s")
    with cluster_of(tmp_path / "cluster", 3) as c:
        nemesis = ProcessMembershipNemesis(c)  # the nodes it starts are the cluster's to stop
        nemesis.wait_recorded()
        history, schedule = record(c, SECONDS, seed, nemesis)
        ops = history.ops()
        context = f"seed {seed}\nnemesis schedule:\n" + "\n".join(schedule) + "\n" + c.dump_logs()
        assert_correct(ops, history, tmp_path / "history.jsonl", context + nemesis.dump_logs())

    # Changes of every kind applied, and the clients got work done through them.
    assert sum(nemesis.changes.values()) >= min(3, int(SECONDS / 5)), schedule
    if SECONDS >= 20:
        assert set(nemesis.changes) >= {"add", "remove"}, schedule
    done = Counter(op.kind for op in ops if op.status == "ok")
    assert done["put"] >= 20 and done["get"] >= 20, summary(ops)
    assert all(op.status != "pending" for op in ops)


def test_checker_flags_a_stale_read_injected_into_a_real_history(tmp_path: Path) -> None:
    """Teeth: a real recorded history passes; the same history with one stale or future read, or with a
    write that was read recorded as a definite failure, does not."""
    seed = random.randrange(2**32)
    print(f"\nteeth: seed {seed}")
    with cluster_of(tmp_path / "cluster", 3) as c:
        history, _ = record(c, 3.0, seed, None)
    ops = history.ops()
    assert_correct(ops, history, tmp_path / "history.jsonl", f"seed {seed}")

    # A stale read: after the final read of a key saw X, a read returning an older acknowledged value Y.
    t_end = max(op.ret or op.call for op in ops)
    stale = None
    for final in (op for op in ops if op.process >= FINAL_READ_PROCESS):
        older = [
            op.value
            for op in ops
            if op.kind == "put" and op.key == final.key and op.status == "ok" and op.value != final.output
        ]
        if older:
            stale = Op(
                FINAL_READ_PROCESS + 100, "get", final.key, None, t_end + 1, t_end + 2, "ok", older[-1]
            )
            break
    assert stale is not None, f"no key was overwritten in the run: {summary(ops)}"
    result = check([*ops, stale])
    assert not result.ok and result.key == stale.key
    assert repr(stale.output) in result.explanation, result.explanation

    # A read from the future: a completed read made to return a value whose write began after it returned.
    for i, r in enumerate(ops):
        later = [
            op.value
            for op in ops
            if op.kind == "put" and op.key == r.key and op.call > (r.ret or 0) and op.value != r.output
        ]
        if r.kind == "get" and r.status == "ok" and later:
            bad = list(ops)
            bad[i] = replace(r, output=later[0])
            result = check(bad)
            assert not result.ok and result.key == r.key, f"read {i} made to return {later[0]!r} passed"
            break
    else:
        raise AssertionError(f"no read with a later write to its key: {summary(ops)}")

    # A definite failure read back: a write whose value some read returned, recorded as failed instead.
    read = {(op.key, op.output) for op in ops if op.kind == "get" and op.status == "ok"}
    i = next(i for i, op in enumerate(ops) if op.kind == "put" and (op.key, op.value) in read)
    bad = list(ops)
    bad[i] = replace(ops[i], status="fail")
    result = check_failed_writes_unread(bad)
    assert not result.ok and repr(ops[i].value) in result.explanation, result.explanation
