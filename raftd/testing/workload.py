"""The Jepsen-style workload: concurrent clients doing puts, linearizable gets and deletes on a few keys.

Every op is recorded as invoke, then ok / fail / info, and the classification is what the checker's verdict
rests on, so each kind of client records only what its protocol can prove. Three kinds, one per thread:

- raftctl.client.Client, the leader-following client with retries and exactly-once writes. A put or delete
  is "info" on OutcomeUnknown (some attempt may have applied) and "fail" on any other error: the client
  promises that Unavailable, InvalidArgument and ServerError from a write mean it never applies, so the
  checks hold it to that. Even-numbered clients follow the leader (raftctl's default); odd-numbered ones
  are pinned to one node each, as Jepsen binds clients to nodes, so follower reads (ReadIndex through the
  leader) and write forwarding are exercised as much as the leader's own paths.
- The original project's RaftService (SetVal / GetVal; it has no delete), as its own clients use it.
- raftd.v1 KV unary Put / Get / Delete with no WriteSession, as a plain gRPC program uses it.

The last two make one attempt per op, with a timeout, at a node picked at random (followers forward
writes), and no retries, so the servers' own verdicts reach the history unsoftened: SetVal's
verdict=False and a unary write failing with trailing metadata raftd-outcome=not-applied are definite
failures ("fail"), and any other write error is "info". A read that fails is "fail" everywhere: a read has
no effect.

Written values are unique in the whole run and name the client kind that wrote them: "p" (raftctl
Client), "s" (RaftService) or "u" (unary KV), then the process id and a counter, e.g. "s5-12".

After an info op the thread goes on as a new process id (Jepsen's rule): the old op may still take effect
at any time, so its process never completes, and each process has one outstanding op at a time.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import grpc

from raftctl.client import CHANNEL_OPTIONS, Client, ClientError, NotFound, OutcomeUnknown
from raftd.pb import etcd_rpc_pb2, etcd_rpc_pb2_grpc, kv_pb2, kv_pb2_grpc, raft_pb2, raft_pb2_grpc

from .history import History, Op

# Op mix: writes dominate slightly so reads keep seeing fresh values; deletes make "absent" interesting.
# A client kind without deletes draws from the rest with the same relative weights.
MIX = (("put", 0.45), ("get", 0.45), ("delete", 0.10))
MAX_PAUSE_S = 0.005  # a little jitter between ops, so interleavings vary
# Trailing metadata of a failed unary write: "not-applied" means it never applied and never will. Spelled
# here, not imported from the server's code, so that the test holds the server to the contract as written.
OUTCOME_KEY = "raftd-outcome"
NOT_APPLIED = "not-applied"


@dataclass(frozen=True)
class Outcome:
    """How one op ended, as the history records it."""

    status: str  # "ok" | "fail" | "info"
    output: str | None = None  # as History.ok takes it


FAIL = Outcome("fail")
INFO = Outcome("info")


class Driver(Protocol):
    """One client thread's protocol: do() turns every error the cluster or network can cause into an
    Outcome, and raises only on a bug."""

    @property
    def tag(self) -> str:
        """The first letter of the values it writes."""

    @property
    def kinds(self) -> tuple[str, ...]:
        """The op kinds it can do."""

    @property
    def namespace(self) -> str:
        """What its keys start with in the history: the etcd API's keys are apart from raftd.v1's."""

    def do(self, op: Op) -> Outcome: ...

    def close(self) -> None: ...


def run_workload(
    endpoints: list[str],
    history: History,
    *,
    clients: int,
    keys: list[str],
    duration_s: float,
    seed: int,
    op_timeout_s: float = 1.0,
    raft_service_clients: int = 0,
    unary_clients: int = 0,
    etcd_clients: int = 0,
) -> None:
    """Run `clients` raftctl Client threads, plus `raft_service_clients` RaftService, `unary_clients`
    unary KV and `etcd_clients` etcd API threads, for duration_s; returns when all have stopped (re-raises
    their errors)."""
    rng = random.Random(seed)
    plan = client_plan(clients, raft_service_clients, unary_clients, etcd_clients)
    run = _Run(endpoints, history, keys, time.monotonic() + duration_s, op_timeout_s, len(plan))
    run_threads(
        (f"jepsen-{kind}-{i}", functools.partial(_client_loop, run, kind, i, rng.getrandbits(64)))
        for i, kind in enumerate(plan)
    )


def run_threads(jobs: Iterable[tuple[str, Callable[[], object]]]) -> None:
    """Each (name, job) on a daemon thread of its own, all at once; returns when all have ended, and
    re-raises the first error one of them raised."""
    errors: list[BaseException] = []

    def guarded(job: Callable[[], object]) -> None:
        try:
            job()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(job,), name=name, daemon=True) for name, job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def client_plan(
    clients: int, raft_service_clients: int, unary_clients: int, etcd_clients: int = 0
) -> list[str]:
    """The kind of each client thread, by index; process id p belongs to thread p % len(plan)."""
    return (
        ["raftctl"] * clients
        + ["raft_service"] * raft_service_clients
        + ["unary"] * unary_clients
        + ["etcd"] * etcd_clients
    )


@dataclass(frozen=True)
class _Run:
    """What every client thread of one run shares."""

    endpoints: list[str]
    history: History
    keys: list[str]
    stop_at: float  # time.monotonic() at which threads stop starting ops
    op_timeout_s: float
    total: int  # client threads in all: a thread's next process id after an info op is this much higher


def _driver(kind: str, index: int, endpoints: list[str], rng: random.Random, timeout: float) -> Driver:
    if kind == "raftctl":
        return RaftctlDriver(index, endpoints, rng, timeout)
    if kind == "raft_service":
        return RaftServiceDriver(endpoints, rng, timeout)
    if kind == "etcd":
        return EtcdDriver(endpoints, rng, timeout)
    return UnaryDriver(endpoints, rng, timeout)


def _client_loop(run: _Run, kind: str, index: int, seed: int) -> None:
    rng = random.Random(seed)
    history = run.history
    driver = _driver(kind, index, run.endpoints, rng, run.op_timeout_s)
    kinds, weights = zip(*((k, w) for k, w in MIX if k in driver.kinds), strict=True)
    process = index
    written = 0
    try:
        while time.monotonic() < run.stop_at:
            op_kind = rng.choices(kinds, weights)[0]
            key = driver.namespace + rng.choice(run.keys)
            value = None
            if op_kind == "put":
                written += 1
                value = f"{driver.tag}{process}-{written}"  # unique: process ids are never reused
            op = history.invoke(process, op_kind, key, value)
            try:
                outcome = driver.do(op)
            except BaseException:
                # Recorded even for an unexpected error, so the history stays well formed; then raised.
                if op_kind == "get":
                    history.fail(op)
                else:
                    history.info(op)
                raise
            if outcome.status == "ok":
                history.ok(op, outcome.output)
            elif outcome.status == "fail":
                history.fail(op)
            else:
                history.info(op)
                process += run.total  # the op may still apply: never complete this process again
            time.sleep(rng.random() * MAX_PAUSE_S)
    finally:
        driver.close()


def _existed(deleted: bool) -> Outcome:
    return Outcome("ok", "true" if deleted else "false")


class RaftctlDriver:
    """raftctl.client.Client: leader following (or pinned to one node), retries, exactly-once writes."""

    tag = "p"
    kinds = ("put", "get", "delete")
    namespace = ""

    def __init__(self, index: int, endpoints: list[str], rng: random.Random, timeout: float) -> None:
        pinned = index % 2 == 1
        if pinned:
            order = [endpoints[(index // 2) % len(endpoints)]]
        else:
            order = list(endpoints)
            rng.shuffle(order)  # clients start at different nodes
        self.client = Client(order, timeout=timeout, pin=pinned)

    def do(self, op: Op) -> Outcome:
        try:
            if op.kind == "put":
                assert op.value is not None
                self.client.put(op.key, op.value)
                return Outcome("ok")
            if op.kind == "delete":
                return _existed(self.client.delete(op.key))
            try:
                return Outcome("ok", self.client.get(op.key))
            except NotFound:
                return Outcome("ok", None)
        except OutcomeUnknown:
            return INFO
        except ClientError:
            return FAIL

    def close(self) -> None:
        self.client.close()


class _OneShot:
    """A channel to every node; each op goes to one picked at random, once, with a deadline."""

    def __init__(self, endpoints: list[str], rng: random.Random, timeout: float) -> None:
        self.channels = [grpc.insecure_channel(e, options=CHANNEL_OPTIONS) for e in endpoints]
        self.rng = rng
        self.timeout = timeout

    def pick(self) -> grpc.Channel:
        return self.rng.choice(self.channels)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class RaftServiceDriver(_OneShot):
    """The original project's RaftService: SetVal's verdict says whether the write applied."""

    tag = "s"
    kinds = ("put", "get")
    namespace = ""

    def do(self, op: Op) -> Outcome:
        stub = raft_pb2_grpc.RaftServiceStub(self.pick())
        if op.kind == "put":
            try:
                r = stub.SetVal(
                    raft_pb2.SetValRequest(key=op.key, value=op.value or ""), timeout=self.timeout
                )
            except grpc.RpcError:
                return INFO
            return Outcome("ok") if r.verdict else FAIL
        try:
            g = stub.GetVal(raft_pb2.GetValRequest(key=op.key), timeout=self.timeout)
        except grpc.RpcError:
            return FAIL
        # verdict=False without an error: the key is absent (the workload never sends an invalid key).
        return Outcome("ok", g.value if g.verdict else None)


class UnaryDriver(_OneShot):
    """raftd.v1 KV unary calls without a WriteSession: a failed write is definite only when the server
    says so in its trailing metadata."""

    tag = "u"
    kinds = ("put", "get", "delete")
    namespace = ""

    def do(self, op: Op) -> Outcome:
        stub = kv_pb2_grpc.KVStub(self.pick())
        key = op.key.encode()
        if op.kind == "get":
            try:
                g = stub.Get(kv_pb2.GetRequest(key=key), timeout=self.timeout)
            except grpc.RpcError:
                return FAIL
            return Outcome("ok", g.value.decode() if g.found else None)
        try:
            if op.kind == "put":
                assert op.value is not None
                stub.Put(kv_pb2.PutRequest(key=key, value=op.value.encode()), timeout=self.timeout)
                return Outcome("ok")
            d = stub.Delete(kv_pb2.DeleteRequest(key=key), timeout=self.timeout)
            return _existed(d.deleted)
        except grpc.RpcError as e:
            return FAIL if not_applied(e) else INFO


ETCD_NAMESPACE = "etcd/"


class EtcdDriver(_OneShot):
    """etcd's v3 KV calls (Put, a linearizable Range, DeleteRange), as etcd's clients make them, on keys
    of their own. A failed write is definite only when the server says so (raftd-outcome)."""

    tag = "e"
    kinds = ("put", "get", "delete")
    namespace = ETCD_NAMESPACE

    def do(self, op: Op) -> Outcome:
        stub = etcd_rpc_pb2_grpc.KVStub(self.pick())
        key = op.key.encode()
        if op.kind == "get":
            try:
                r = stub.Range(etcd_rpc_pb2.RangeRequest(key=key), timeout=self.timeout)
            except grpc.RpcError:
                return FAIL
            return Outcome("ok", r.kvs[0].value.decode() if r.kvs else None)
        try:
            if op.kind == "put":
                assert op.value is not None
                stub.Put(etcd_rpc_pb2.PutRequest(key=key, value=op.value.encode()), timeout=self.timeout)
                return Outcome("ok")
            d = stub.DeleteRange(etcd_rpc_pb2.DeleteRangeRequest(key=key), timeout=self.timeout)
            return _existed(d.deleted > 0)
        except grpc.RpcError as e:
            return FAIL if not_applied(e) else INFO


def not_applied(e: grpc.RpcError) -> bool:
    """Whether a failed unary write carries the server's word that it never applied (raftd-outcome)."""
    trailers: tuple[tuple[str, str | bytes], ...] = (
        tuple(e.trailing_metadata() or ()) if isinstance(e, grpc.Call) else ()
    )
    return any(k == OUTCOME_KEY and v == NOT_APPLIED for k, v in trailers)
