"""The floor under a single client's write (issue 8): raftd's gRPC and disk shape with no Raft at all.

Prints numbers, asserts nothing. Three processes play a leader and two followers. A client sends one
16-byte request at a time over a long-lived bidi stream to the leader. The leader hands it to one sender
task per follower, which writes it on a long-lived client stream (raftd's transport), and meanwhile
appends it to its own sqlite log (WAL, synchronous=FULL: raftd's storage). It answers once its own
save and the first follower's acknowledgement are in. A follower saves, then acknowledges on its own
stream back to the leader. No log matching, no terms, no state machine, no protobuf.

The median of this relay is the lowest single-client write latency raftd's design reaches on the machine;
raftd's own median (`make bench`) minus it is what Raft itself and the hand-offs between its tasks add.
Modes (--modes, all by default), each for --seconds:
  relay   as above;
  nosync  the same with synchronous=OFF (no fsync): what the disk adds;
  echo    the leader answers at once: one client round trip on a long-lived stream;
  unary   the floor under one unary call per operation, as clients other than raftctl make them: ONE
          grpc.aio process serving raftd.v1 KV's Put and Get and RaftService's SetVal and GetVal from a
          dict (the generated servicers; no Raft, no disk), loaded by raftctl/unary_load.py, the driver
          `make bench` loads raftd with, from this process: put and get at 1 and 64 clients.

`make bench` runs the relay floor in its own run through floor_relay_p50(), and the unary floor through
unary_server(), in rounds that alternate with the unary rows it holds raftd's to.
Like raftd, it runs on gRPC's older polling engine (raftd/grpcenv.py) unless GRPC_EXPERIMENTS says
otherwise (GRPC_EXPERIMENTS= for gRPC's default one), and so does every process it starts.
Run: [GRPC_EXPERIMENTS=...] .venv/bin/python bench/floor.py [--seconds 5] [--modes relay,unary]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from raftd.grpcenv import POLL_ENGINE

os.environ.setdefault("GRPC_EXPERIMENTS", POLL_ENGINE)  # before grpc loads, here and in every child

import grpc

from raftctl.bench import BenchResult
from raftctl.unary_load import UnaryConfig, run_unary
from raftd.launcher import free_ports
from raftd.pb import kv_pb2, kv_pb2_grpc, raft_pb2, raft_pb2_grpc

PEER = "/floor.Floor/Peer"
CLIENT = "/floor.Floor/Client"
RELAY_MODES = ("echo", "relay", "nosync")
MODES = (*RELAY_MODES, "unary")
UNARY_OPS = ("put", "get")
UNARY_CONCURRENCY = (1, 64)
UNARY_WARMUP_S = 1.0
ID_BYTES = 8


class Log:
    """An append-only sqlite log with raftd's durability settings: one transaction per save."""

    def __init__(self, path: Path, sync: bool) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={'FULL' if sync else 'OFF'}")
        self.conn.execute("CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, data BLOB)")
        self.index = 0

    def save(self, data: bytes) -> None:
        self.index += 1
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT INTO entries (idx, data) VALUES (?, ?)", (self.index, data))
        self.conn.execute("COMMIT")


