"""Jepsen's etcd workloads (its etcd 3.4.3 analysis) on raftd's etcd API: compare-and-swap registers and
watches.

Registers: clients read (a linearizable Range), write (Put) and compare-and-swap (a Txn: value == old,
then put new) small integers, as Jepsen's etcd test does. Values repeat on purpose: a write applied twice
or lost cannot hide behind a unique value. Each key takes at most OPS_PER_KEY ops and then the clients
move to fresh keys (Jepsen's independent keys), so every key's history is small enough to check whole.

Watches: one watcher per node on the registers' prefix, from the revision the run starts at. When its
stream breaks, or its node stops answering progress requests, it resumes at another node from the
revision after the last it saw. After the run one more watch from the start is the cluster's record of
every change: each watcher must have seen exactly that, in revision order, nothing missed and nothing
twice; and the record must agree with the registers' history (every acknowledged write and swap is in it,
and no more writes than were attempted).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from raftctl.client import CHANNEL_OPTIONS
from raftd.pb import etcd_rpc_pb2 as pb
from raftd.pb import etcd_rpc_pb2_grpc as rpc

from .linearizability import CheckResult, CheckTimeout
from .workload import not_applied, run_threads

PREFIX = "cas/"
OPS_PER_KEY = 120  # ops one key takes (across its KEYS_AT_ONCE siblings) before clients move on
KEYS_AT_ONCE = 2
VALUES = 5  # values are 0..4, as Jepsen's
KINDS = ("read", "write", "cas")
WEIGHTS = (0.4, 0.3, 0.3)
MAX_STATES = 2_000_000  # per key: a search past this is neither a proof nor a refutation
PROGRESS_EVERY_S = 1.0  # a watcher asks its node for progress this often ...
SILENT_S = 3.0  # ... and moves on when it has heard nothing for this long (a stopped node)


@dataclass
class RegOp:
    process: int
    kind: str  # "read" | "write" | "cas"
    key: str
    value: int | None  # write: the value; cas: the new value
    expected: int | None  # cas: the value compared with
    call: float
    ret: float | None = None  # None while pending, and for info ops
    status: str = "pending"  # "ok" | "fail" (certainly not applied) | "info" (unknown)
    output: int | bool | None = None  # read: the value (None: absent); cas: whether it swapped

    def describe(self, t0: float) -> str:
        if self.kind == "read":
            what = f"read -> {self.output!r}"
        elif self.kind == "write":
            what = f"write {self.value}"
        else:
            what = f"cas {self.expected}->{self.value}" + (
                f" swapped={self.output}" if self.status == "ok" else ""
            )
        ret = "inf" if self.ret is None else f"{self.ret - t0:.4f}"
        return f"p{self.process} {self.key} {what} [{self.status}] {self.call - t0:.4f}..{ret}"


class Registers:
    """The shared record of the register ops, and which keys are in use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: list[RegOp] = []
        self.started = 0

    def key(self, rng: random.Random) -> str:
        with self.lock:
            generation = self.started // OPS_PER_KEY
            self.started += 1
        return f"{PREFIX}{generation}-{rng.randrange(KEYS_AT_ONCE)}"

    def invoke(self, op: RegOp) -> RegOp:
        with self.lock:
            self.ops.append(op)
        return op


def run_registers(
    endpoints: list[str],
    registers: Registers,
    *,
    clients: int,
    duration_s: float,
    seed: int,
    timeout_s: float = 1.0,
) -> None:
    """`clients` threads of register ops for duration_s, each op one attempt at a node picked at random."""
    rng = random.Random(seed)
    stop_at = time.monotonic() + duration_s
    run_threads(
        (
            f"jepsen-cas-{i}",
            functools.partial(
                _client, endpoints, registers, i, clients, stop_at, rng.getrandbits(64), timeout_s
            ),
        )
        for i in range(clients)
    )


