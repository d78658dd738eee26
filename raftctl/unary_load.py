"""Closed-loop load of one unary RPC per operation: how clients that are not raftctl call raftd.

`raftctl bench` pipelines every request over one KV.Stream; a client written against the proto alone
calls KV/Put or RaftService/SetVal once per operation instead, and a unary call costs a node far more.
This driver measures that path: `concurrency` asyncio workers each issue one call and await its answer
(raftctl.bench.closed_loop, the loop `raftctl bench` uses), over ONE grpc.aio channel to ONE address shared
by every worker, straight on the generated stubs: no retries, no leader following, a deadline per call.
`make bench` (raftctl/benchmark.py) runs it against raftd's leader and a follower, and bench/floor.py
against a dict behind the same services, so that raftd and its floor are driven by the same code. Both
are programs that choose gRPC's polling engine before grpc loads (raftd/grpcenv.py); a library cannot.

Operations: "put" (KV/Put, no session), "get" (KV/Get, linearizable), "setval" (RaftService/SetVal; an
answer with verdict=false is an error) and "getval" (RaftService/GetVal). Reads first write every key once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from raftctl.bench import PREFILL_CONCURRENCY, BenchResult, check_load, closed_loop, fill, make_value
from raftctl.client import CHANNEL_OPTIONS
from raftd.pb import kv_pb2, kv_pb2_grpc, raft_pb2, raft_pb2_grpc

OPS = ("put", "get", "setval", "getval")
READS = frozenset({"get", "getval"})
CALL_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 10.0  # a server that is not listening by then ends the run rather than hanging it
# Retries off, so that every call is one attempt and a failure counts; CHANNEL_OPTIONS for the rest (a
# short reconnect backoff: a server started just now is reached as soon as it listens).
UNARY_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.enable_retries", 0)]


class Refused(Exception):
    """A call that was answered, but with SetVal's verdict=false: the write did not happen."""


@dataclass(frozen=True)
class UnaryConfig:
    op: str = "put"
    concurrency: int = 64
    duration: float = 5.0
    warmup: float = 1.0
    keys: int = 1000
    value_size: int = 16
    timeout: float = CALL_TIMEOUT_S  # per call

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, not {self.op!r}")
        check_load(self.concurrency, self.keys, self.value_size, self.duration, self.warmup)
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")


def describe(error: Exception) -> str:
    """An RPC error as its status and details (str() of one is a multi-line dump)."""
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def operation(
    channel: grpc.aio.Channel, op: str, value: str, timeout: float
) -> Callable[[str], Awaitable[object]]:
    """One call of op on key, on the channel's stubs; raises AioRpcError or Refused."""
    if op in ("put", "get"):
        kv = kv_pb2_grpc.KVStub(channel)
        if op == "get":
            return lambda key: kv.Get(kv_pb2.GetRequest(key=key.encode(), local=False), timeout=timeout)
        data = value.encode()
        return lambda key: kv.Put(kv_pb2.PutRequest(key=key.encode(), value=data), timeout=timeout)
    seed = raft_pb2_grpc.RaftServiceStub(channel)
    if op == "getval":
        return lambda key: seed.GetVal(raft_pb2.GetValRequest(key=key), timeout=timeout)

    async def setval(key: str) -> None:
        answer = await seed.SetVal(raft_pb2.SetValRequest(key=key, value=value), timeout=timeout)
        if not answer.verdict:
            raise Refused("SetVal answered verdict=false")

    return setval


async def run_unary(target: str, cfg: UnaryConfig, *, seed: int | None = None) -> BenchResult:
    """cfg's load on the server at target (HOST:PORT), summarised like `raftctl bench`'s."""
    async with grpc.aio.insecure_channel(target, options=UNARY_CHANNEL_OPTIONS) as channel:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await channel.channel_ready()
        except TimeoutError:
            raise RuntimeError(
                f"nothing accepted a connection at {target} within {READY_TIMEOUT_S:.0f} s"
            ) from None
        value = make_value(cfg.value_size)
        if cfg.op in READS:
            try:
                put = operation(channel, "put", value, cfg.timeout)
                await fill(put, range(cfg.keys), min(cfg.concurrency, PREFILL_CONCURRENCY))
            except grpc.aio.AioRpcError as e:
                raise RuntimeError(f"writing the keys before the reads failed: {describe(e)}") from None
        return await closed_loop(
            cfg.op,
            operation(channel, cfg.op, value, cfg.timeout),
            concurrency=cfg.concurrency,
            duration=cfg.duration,
            warmup=cfg.warmup,
            keys=cfg.keys,
            value_size=cfg.value_size,
            failures=(grpc.aio.AioRpcError, Refused),
            describe=describe,
            seed=seed,
        )