class Sender:
    """One long-lived client stream to a peer, fed from a queue by its own task (raftd's PeerClient)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        # wait_for_ready: the three processes start together, and the peer may not be listening yet.
        stream = self.channel.stream_unary(PEER)(wait_for_ready=True)
        while True:
            await stream.write(await self.queue.get())


class Node:
    def __init__(self, me: int, ports: list[int], log: Log, mode: str) -> None:
        self.me = me
        self.log = log
        self.mode = mode
        self.senders = {
            i: Sender(f"127.0.0.1:{port}") for i, port in enumerate(ports) if i != me and (me == 0 or i == 0)
        }
        # The leader's requests in flight: how many of (its own save, a follower's ack) each still needs.
        self.needs: dict[bytes, int] = {}
        self.out: list[bytes] = []
        self.wake = asyncio.Event()

    async def peer(self, messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        async for message in messages:
            if self.me != 0:
                self.log.save(message)
                self.senders[0].queue.put_nowait(message[:ID_BYTES])
            else:
                self._done(message)  # the second follower's ack finds the request answered: ignored
        return b""

    async def client(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while True:
                self.wake.clear()
                if self.out:
                    taken, self.out = self.out, []
                    for answer in taken:
                        await context.write(answer)
                else:
                    await self.wake.wait()
        finally:
            reader.cancel()

    async def _read(self, requests: AsyncIterator[bytes]) -> None:
        async for request in requests:
            rid = request[:ID_BYTES]
            if self.mode == "echo":
                self._answer(rid)
                continue
            self.needs[rid] = 2
            for sender in self.senders.values():
                sender.queue.put_nowait(request)
            await asyncio.sleep(0)  # the senders write before the save blocks the loop, as raftd's leader
            self.log.save(request)
            self._done(rid)

    def _done(self, rid: bytes) -> None:
        if rid not in self.needs:
            return
        self.needs[rid] -= 1
        if not self.needs[rid]:
            del self.needs[rid]
            self._answer(rid)

    def _answer(self, rid: bytes) -> None:
        self.out.append(rid)
        self.wake.set()


async def serve(me: int, ports: list[int], data: Path, mode: str) -> None:
    server = grpc.aio.server()
    node = Node(me, ports, Log(data / f"node-{me}.db", sync=mode != "nosync"), mode)
    handlers = {
        "Peer": grpc.stream_unary_rpc_method_handler(node.peer),
        "Client": grpc.stream_stream_rpc_method_handler(node.client),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.Floor", handlers),))
    server.add_insecure_port(f"127.0.0.1:{ports[me]}")
    await server.start()
    await server.wait_for_termination()


async def drive(port: int, seconds: float, pids: list[int]) -> tuple[list[float], float]:
    """One client, one request at a time, after a one-second warm-up: the latencies in ms, and the CPU
    seconds the nodes spent meanwhile."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        async with asyncio.timeout(10):  # a node that did not start ends the run rather than hanging it
            await channel.channel_ready()
        call = channel.stream_stream(CLIENT)()
        latencies: list[float] = []
        cpu = 0.0
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) < start + 1 + seconds:
            n += 1
            async with asyncio.timeout(5):  # a stuck relay ends the run rather than hanging it
                await call.write(n.to_bytes(ID_BYTES, "big") + b"v" * 16)
                answer = await call.read()
            if not isinstance(answer, bytes) or int.from_bytes(answer, "big") != n:
                raise RuntimeError(f"request {n} got the answer {answer!r}")
            if now >= start + 1:
                if not latencies:
                    cpu = cpu_seconds(pids)
                latencies.append((time.perf_counter() - now) * 1000)
        call.cancel()
        return latencies, cpu_seconds(pids) - cpu


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure(mode: str, seconds: float) -> tuple[list[float], float]:
    """One relay mode for seconds after a warm-up: the latencies in ms, and the nodes' CPU seconds."""
    ports = free_ports(3)
    with tempfile.TemporaryDirectory(prefix="raftd-floor-") as data:
        argv = [sys.executable, __file__, "--node", mode, data, *map(str, ports)]
        procs = [subprocess.Popen([*argv, str(i)]) for i in range(3)]
        try:
            time.sleep(1.5)  # the servers start and the streams between them open
            latencies, cpu = asyncio.run(drive(ports[0], seconds, [p.pid for p in procs]))
        finally:
            for p in procs:
                p.kill()
                p.wait()
    if len(latencies) < 2:
        raise RuntimeError(f"the {mode} relay answered {len(latencies)} request(s) in {seconds:g} s")
    return latencies, cpu


def relay_row(mode: str, seconds: float) -> str:
    latencies, cpu = measure(mode, seconds)
    p50 = statistics.median(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98]
    per_op = cpu / len(latencies) * 1000
    return f"| {mode} | {len(latencies) / seconds:,.0f} ops/s | {p50:.2f} | {p99:.2f} | {per_op:.2f} |"


def floor_relay_p50(seconds: float) -> float:
    """The relay's median in ms: the floor under raftd's single-client write, for `make bench`'s ratio."""
    return statistics.median(measure("relay", seconds)[0])


# -- the unary floor --------------------------------------------------------------------------------