def _client(
    endpoints: list[str],
    registers: Registers,
    index: int,
    total: int,
    stop_at: float,
    seed: int,
    timeout_s: float,
) -> None:
    rng = random.Random(seed)
    channels = [grpc.insecure_channel(e, options=CHANNEL_OPTIONS) for e in endpoints]
    process = index
    try:
        while time.monotonic() < stop_at:
            kind = rng.choices(KINDS, WEIGHTS)[0]
            value = rng.randrange(VALUES) if kind != "read" else None
            expected = rng.randrange(VALUES) if kind == "cas" else None
            op = registers.invoke(RegOp(process, kind, registers.key(rng), value, expected, time.monotonic()))
            status, output = _do(rpc.KVStub(rng.choice(channels)), op, timeout_s)
            op.ret = time.monotonic() if status != "info" else None
            op.status, op.output = status, output
            if status == "info":
                process += total  # the op may still apply: this process never completes again
    finally:
        for channel in channels:
            channel.close()


def _do(stub: rpc.KVStub, op: RegOp, timeout_s: float) -> tuple[str, int | bool | None]:
    key = op.key.encode()
    if op.kind == "read":
        try:
            r = stub.Range(pb.RangeRequest(key=key), timeout=timeout_s)
        except grpc.RpcError:
            return "fail", None  # a read has no effect
        return "ok", int(r.kvs[0].value) if r.kvs else None
    try:
        if op.kind == "write":
            stub.Put(pb.PutRequest(key=key, value=str(op.value).encode()), timeout=timeout_s)
            return "ok", None
        compare = pb.Compare(
            key=key, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=str(op.expected).encode()
        )
        put = pb.RequestOp(request_put=pb.PutRequest(key=key, value=str(op.value).encode()))
        swapped = stub.Txn(pb.TxnRequest(compare=[compare], success=[put]), timeout=timeout_s).succeeded
        return "ok", swapped
    except grpc.RpcError as e:
        return ("fail" if not_applied(e) else "info"), None


# -- the registers' checker -------------------------------------------------------------------------------


