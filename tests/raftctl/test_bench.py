"""The benchmark tool: AsyncClient against fake nodes, `raftctl bench` and `make bench` on real processes,
the unary driver against bench/floor.py's unary floor, and the pure helpers. Nothing here asserts on
speed; only that the figures exist and make sense.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from raftctl.aio import AsyncClient
from raftctl.bench import (
    BenchConfig,
    BenchResult,
    closed_loop,
    latency_summary,
    make_value,
    percentile,
    result_table,
)
from raftctl.benchmark import (
    LargeRun,
    Report,
    Settings,
    UnaryRun,
    _median_index,
    cpu_percent,
    env_bool,
    floor_module,
    markdown_table,
    median_run,
    parse_cpu_model,
    parse_mem_total_kib,
    parse_proc_stat,
    parse_vmrss_kib,
    proc_cpu_ticks,
    proc_rss_kib,
    render_report,
    sqlite_floor,
    stopped,
    target_cell,
    times,
)
from raftctl.client import InvalidArgument, NotFound, OutcomeUnknown, Unavailable
from raftctl.unary_load import OPS, Refused, UnaryConfig, describe, run_unary
from raftd.pb import kv_pb2 as pb
from tests.daemon.cluster import Cluster

from .conftest import ctl_env, run_ctl
from .test_client import FakeNode, unused_endpoint

# -- AsyncClient against fake nodes ------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _OneRequest:
    """The context a FakeNode method sees for one request of a stream: abort() fails that request only."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Refused(code, details)