class DictServer(kv_pb2_grpc.KVServicer, raft_pb2_grpc.RaftServiceServicer):
    """raftd's client services on a dict: what a unary call costs grpc.aio with nothing behind it."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.index = 0

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> kv_pb2.PutResponse:
        self.index += 1
        self.data[request.key] = request.value
        return kv_pb2.PutResponse(index=self.index)

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext) -> kv_pb2.GetResponse:
        value = self.data.get(request.key)
        return kv_pb2.GetResponse(found=value is not None, value=value or b"", index=self.index)

    async def SetVal(
        self, request: raft_pb2.SetValRequest, context: grpc.aio.ServicerContext
    ) -> raft_pb2.SetValResponse:
        self.index += 1
        self.data[request.key.encode()] = request.value.encode()
        return raft_pb2.SetValResponse(verdict=True)

    async def GetVal(
        self, request: raft_pb2.GetValRequest, context: grpc.aio.ServicerContext
    ) -> raft_pb2.GetValResponse:
        value = self.data.get(request.key.encode())
        return raft_pb2.GetValResponse(verdict=value is not None, value=(value or b"").decode())


async def serve_unary(port: int) -> None:
    server = grpc.aio.server()
    dict_server = DictServer()
    kv_pb2_grpc.add_KVServicer_to_server(dict_server, server)
    raft_pb2_grpc.add_RaftServiceServicer_to_server(dict_server, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@dataclass(frozen=True)
class UnaryServer:
    address: str  # HOST:PORT
    pid: int  # `make bench` stops the process (SIGSTOP) while it measures raftd, so that it takes no CPU


@contextlib.contextmanager
def unary_server() -> Iterator[UnaryServer]:
    """A DictServer in a process of its own, as raftd is (the driver waits until it listens); killed on the
    way out."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, __file__, "--unary-server", str(port)])
    try:
        yield UnaryServer(f"127.0.0.1:{port}", proc.pid)
    finally:
        proc.kill()
        proc.wait()


def unary_floor(
    op: str,
    concurrency: int,
    seconds: float,
    warmup: float = UNARY_WARMUP_S,
    keys: int = UnaryConfig.keys,
    value_size: int = UnaryConfig.value_size,
) -> BenchResult:
    """op at concurrency against a fresh DictServer, from this process, by `make bench`'s unary driver."""
    cfg = UnaryConfig(op, concurrency, seconds, warmup, keys, value_size)
    with unary_server() as server:
        return asyncio.run(run_unary(server.address, cfg))


def unary_row(r: BenchResult) -> str:
    throughput = f"{r.ops_per_s:,.0f} ops/s"
    return f"| {r.workload} | {r.concurrency} | {throughput} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"modes are a comma-separated list of {', '.join(MODES)}")
    return modes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--modes", type=parse_modes, default=list(MODES), help=f"default {','.join(MODES)}")
    parser.add_argument("--node", nargs=6, help=argparse.SUPPRESS)  # MODE DIR PORT0 PORT1 PORT2 ID
    parser.add_argument("--unary-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        mode, data, *ports, me = args.node
        asyncio.run(serve(int(me), [int(p) for p in ports], Path(data), mode))
        return 0
    if args.unary_server is not None:
        asyncio.run(serve_unary(args.unary_server))
        return 0
    relays = [m for m in RELAY_MODES if m in args.modes]
    if relays:
        print("| mode | throughput | p50 ms | p99 ms | CPU of the 3 nodes per op, ms |")
        print("|------|------------|--------|--------|-------------------------------|")
    for mode in relays:
        try:
            print(relay_row(mode, args.seconds), flush=True)
        except TimeoutError:
            print(f"floor: the {mode} relay did not answer in time", file=sys.stderr)
            return 1
        except RuntimeError as e:
            print(f"floor: {e}", file=sys.stderr)
            return 1
    if "unary" in args.modes:
        print("| unary op | clients | throughput | p50 ms | p99 ms | errors |")
        print("|----------|---------|------------|--------|--------|--------|")
        for op in UNARY_OPS:
            for c in UNARY_CONCURRENCY:
                try:
                    print(unary_row(unary_floor(op, c, args.seconds)), flush=True)
                except RuntimeError as e:
                    print(f"floor: {e}", file=sys.stderr)
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