def check_registers(ops: list[RegOp], max_states: int = MAX_STATES) -> CheckResult:
    """Whether each key's history is linearizable for a register with read, write and compare-and-swap
    (keys are independent); CheckTimeout when a key's search passes max_states."""
    by_key: dict[str, list[RegOp]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    t0 = min((op.call for op in ops), default=0.0)
    for key in sorted(by_key):
        if not _linearizable(by_key[key], max_states):
            lines = "\n".join(op.describe(t0) for op in sorted(by_key[key], key=lambda o: o.call))
            return CheckResult(False, key, f"no order of these explains what was seen:\n{lines}")
    return CheckResult(True)


def _linearizable(ops: list[RegOp], max_states: int) -> bool:
    """Wing & Gong's search, as Lowe refined it: depth first over which op takes effect next, never the
    same (ops taken, value) twice. Failed ops did not happen; an info op may happen any time after its
    call, or never (an info read is nothing); an ok op must happen between its call and its return."""
    live = sorted(
        (op for op in ops if op.status != "fail" and not (op.kind == "read" and op.status != "ok")),
        key=lambda op: op.call,
    )
    inf = float("inf")
    calls = [op.call for op in live]
    rets = [op.ret if op.status == "ok" and op.ret is not None else inf for op in live]
    must = sum(1 << i for i, op in enumerate(live) if op.status == "ok")
    seen: set[tuple[int, int | None]] = set()
    stack: list[tuple[int, int | None]] = [(0, None)]
    while stack:
        done, value = stack.pop()
        if (done & must) == must:
            return True
        if (done, value) in seen:
            continue
        seen.add((done, value))
        if len(seen) > max_states:
            raise CheckTimeout(f"more than {max_states} states for key {live[0].key}")
        # An op may go next only if no op still to go returned before it was called.
        first_ret = min((rets[i] for i in range(len(live)) if not done >> i & 1), default=inf)
        for i, op in enumerate(live):
            if done >> i & 1:
                continue
            if calls[i] > first_ret:
                break  # sorted by call: every later op too
            after = _step(op, value)
            if after is not _ILLEGAL:
                stack.append((done | 1 << i, after))  # type: ignore[arg-type]  # an int or None
    return False


_ILLEGAL = object()


def _step(op: RegOp, value: int | None) -> object:
    """The register's value after op, or _ILLEGAL when op could not have seen value."""
    if op.kind == "read":
        return value if op.output == value else _ILLEGAL
    if op.kind == "write":
        return op.value
    holds = value is not None and value == op.expected  # an absent key never equals a value
    if op.status == "ok" and op.output is False:
        return value if not holds else _ILLEGAL
    if not holds:
        return (
            _ILLEGAL  # a swap that happened needs the value it compared; an info one that did not is "never"
        )
    return op.value


# -- watches ------------------------------------------------------------------------------------------------

Event = tuple[int, str, str, int | None]  # revision, "PUT" | "DELETE", key, value


class Watcher:
    """One watch of PREFIX from revision `start`, kept alive across nodes: on a broken stream, or a node
    silent past SILENT_S, it resumes at the next node from the revision after the last it saw."""

    def __init__(self, endpoints: list[str], first: int, start: int) -> None:
        self.endpoints = endpoints
        self.at = first  # index of the endpoint in use
        self.next_revision = start
        # Every change up to here has been delivered: a node answers a progress request only once this
        # stream has every event up to the revision it names (etcd's rule).
        self.progress = start - 1
        self.events: list[Event] = []
        self.resumes = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"jepsen-watch-{first}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stop.is_set():
            endpoint = self.endpoints[self.at % len(self.endpoints)]
            with contextlib.suppress(grpc.RpcError):  # a broken stream: the next node takes over
                self._watch(endpoint)
            if self.stop.is_set():
                return
            self.at += 1
            self.resumes += 1
            time.sleep(0.1)

    def _watch(self, endpoint: str) -> None:
        requests: queue.Queue[pb.WatchRequest | None] = queue.Queue()
        create = pb.WatchCreateRequest(
            key=PREFIX.encode(), range_end=_prefix_end(PREFIX.encode()), start_revision=self.next_revision
        )
        requests.put(pb.WatchRequest(create_request=create))

        def outgoing() -> Iterator[pb.WatchRequest]:
            while (r := requests.get()) is not None:
                yield r

        with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
            call = rpc.WatchStub(channel).Watch(outgoing(), metadata=(("hasleader", "true"),))
            heard = [time.monotonic()]
            ended = threading.Event()

            def keep_asking() -> None:
                while not ended.wait(PROGRESS_EVERY_S):
                    if self.stop.is_set() or time.monotonic() - heard[0] > SILENT_S:
                        call.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
                        return
                    requests.put(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

            asker = threading.Thread(target=keep_asking, daemon=True)
            asker.start()
            try:
                for response in call:
                    heard[0] = time.monotonic()
                    if response.compact_revision:
                        self.errors.append(
                            f"watch from {self.next_revision} compacted at {response.compact_revision}"
                        )
                        self.stop.set()
                        return
                    for e in response.events:
                        self._seen(e)
                    if response.watch_id == -1 and not response.events:  # a progress answer
                        self.progress = max(self.progress, response.header.revision)
                    if response.canceled:
                        return  # the node ended it: resume elsewhere
            finally:
                ended.set()
                requests.put(None)
                call.cancel()  # type: ignore[no-untyped-call]

    def _seen(self, e: object) -> None:
        kv = e.kv  # type: ignore[attr-defined]
        deleted = e.type == 1  # type: ignore[attr-defined]  # mvccpb.Event.DELETE
        self.events.append(
            (
                kv.mod_revision,
                "DELETE" if deleted else "PUT",
                kv.key.decode(),
                None if deleted else int(kv.value),
            )
        )
        self.next_revision = kv.mod_revision + 1  # pages hold whole revisions: resume after this one


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def revision_now(endpoints: list[str], timeout_s: float = 20.0) -> int:
    """The cluster's revision, by a linearizable read through any node that answers."""
    deadline = time.monotonic() + timeout_s
    for endpoint in itertools.cycle(endpoints):
        with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
            try:
                r = rpc.KVStub(channel).Range(
                    pb.RangeRequest(key=PREFIX.encode(), count_only=True), timeout=2.0
                )
                return int(r.header.revision)
            except grpc.RpcError:
                pass
        if time.monotonic() > deadline:
            raise AssertionError("no node answers a read of the revision")
        time.sleep(0.2)
    raise AssertionError("unreachable")


def record_of_changes(endpoints: list[str], start: int, until: int, timeout_s: float = 30.0) -> list[Event]:
    """The cluster's own record of every change to PREFIX in [start, until]: a fresh watch from start."""
    w = Watcher(endpoints, 0, start)
    w.start()
    try:
        caught_up(w, until, timeout_s)
    finally:
        w.close()
    return [e for e in w.events if e[0] <= until]


def caught_up(w: Watcher, until: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (
        max(w.next_revision - 1, w.progress) < until and time.monotonic() < deadline and not w.stop.is_set()
    ):
        time.sleep(0.05)


def check_watches(
    watchers: list[Watcher], record: list[Event], registers: list[RegOp], until: int
) -> CheckResult:
    """Every watcher saw the record, in order, nothing missed or twice; the record agrees with the ops."""
    for i, w in enumerate(watchers):
        if w.errors:
            return CheckResult(False, None, f"watcher {i}: {w.errors[0]}")
        seen = [e for e in w.events if e[0] <= until]
        if seen != record:
            return CheckResult(False, None, _difference(i, seen, record))
    revisions = [e[0] for e in record]
    if revisions != sorted(revisions):
        return CheckResult(False, None, "the record is not in revision order")
    puts = Counter(e[2] for e in record if e[1] == "PUT")
    acked = Counter(
        op.key for op in registers if op.status == "ok" and (op.kind == "write" or op.output is True)
    )
    may_have = [op for op in registers if _may_have_written(op)]
    tried = Counter(op.key for op in may_have)
    for key in sorted(set(puts) | set(acked)):
        if not acked[key] <= puts[key] <= tried[key]:
            return CheckResult(
                False,
                key,
                f"{puts[key]} writes of {key} in the record, {acked[key]} acknowledged, "
                f"{tried[key]} attempted",
            )
    written = {(op.key, op.value) for op in may_have}
    for _, kind, key, value in record:
        if kind == "PUT" and (key, value) not in written:
            return CheckResult(False, key, f"the record has {key}={value}, which no op wrote")
    return CheckResult(True)


def _may_have_written(op: RegOp) -> bool:
    if op.kind == "write":
        return op.status != "fail"
    return op.kind == "cas" and (op.status == "info" or op.output is True)


def _difference(i: int, seen: list[Event], record: list[Event]) -> str:
    for n, (a, b) in enumerate(itertools.zip_longest(seen, record)):
        if a != b:
            return (
                f"watcher {i} differs from the record at event {n}: saw {a}, the record has {b} "
                f"({len(seen)} events seen, {len(record)} in the record)"
            )
    return f"watcher {i} differs from the record"


class EtcdWorkload:
    """Both workloads beside a run of the others: the register clients on a thread of their own and one
    watcher per node, from the revision after the one the cluster is at when it starts."""

    def __init__(self, endpoints: list[str], *, clients: int, duration_s: float, seed: int) -> None:
        self.endpoints = endpoints
        self.registers = Registers()
        self.start = revision_now(endpoints) + 1
        self.watchers = [Watcher(endpoints, i, self.start) for i in range(len(endpoints))]
        for w in self.watchers:
            w.start()
        self.errors: list[BaseException] = []

        def run() -> None:
            try:
                run_registers(endpoints, self.registers, clients=clients, duration_s=duration_s, seed=seed)
            except BaseException as e:
                self.errors.append(e)

        self.thread = threading.Thread(target=run, name="jepsen-cas", daemon=True)
        self.thread.start()
        self.until = 0
        self.record: list[Event] = []

    def finish(self, timeout_s: float = 30.0) -> None:
        """Once the cluster is healed: the clients' end, the watchers caught up, and the record read."""
        self.thread.join()
        if self.errors:
            raise self.errors[0]
        self.until = revision_now(self.endpoints)
        for w in self.watchers:
            caught_up(w, self.until, timeout_s)
        self.record = record_of_changes(self.endpoints, self.start, self.until, timeout_s)
        for w in self.watchers:
            w.close()

    def check(self) -> tuple[CheckResult, CheckResult]:
        return check_registers(self.registers.ops), check_watches(
            self.watchers, self.record, self.registers.ops, self.until
        )

    def summary(self) -> str:
        counts = Counter(
            f"{op.kind}:{op.status}" + (f":{op.output}" if op.kind == "cas" and op.status == "ok" else "")
            for op in self.registers.ops
        )
        keys = len({op.key for op in self.registers.ops})
        resumes = [w.resumes for w in self.watchers]
        return (
            f"registers on {keys} keys: "
            + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            + f"; record of {len(self.record)} changes (revisions {self.start}..{self.until});"
            + f" watcher resumes {resumes}"
        )