class StreamingFakeNode(FakeNode):
    """A FakeNode that also serves KV.Stream: each batch is answered at once, by the same script."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []  # the number of requests in each RequestBatch received
        self.received: list[pb.Request] = []
        self.streams = 0  # Stream calls opened
        self.silent: set[bytes] = set()  # keys whose requests are never answered
        self.break_next = False  # fail the whole stream on the next batch

    def Stream(
        self, batches: Iterator[pb.RequestBatch], context: grpc.ServicerContext
    ) -> Iterator[pb.ResponseBatch]:
        with self.lock:
            self.streams += 1
        for batch in batches:
            self.batches.append(len(batch.requests))
            self.received += batch.requests
            if self.break_next:
                self.break_next = False
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by fake")
            answers = [self._answer(r) for r in batch.requests if self._key(r) not in self.silent]
            yield pb.ResponseBatch(responses=answers)

    @staticmethod
    def _key(r: pb.Request) -> bytes:
        return getattr(r, r.WhichOneof("op") or "get").key

    def _answer(self, r: pb.Request) -> pb.Response:
        one = _OneRequest()
        try:
            if r.HasField("put"):
                return pb.Response(id=r.id, put=self.Put(r.put, one))  # type: ignore[arg-type]
            if r.HasField("delete"):
                return pb.Response(id=r.id, delete=self.Delete(r.delete, one))  # type: ignore[arg-type]
            return pb.Response(id=r.id, get=self.Get(r.get, one))  # type: ignore[arg-type]
        except _Refused as e:
            return pb.Response(id=r.id, error=pb.Error(code=e.code.value[0], message=e.details))


@pytest.fixture(params=[FakeNode, StreamingFakeNode], ids=["unary", "stream"])
def fakes(request: pytest.FixtureRequest) -> Iterator[list[FakeNode]]:
    """Every AsyncClient test runs against nodes with KV.Stream and against older ones without it."""
    made = [request.param(), request.param()]
    try:
        yield made
    finally:
        for n in made:
            n.server.stop(None)


@pytest.fixture
def streaming() -> Iterator[StreamingFakeNode]:
    node = StreamingFakeNode()
    node.leader = (0, node.address)
    try:
        yield node
    finally:
        node.server.stop(None)


def test_async_retry_keeps_the_write_id(fakes: list[FakeNode]) -> None:
    a = fakes[0]
    a.failures = [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "no outcome within 1.0s; a write may or may not have applied"),
        (grpc.StatusCode.UNAVAILABLE, "leadership changed before the write committed; retry"),
    ]

    async def go() -> None:
        async with AsyncClient([a.address], timeout=10) as c:
            assert await c.put("k", "v") == 3
            assert await c.delete("k") is True

    asyncio.run(go())
    first = a.writes[0]
    assert a.writes[:3] == [first] * 3, "every attempt of one write carries the same (client_id, seq)"
    assert a.writes[3] == (first[0], first[1] + 1), "the next write: same idle session, next seq"


def test_async_concurrent_writes_never_share_a_session(fakes: list[FakeNode]) -> None:
    """The server keeps only the highest seq per client_id: two in flight under one id could lose one."""
    a = fakes[0]

    async def go() -> int:
        async with AsyncClient([a.address], timeout=10) as c:
            await asyncio.gather(*(c.put(f"k{i}", "v") for i in range(8)))
            await asyncio.gather(*(c.put(f"k{i}", "w") for i in range(8)))
            return c.sessions_made

    assert asyncio.run(go()) == 8
    first, second = a.writes[:8], a.writes[8:]
    assert len({cid for cid, _ in first}) == 8 and {s for _, s in first} == {1}
    assert {cid for cid, _ in second} == {cid for cid, _ in first} and {s for _, s in second} == {2}


def test_async_follows_the_leader_named_in_an_error(fakes: list[FakeNode]) -> None:
    follower, leader = fakes
    follower.always = (grpc.StatusCode.UNAVAILABLE, f"not the leader; try {leader.address}")

    async def go() -> None:
        async with AsyncClient([follower.address], timeout=10) as c:
            await c.put("k", "v")
            assert await c.get("k") == "v"

    asyncio.run(go())
    assert follower.writes[0] == leader.writes[0]


def test_async_follows_getleader_and_skips_dead_endpoints(fakes: list[FakeNode]) -> None:
    follower, leader = fakes
    follower.leader = (1, leader.address)
    follower.always = (grpc.StatusCode.UNAVAILABLE, "no leader known; retry shortly")

    async def go() -> None:
        async with AsyncClient([unused_endpoint(), follower.address], timeout=10) as c:
            await c.put("k", "v")
            assert (await c.get_leader()).address == leader.address

    asyncio.run(go())
    assert follower.writes == [] and len(leader.writes) == 1


def test_async_errors_are_typed(fakes: list[FakeNode]) -> None:
    a = fakes[0]

    async def go() -> None:
        async with AsyncClient([a.address], timeout=10) as c:
            with pytest.raises(NotFound):
                await c.get("absent")
            a.failures = [(grpc.StatusCode.INVALID_ARGUMENT, "the key is empty")]
            with pytest.raises(InvalidArgument, match="the key is empty"):
                await c.put("", "v")
        async with AsyncClient([unused_endpoint()], timeout=0.5) as c:
            with pytest.raises(
                Unavailable, match=r"no node answers \(127\.0\.0\.1:\d+: connection refused\)"
            ):
                await c.put("k", "v")

    asyncio.run(go())


def test_async_requests_made_together_travel_as_one_batch(streaming: StreamingFakeNode) -> None:
    """64 coroutines sharing a client cost one stream message per loop iteration, not a call each."""
    node = streaming

    async def go() -> list[int]:
        async with AsyncClient([node.address], timeout=10) as c:
            await c.put("warm", "up")  # finds the leader and opens the stream
            before = len(node.batches)
            indexes = await asyncio.gather(*(c.put(f"k{i}", "v") for i in range(64)))
            assert node.batches[before:] == [64], "requests made in one loop iteration share one batch"

            async def worker(w: int) -> None:
                for n in range(10):
                    await c.put(f"w{w}", str(n))
                    assert await c.get(f"w{w}") == str(n)

            before = len(node.batches)
            await asyncio.gather(*(worker(w) for w in range(32)))
            assert sum(node.batches[before:]) == 640
            assert len(node.batches) - before <= 640 / 4, f"hardly any batching: {node.batches[before:]}"
            return indexes

    indexes = asyncio.run(go())
    assert sorted(indexes) == list(range(2, 66)), "every request answered, each by its own answer"
    assert node.streams == 1


def test_async_client_falls_back_to_unary_calls_without_stream(fakes: list[FakeNode]) -> None:
    node = fakes[0]
    streams = isinstance(node, StreamingFakeNode)

    async def go() -> bool:
        async with AsyncClient([node.address], timeout=10) as c:
            for _ in range(3):
                await c.put("k", "v")
                assert await c.get("k", linearizable=False) == "v"
            assert await c.delete("k") is True
            return c._connection(node.address).pipe is not None

    assert asyncio.run(go()) is streams, "the stream is given up only on a node that has none"
    assert len(node.writes) == 4
    if isinstance(node, StreamingFakeNode):
        assert sum(node.batches) == 7 and node.streams == 1


def test_async_unanswered_request_fails_by_its_own_deadline(streaming: StreamingFakeNode) -> None:
    """The stream has no deadline; each request has one (the client's attempt timeout) and fails alone."""
    node = streaming
    node.silent = {b"lost"}

    async def go() -> None:
        async with AsyncClient([node.address], timeout=2.5) as c:
            lost = asyncio.ensure_future(c.put("lost", "v"))
            for n in range(5):
                await c.put("other", str(n))
            assert not lost.done(), "answers to the others do not end the one still waiting"
            with pytest.raises(OutcomeUnknown) as e:
                await asyncio.wait_for(lost, 10)  # without a deadline of its own it would wait forever
            assert re.fullmatch(
                r"setval: no definite answer within 2\.5s, the write may have applied; "
                r"last error: \S+: no answer within [\d.]+s",
                str(e.value),
            ), e.value

    asyncio.run(go())
    lost = [(r.put.session.client_id, r.put.session.seq) for r in node.received if r.put.key == b"lost"]
    assert len(lost) >= 2 and all(s == lost[0] for s in lost), "the write was retried with its one id"
    firsts = [r.put.session.first for r in node.received if r.put.key == b"lost"]
    assert all(firsts), "every attempt of a session's first write says so"


def test_async_broken_stream_fails_its_requests_over_to_a_new_stream(streaming: StreamingFakeNode) -> None:
    node = streaming

    async def go() -> None:
        async with AsyncClient([node.address], timeout=10) as c:
            await c.put("a", "1")
            node.break_next = True
            await asyncio.gather(*(c.put(f"k{i}", "v") for i in range(8)))
            assert await c.get("k7") == "v"

    asyncio.run(go())
    assert node.streams == 2, "the broken stream's requests were retried on a new one"
    sessions = [(r.put.session.client_id, r.put.session.seq) for r in node.received if r.HasField("put")]
    assert len(sessions) == 17 and sorted(sessions[1:9]) == sorted(node.writes[1:9])


def test_async_big_values_are_split_across_stream_messages(cluster: Cluster) -> None:
    """Ten 1 MB values at once are 10 MB each way, more than one message may carry (8 MiB for a client):
    both ends split their batches, and a value over the node's limit is refused like a unary call's."""
    values = {f"big-{i}": str(i) * 1_000_000 for i in range(10)}

    async def go() -> None:
        async with AsyncClient([cluster.address(i) for i in range(cluster.n)], timeout=20) as c:
            await c.put("big-warmup", "v")  # learns the leader, so the ten below leave together
            await asyncio.gather(*(c.put(k, v) for k, v in values.items()))
            assert await asyncio.gather(*(c.get(k) for k in values)) == list(values.values())
            with pytest.raises(InvalidArgument, match="the limit is 1048576"):
                await c.put("too-big", "v" * (5 * 1024 * 1024))
            used = [conn.pipe for conn in c._connections.values() if conn.pipe and conn.pipe.opened]
            assert all(p.opened == 1 and p.call is not None for p in used), "no stream broke"
            assert sum(p.batches_sent for p in used) >= 1 + 3 + 1, "ten big puts took three batches at least"

    asyncio.run(go())


# -- raftctl bench on a real cluster -------------------------------------------------------------------


@pytest.mark.parametrize("workload", ["write", "read", "local-read"])
def test_bench_command_json(tmp_path: Path, cluster: Cluster, endpoints: str, workload: str) -> None:
    args = ["--workload", workload, "--concurrency", "4", "--duration", "1", "--warmup", "0.2"]
    r = run_ctl("bench", "--endpoints", endpoints, *args, "--keys", "50", "-o", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["workload"] == workload and doc["concurrency"] == 4 and doc["value_size"] == 16
    assert doc["ops"] > 0 and doc["ops_per_s"] > 0
    assert doc["errors"] == 0 and doc["first_error"] is None
    assert 0 < doc["p50_ms"] <= doc["p95_ms"] <= doc["p99_ms"] <= doc["max_ms"]


def test_bench_command_text(tmp_path: Path, cluster: Cluster, endpoints: str) -> None:
    r = run_ctl("--endpoints", endpoints, "bench", "--duration", "0.3", "--warmup", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()[1], r.stdout.splitlines()[3]
    assert "OPS/S" in header and "P99 MS" in header and row.startswith("| write ")


def test_bench_command_against_nobody_exits_3(tmp_path: Path) -> None:
    r = run_ctl(
        "--timeout", "0.3", "bench", "--endpoints", unused_endpoint(), "--duration", "0.5", "--warmup", "0",
        "-c", "2", "-o", "json", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 3
    doc = json.loads(r.stdout)
    assert doc["ops"] == 0 and doc["errors"] > 0 and "connection refused" in doc["first_error"]


def test_make_bench_module_end_to_end(tmp_path: Path) -> None:
    """python -m raftctl.benchmark with every step shrunk: one table, and no raftd left running."""
    env = ctl_env(
        tmp_path,
        BENCH_SECONDS="0.3",
        BENCH_WARMUP="0",
        BENCH_CONCURRENCY="2",
        BENCH_KEYS="100",  # the keys the unary reads write first, at a unary write's pace
        BENCH_FAILOVER_TRIALS="1",
        BENCH_IDLE_SECONDS="0.3",
        BENCH_LOAD_KEYS="200",
        BENCH_LOAD_CONCURRENCY="16",
        BENCH_LARGE_MIB="4",
        BENCH_LARGE_CLIENTS="2",
    )
    r = subprocess.run(
        [sys.executable, "-m", "raftctl.benchmark"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    names = [line.split("|")[1].strip() for line in table[2:]]
    assert names == [
        "write, 2 clients",
        "linearizable read, 2 clients",
        "relay floor, 1 client",
        "unary floor, KV Put, 64 clients",
        "unary floor, KV Get, 64 clients",
        "unary KV Put to the leader, 1 client",
        "unary KV Put to the leader, 64 clients",
        "unary linearizable KV Get to the leader, 64 clients",
        "unary RaftService SetVal to the leader, 64 clients",
        "unary RaftService GetVal to the leader, 64 clients",
        "unary KV Put to the follower, 64 clients",
        "unary linearizable KV Get to the follower, 64 clients",
        "failover window, 1 trials",
        *(f"idle CPU, node {i}" for i in range(3)),
        "load 200 keys",
        *(f"memory, node {i}" for i in range(3)),
        "1 MiB puts, 4 MiB from 2 clients",
    ]
    assert "- CPU: " in r.stdout and "- Python: " in r.stdout
    assert "- speed: a 10M-addition Python loop took " in r.stdout
    follower_get = table[2 + names.index("unary linearizable KV Get to the follower, 64 clients")]
    assert re.search(r"client CPU \d+%; \d+\.\d\dx the KV Get floor", follower_get), follower_get
    assert "raftd-bench-" in r.stderr
    bench_dir = r.stderr.split("cluster up in ")[1].split(":")[0]
    assert not Path(bench_dir).exists(), "the temporary data dirs are removed after a good run"


# -- pure helpers --------------------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile(values, 0) == 1 and percentile([7.0], 95) == 7 and percentile([], 50) == 0
    with pytest.raises(ValueError):
        percentile(values, 101)
    s = latency_summary([0.003, 0.001, 0.002, 0.010])
    assert (s["p50_ms"], s["max_ms"]) == pytest.approx((2.0, 10.0)) and s["mean_ms"] == pytest.approx(4.0)
    assert latency_summary([])["p99_ms"] == 0


def test_bench_config_validation_and_values() -> None:
    with pytest.raises(ValueError, match="workload"):
        BenchConfig(workload="scan")
    with pytest.raises(ValueError):
        BenchConfig(concurrency=0)
    assert len(make_value(16).encode()) == 16 and make_value(0) == ""


def _result(**kw: object) -> BenchResult:
    base: dict[str, object] = dict(
        workload="write", concurrency=16, duration_s=5.0, value_size=16, keys=1000, ops=10000,
        ops_per_s=2000.0, p50_ms=1.5, p95_ms=3.25, p99_ms=7.0, max_ms=150.0, mean_ms=2.0, errors=0,
        first_error=None, client_cpu_percent=20.0,
    )  # fmt: skip
    base.update(kw)
    return BenchResult(**base)  # type: ignore[arg-type]


def test_result_table() -> None:
    lines = result_table(_result()).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in (lines[1], lines[3])]
    assert cells[0] == ["WORKLOAD", "CONC", "OPS", "OPS/S", "P50 MS", "P95 MS", "P99 MS", "MAX MS", "ERRORS"]
    assert cells[1] == ["write", "16", "10000", "2000", "1.50", "3.25", "7.00", "150", "0"]
    assert lines[0] == lines[2] == lines[4] and len({len(line) for line in lines}) == 1
    assert result_table(_result(errors=2, first_error="boom")).endswith("\nfirst error: boom")


def test_markdown_table_and_report() -> None:
    assert markdown_table(["a", "bb"], [["ccc", "d"]]).splitlines() == [
        "| a   | bb |",
        "|-----|----|",
        "| ccc | d  |",
    ]
    report = Report(
        facts={"CPU": "Test CPU", "cores": "2"},
        runs=[_result(), _result(workload="read", concurrency=1)],
        failover_ms=[300.0, 500.0, 200.0],
        election_ms=[250.0, 150.0, 450.0],
        failover_writers=4,
        idle_cpu={0: 1.234, 1: 0.5},
        rss_before_kib={0: 40 * 1024, 1: 41 * 1024},
        rss_after_kib={0: 120 * 1024},
        load_keys=1_000_000,
        load_seconds=400.0,
        load_concurrency=256,
    )
    text = render_report(report)
    assert text.startswith("- CPU: Test CPU\n- cores: 2\n\n| measurement ")
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()[5:]
    }
    assert rows["write, 16 clients"][:2] == ["2,000 ops/s", "1.50"]
    assert rows["linearizable read, 1 client"][0] == "2,000 ops/s"
    assert rows["failover window, 3 trials"][:5] == ["median 300 ms", "300", "-", "-", "500"]
    assert "new leader named after median 250 ms (max 450)" in rows["failover window, 3 trials"][-2]
    assert rows["failover window, 3 trials"][-1] == "median <= 400 ms, max <= 1,000 ms: met"
    assert rows["idle CPU, node 0"][0] == "1.23% of a core" and rows["idle CPU, node 0"][-1] == "< 2%: met"
    assert rows["load 1,000,000 keys"][0] == "400.0 s" and "2,500 writes/s" in rows["load 1,000,000 keys"][-2]
    assert rows["memory, node 0"][0] == "120 MB RSS" and "40 MB before" in rows["memory, node 0"][-2]
    assert rows["memory, node 0"][-1] == "< 150 MB: met"
    assert rows["memory, node 1"][0] == "41 MB RSS" and rows["memory, node 1"][-2:] == [
        "key load skipped",
        "",
    ]
    assert rows["write, 16 clients"][-1] == "" and "relay floor, 1 client" not in rows, "no floor measured"


def test_proc_parsing() -> None:
    stat = "4242 (python -m (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 1234 567 0 0 20 0 3 0 100 0 0"
    assert parse_proc_stat(stat) == 1234 + 567
    assert parse_vmrss_kib("Name:\tpython\nVmPeak:\t 9 kB\nVmRSS:\t   51234 kB\n") == 51234
    with pytest.raises(ValueError):
        parse_vmrss_kib("Name:\tzombie\n")
    assert parse_cpu_model("processor\t: 0\nvendor_id\t: X\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert parse_cpu_model("processor : 0\n") == "unknown"
    assert parse_mem_total_kib("MemTotal:       24684104 kB\nMemFree: 1 kB\n") == 24684104
    assert cpu_percent(50, 100, 10.0) == pytest.approx(5.0)
    # and the real files of this process
    assert proc_cpu_ticks(os.getpid()) >= 0 and proc_rss_kib(os.getpid()) > 1000


def test_settings_from_env() -> None:
    s = Settings.from_env({"BENCH_SECONDS": "2", "BENCH_CONCURRENCY": "1, 8", "BENCH_LOAD_KEYS": "0"})
    assert (s.seconds, s.concurrency, s.load_keys, s.failover_trials) == (2.0, (1, 8), 0, 10)
    assert Settings.from_env({}) == Settings()
    assert (Settings().unary, Settings().floor, Settings().keep_dir) == (True, True, False)
    s = Settings.from_env({"BENCH_UNARY": "0", "BENCH_FLOOR": " 0 ", "BENCH_KEEP_DIR": "1"})
    assert (s.unary, s.floor, s.keep_dir) == (False, False, True)
    assert (Settings().unary_rounds, Settings.from_env({"BENCH_UNARY_ROUNDS": "0"}).unary_rounds) == (3, 1)


def test_env_bool() -> None:
    assert env_bool({}, "X", True) is True and env_bool({"X": ""}, "X", False) is False
    assert env_bool({"X": "0"}, "X", True) is False and env_bool({"X": "1"}, "X", False) is True
    assert env_bool({"X": "yes"}, "X", False) is True


def test_ratios_and_targets() -> None:
    assert times(0.8187) == "0.82x" and times(1.4) == "1.40x"
    assert target_cell(">= 0.7x the floor", True) == ">= 0.7x the floor: met"
    assert target_cell(">= 0.7x the floor", False) == ">= 0.7x the floor: **missed**"
    assert target_cell(">= 0.7x the floor", None) == ">= 0.7x the floor: not measured"


def _unary(
    op: str, node: str, concurrency: int, ops_per_s: float, ratios: tuple[float, ...] = (), **kw: object
) -> UnaryRun:
    result = _result(workload=op, concurrency=concurrency, ops_per_s=ops_per_s, **kw)
    return UnaryRun(node, result, ratios)


def _rows(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| measurement ")) + 2
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[start:]}


def test_report_unary_rows_hold_each_to_its_floor() -> None:
    report = Report(
        runs=[_result(concurrency=1, p50_ms=1.5), _result(concurrency=64, ops_per_s=4000.0)],
        relay_p50_ms=1.2,
        unary_floors={
            "put": [_result(workload="put", concurrency=64, ops_per_s=x) for x in (12000.0, 9000.0, 10000.0)],
            "get": [_result(workload="get", concurrency=64, ops_per_s=20000.0)],
        },
        unary=[
            _unary("put", "leader", 1, 900.0),
            _unary("put", "leader", 64, 8200.0, ratios=(0.9, 0.82, 0.6)),
            _unary("get", "leader", 64, 1000.0, ratios=(0.05,)),
            _unary("setval", "leader", 64, 7000.0, ratios=(0.7,)),
            _unary("getval", "leader", 64, 14000.0, ratios=(0.7,)),
            _unary(
                "get", "follower", 64, 500.0, errors=3, first_error="DEADLINE_EXCEEDED: Deadline Exceeded"
            ),
        ],
    )
    rows = _rows(render_report(report))
    assert rows["write, 1 client"][-2:] == [
        "client CPU 20%; p50 1.25x the relay floor's",
        "p50 <= 1.4x the relay floor's: met",
    ]
    assert rows["write, 64 clients"][-1] == ">= 5,000 ops/s: **missed**"
    assert rows["relay floor, 1 client"][:2] == ["p50 1.20 ms", "1.20"]
    put_floor = rows["unary floor, KV Put, 64 clients"]
    assert put_floor[0] == "10,000 ops/s", "the median run"
    assert put_floor[-2].endswith("; the median of 3 runs (9,000 - 12,000 ops/s), the nodes stopped")
    assert rows["unary floor, KV Get, 64 clients"][0] == "20,000 ops/s"
    assert rows["unary KV Put to the leader, 1 client"][-2:] == ["client CPU 20%", ""], (
        "no target at 1 client"
    )
    put = rows["unary KV Put to the leader, 64 clients"]
    assert put[0] == "8,200 ops/s" and put[-2:] == [
        "client CPU 20%; 0.82x the KV Put floor (median of 3 rounds: 0.90x, 0.82x, 0.60x)",
        ">= 0.7x the floor: met",
    ], "the median of the rounds' ratios, not the row's ops/s over the floor row's"
    get = rows["unary linearizable KV Get to the leader, 64 clients"]
    assert get[-2:] == ["client CPU 20%; 0.05x the KV Get floor", ">= 0.7x the floor: **missed**"]
    assert (
        rows["unary RaftService SetVal to the leader, 64 clients"][-2]
        == "client CPU 20%; 0.70x the KV Put floor"
    )
    assert (
        rows["unary RaftService GetVal to the leader, 64 clients"][-2]
        == "client CPU 20%; 0.70x the KV Get floor"
    )
    follower = rows["unary linearizable KV Get to the follower, 64 clients"]
    assert follower[-3] == "3" and follower[-2].endswith(
        "; first error: DEADLINE_EXCEEDED: Deadline Exceeded"
    )

    unmeasured = [UnaryRun(run.node, run.result) for run in report.unary]
    without_floors = _rows(render_report(Report(runs=report.runs, unary=unmeasured)))
    assert without_floors["write, 1 client"][-2:] == [
        "client CPU 20%",
        "p50 <= 1.4x the relay floor's: not measured",
    ]
    put = without_floors["unary KV Put to the leader, 64 clients"]
    assert put[-2:] == ["client CPU 20%", ">= 0.7x the floor: not measured"]


def test_median_of_rounds_picks_the_lower_middle() -> None:
    assert _median_index([0.9, 0.6, 0.8]) == 2 and _median_index([0.5]) == 0
    assert _median_index([0.9, 0.6, 0.8, 0.7]) == 3, "the lower middle, as statistics.median_low"
    runs = [_result(ops_per_s=x) for x in (3.0, 1.0, 2.0, 4.0)]
    assert median_run(runs).ops_per_s == 2.0


def test_stopped_processes_take_no_cpu_until_resumed() -> None:
    """A floor run stops raftd's nodes, and raftd's runs the floor's server: SIGSTOP, then SIGCONT."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with stopped([busy.pid]):
            time.sleep(0.05)  # a signal is delivered asynchronously
            before = proc_cpu_ticks(busy.pid)
            time.sleep(0.5)
            assert proc_cpu_ticks(busy.pid) == before, "a stopped process runs"
        after = proc_cpu_ticks(busy.pid)
        time.sleep(0.5)
        assert proc_cpu_ticks(busy.pid) > after, "the process did not resume"
    finally:
        busy.kill()
        busy.wait()


# -- the unary driver ------------------------------------------------------------------------------------


def test_unary_config_validation_and_error_text() -> None:
    with pytest.raises(ValueError, match="op must be one of"):
        UnaryConfig(op="delete")
    with pytest.raises(ValueError):
        UnaryConfig(concurrency=0)
    with pytest.raises(ValueError):
        UnaryConfig(timeout=0)
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
    )
    assert describe(error) == "UNAVAILABLE: gone" and describe(Refused("no")) == "no"


def test_closed_loop_counts_served_answers_and_errors_apart() -> None:
    """A served exception is an answered request; a failure is an error, its first text kept; the
    worker goes on after either."""
    calls: list[str] = []

    async def op(key: str) -> None:
        calls.append(key)
        await asyncio.sleep(0.001)
        if len(calls) % 3 == 1:
            raise NotFound("absent")
        if len(calls) % 3 == 2:
            raise Refused(f"refused {len(calls)}")

    r = asyncio.run(
        closed_loop(
            "probe", op, concurrency=2, duration=0.3, warmup=0.05, keys=5, value_size=16,
            failures=(Refused,), served=(NotFound,), describe=lambda e: f"said {e}",
        )
    )  # fmt: skip
    assert r.workload == "probe" and r.keys == 5 and set(calls) <= {f"bench/{i:08d}" for i in range(5)}
    assert 0 < r.errors < r.ops, "NotFound answers count as served operations, Refused ones as errors"
    assert r.first_error is not None and re.fullmatch(r"said refused \d+", r.first_error)


def test_unary_driver_against_the_unary_floor() -> None:
    """Every op of the driver, one channel to bench/floor.py's unary server in its own process: it
    completes with answers and no errors (its speed is make bench's business)."""
    floor = floor_module()
    assert floor.parse_modes("relay, unary") == ["relay", "unary"]
    with floor.unary_server() as server:
        for op in OPS:
            cfg = UnaryConfig(op, concurrency=4, duration=0.25, warmup=0.05, keys=20)
            r = asyncio.run(run_unary(server.address, cfg, seed=1))
            assert (r.workload, r.ops > 0, r.errors, r.first_error) == (op, True, 0, None)


@pytest.mark.parametrize(
    ("seconds", "elections", "errors", "verdict"),
    [(8.0, 0, 0, "met"), (8.0, 1, 0, "**missed**"), (40.0, 0, 0, "**missed**"), (8.0, 0, 2, "**missed**")],
)
def test_the_large_value_row_holds_the_burst_to_the_sqlite_floor_with_no_election(
    seconds: float, elections: int, errors: int, verdict: str
) -> None:
    """80 puts in 8 s is 10/s, 0.5x a floor of 20/s; in 40 s, 0.1x."""
    run = LargeRun(80, 16, seconds, errors, "boom" if errors else None, elections, 20.0)
    row = _rows(render_report(Report(large=run)))["1 MiB puts, 80 MiB from 16 clients"]
    assert row[0] == f"{80 / seconds:.1f} puts/s"
    assert row[-1] == f">= 0.25x the sqlite floor, no election: {verdict}"
    assert f"{elections} election(s)" in row[-2]


def test_the_sqlite_floor_measures_and_cleans_up(tmp_path: Path) -> None:
    assert sqlite_floor(tmp_path / "floor", inserts=2) > 0
    assert not (tmp_path / "floor").exists()
