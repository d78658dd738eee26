"""`make bench` (python -m raftctl.benchmark): the issue's figures from a fresh local 3-node cluster.

Starts three real `python -m raftd` processes with default settings on free 127.0.0.1 ports, data dirs in
a temporary directory, and measures, in this order:

0. the relay floor, before any node starts (bench/floor.py, loaded from this checkout): the median of a
   single write's gRPC and fsync shape with no Raft;
1. writes and linearizable reads at concurrency 1, 16, 64, 256 (`raftctl bench` in-process);
1b. one unary call per operation, as clients other than raftctl make them (raftctl/unary_load.py: one
   channel to one node, no retries, no leader following): KV Put to the leader at 1 and 64 clients,
   linearizable KV Get, RaftService SetVal and GetVal to the leader at 64, KV Put and Get to a follower at
   64 (it forwards the writes and asks the leader for the read index); each row at 64 with its ratio to
   the unary floor of its kind (a write's or a read's), the issue's target being at least 0.7x. The
   unary floor is one grpc.aio process serving KV's Put and Get from a dict (bench/floor.py), loaded by
   the same driver. Each row at 64 runs in BENCH_UNARY_ROUNDS rounds, each a floor run right before a
   run of the row: the machine's speed drifts by a third over minutes here, which a floor measured once
   at the start put into every ratio. While the floor runs the nodes are stopped (SIGSTOP), and while
   raftd runs the floor's process is, so that nothing else takes CPU either way. The row shows its
   median round, and the median of the rounds' ratios;
2. failover: under a steady write load, SIGKILL the leader; the window runs from the kill to the first
   acknowledged write *issued after* the kill (a write issued after the kill cannot be answered by the dead
   leader, so the figure never flatters: it is high by at most one write's latency); then restart the
   node, wait for it to catch up, and repeat;
3. idle CPU per node (utime+stime from /proc/PID/stat over a quiet interval, % of one core);
4. memory per node (VmRSS from /proc/PID/status) before and after loading many keys of 16-byte values
   through the async client;
5. large values: BENCH_LARGE_MIB puts of 1 MiB values from BENCH_LARGE_CLIENTS clients, against the rate
   at which three sqlite databases on the same disk take fsynced 1 MiB inserts (measured just before),
   and the elections the burst caused (the cluster's term before and after).

Prints the machine facts and one markdown table on stdout, each figure with its target where the issues
set one (the single-client write's is its p50 within 1.4x the relay floor's: reported, it blocks nothing);
progress goes to stderr. Every node is killed at the end, also on Ctrl-C, SIGTERM or an exception.
Environment knobs (defaults in brackets): BENCH_SECONDS [5] and BENCH_WARMUP [1] per run (the floors'
too), BENCH_CONCURRENCY [1,16,64,256], BENCH_KEYS [1000], BENCH_VALUE_SIZE [16], BENCH_UNARY [1; 0 skips
the unary rows and the unary floor], BENCH_UNARY_ROUNDS [3], BENCH_FLOOR [1; 0 skips the floors, and
so the ratios to them],
BENCH_FAILOVER_TRIALS [10], BENCH_FAILOVER_WRITERS [4], BENCH_IDLE_SECONDS [10], BENCH_LOAD_KEYS
[1000000; 0 skips the load], BENCH_LOAD_CONCURRENCY [256], BENCH_LARGE_MIB [80; 0 skips the large
values], BENCH_LARGE_CLIENTS [16], BENCH_KEEP_DIR [0].
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from raftd.grpcenv import POLL_ENGINE

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
os.environ.setdefault("GRPC_EXPERIMENTS", POLL_ENGINE)  # raftd/grpcenv.py

import grpc

from raftctl.aio import AsyncClient
from raftctl.bench import BenchConfig, BenchResult, fill, fmt_ms, make_value, run_bench
from raftctl.client import Client, ClientError
from raftctl.unary_load import UnaryConfig, run_unary
from raftd.launcher import LocalCluster
from raftd.pb import kv_pb2, kv_pb2_grpc

START_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 60.0
FAILOVER_TIMEOUT_S = 30.0
STEADY_BEFORE_KILL_S = 1.0
SETTLE_BEFORE_IDLE_S = 2.0
POLL_S = 0.005
FLOOR_PY = Path(__file__).resolve().parent.parent / "bench" / "floor.py"

UNARY_CLIENTS = 64
# (op, the node it goes to, clients), in the order measured.
UNARY_PLAN: tuple[tuple[str, str, int], ...] = (
    ("put", "leader", 1),
    ("put", "leader", UNARY_CLIENTS),
    ("get", "leader", UNARY_CLIENTS),
    ("setval", "leader", UNARY_CLIENTS),
    ("getval", "leader", UNARY_CLIENTS),
    ("put", "follower", UNARY_CLIENTS),
    ("get", "follower", UNARY_CLIENTS),
)
UNARY_NAMES = {
    "put": "KV Put",
    "get": "linearizable KV Get",
    "setval": "RaftService SetVal",
    "getval": "RaftService GetVal",
}
# The floor a unary row is held to: a write's (a Put on the dict) or a read's. The floor serves SetVal
# and GetVal too, but the protobuf cost of either is a Put's or a Get's, and each floor run costs time.
FLOOR_OF = {"put": "put", "get": "get", "setval": "put", "getval": "get"}
FLOOR_NAMES = {"put": "KV Put", "get": "KV Get"}

# Targets (README, Performance). The unary and relay ones are ratios to a floor measured in the same run.
UNARY_FLOOR_TARGET = 0.7  # a unary row at UNARY_CLIENTS clients reaches this fraction of its floor's ops/s
RELAY_TARGET = 1.4  # the single-client write's p50 over the relay floor's p50, at most
RUN_TARGETS = {("write", 64): 5_000, ("read", 64): 10_000}  # ops/s, at least
FAILOVER_MEDIAN_TARGET_MS = 400
FAILOVER_MAX_TARGET_MS = 1_000
IDLE_CPU_TARGET_PERCENT = 2.0
MEMORY_TARGET_MB = 150
MEMORY_TARGET_KEYS = 1_000_000  # the memory target holds for this many keys; fewer say nothing of it
LARGE_TARGET = 0.25  # 1 MiB puts commit at this fraction of three sqlite databases' fsynced inserts
MIB = 1024 * 1024

T = TypeVar("T")


# -- pure helpers (unit-tested) ---------------------------------------------------------------------


def parse_proc_stat(text: str) -> int:
    """utime + stime, in clock ticks, from the text of /proc/PID/stat.

    The command name (field 2) is in parentheses and may hold spaces or ')', so fields are counted from
    the last ')'; utime and stime are fields 14 and 15.
    """
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def parse_vmrss_kib(text: str) -> int:
    """VmRSS in KiB from the text of /proc/PID/status."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (is the process a zombie?)")


def parse_cpu_model(text: str) -> str:
    """The first 'model name' of /proc/cpuinfo (or 'unknown', e.g. on some ARM kernels)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return "unknown"


def parse_mem_total_kib(text: str) -> int:
    """MemTotal in KiB from /proc/meminfo."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise ValueError("no MemTotal line")


def cpu_percent(ticks: int, clock_ticks_per_s: int, seconds: float) -> float:
    """CPU time as a percentage of one core over a wall-clock interval."""
    return 100.0 * ticks / clock_ticks_per_s / seconds


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table, columns padded so that it also reads well as plain text."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    return int(raw) if raw else default


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    return float(raw) if raw else default


def env_ints(env: Mapping[str, str], name: str, default: Sequence[int]) -> list[int]:
    raw = env.get(name, "").strip()
    return [int(x) for x in raw.split(",") if x.strip()] if raw else list(default)


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Unset or empty: the default; "0": off; anything else: on."""
    raw = env.get(name, "").strip()
    return raw != "0" if raw else default


@dataclass(frozen=True)
class Settings:
    seconds: float = 5.0
    warmup: float = 1.0
    concurrency: tuple[int, ...] = (1, 16, 64, 256)
    keys: int = 1000
    value_size: int = 16
    unary: bool = True
    unary_rounds: int = 3
    floor: bool = True
    failover_trials: int = 10
    failover_writers: int = 4
    idle_seconds: float = 10.0
    load_keys: int = 1_000_000
    load_concurrency: int = 256
    large_mib: int = 80
    large_clients: int = 16
    keep_dir: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        d = cls()
        return cls(
            seconds=env_float(env, "BENCH_SECONDS", d.seconds),
            warmup=env_float(env, "BENCH_WARMUP", d.warmup),
            concurrency=tuple(env_ints(env, "BENCH_CONCURRENCY", d.concurrency)),
            keys=env_int(env, "BENCH_KEYS", d.keys),
            value_size=env_int(env, "BENCH_VALUE_SIZE", d.value_size),
            unary=env_bool(env, "BENCH_UNARY", d.unary),
            unary_rounds=max(1, env_int(env, "BENCH_UNARY_ROUNDS", d.unary_rounds)),
            floor=env_bool(env, "BENCH_FLOOR", d.floor),
            failover_trials=env_int(env, "BENCH_FAILOVER_TRIALS", d.failover_trials),
            failover_writers=env_int(env, "BENCH_FAILOVER_WRITERS", d.failover_writers),
            idle_seconds=env_float(env, "BENCH_IDLE_SECONDS", d.idle_seconds),
            load_keys=env_int(env, "BENCH_LOAD_KEYS", d.load_keys),
            load_concurrency=env_int(env, "BENCH_LOAD_CONCURRENCY", d.load_concurrency),
            large_mib=env_int(env, "BENCH_LARGE_MIB", d.large_mib),
            large_clients=env_int(env, "BENCH_LARGE_CLIENTS", d.large_clients),
            keep_dir=env_bool(env, "BENCH_KEEP_DIR", d.keep_dir),
        )


@dataclass(frozen=True)
class UnaryRun:
    node: str  # "leader" or "follower": where every call of the run went
    result: BenchResult  # the run of the median round, or the only run
    ratios: tuple[float, ...] = ()  # each round's ops/s over its floor run's, in the order run


@dataclass(frozen=True)
class LargeRun:
    """A burst of 1 MiB puts and its reference: sqlite's fsynced 1 MiB inserts into three databases."""

    puts: int
    clients: int
    seconds: float
    errors: int
    first_error: str | None
    elections: int  # the rise of the cluster's highest term over the burst
    sqlite_per_s: float  # 1 MiB inserts per second into each of three databases, round robin


@dataclass
class Report:
    """Everything measured; rendered once at the end."""

    facts: dict[str, str] = field(default_factory=dict)
    runs: list[BenchResult] = field(default_factory=list)
    relay_p50_ms: float | None = None  # bench/floor.py's relay: the floor under a single-client write
    unary_floors: dict[str, list[BenchResult]] = field(default_factory=dict)  # every run, by op
    unary: list[UnaryRun] = field(default_factory=list)
    failover_ms: list[float] = field(default_factory=list)
    election_ms: list[float] = field(default_factory=list)  # kill -> a survivor names a new leader
    failover_errors: int = 0
    failover_first_error: str | None = None
    failover_writers: int = 0
    idle_cpu: dict[int, float] = field(default_factory=dict)
    rss_before_kib: dict[int, int] = field(default_factory=dict)
    rss_after_kib: dict[int, int] = field(default_factory=dict)
    load_keys: int = 0
    load_seconds: float | None = None
    load_concurrency: int = 0
    large: LargeRun | None = None


def target_cell(target: str, met: bool | None) -> str:
    """A target and whether the run met it, in the README's words; None: not measured in this run."""
    if met is None:
        return f"{target}: not measured"
    return f"{target}: {'met' if met else '**missed**'}"


def times(ratio: float) -> str:
    """A measured ratio to a floor, as the notes print it."""
    return f"{ratio:.2f}x"


def _clients(n: int) -> str:
    return f"{n} client{'s' if n != 1 else ''}"


def _figures(r: BenchResult) -> list[str]:
    """The result, p50, p95, p99, max and errors cells of a closed-loop run."""
    latencies = [fmt_ms(ms) for ms in (r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms)]
    return [f"{r.ops_per_s:,.0f} ops/s", *latencies, str(r.errors)]


def _run_row(r: BenchResult, relay_p50_ms: float | None) -> list[str]:
    name = {"write": "write", "read": "linearizable read", "local-read": "local read"}[r.workload]
    notes = f"client CPU {r.client_cpu_percent:.0f}%"
    target = ""
    if (r.workload, r.concurrency) in RUN_TARGETS:
        least = RUN_TARGETS[r.workload, r.concurrency]
        target = target_cell(f">= {least:,} ops/s", r.ops_per_s >= least)
    elif (r.workload, r.concurrency) == ("write", 1):
        ratio = r.p50_ms / relay_p50_ms if relay_p50_ms else None
        if ratio is not None:
            notes += f"; p50 {times(ratio)} the relay floor's"
        target = target_cell(
            f"p50 <= {RELAY_TARGET:g}x the relay floor's",
            None if ratio is None else ratio <= RELAY_TARGET,
        )
    return [f"{name}, {_clients(r.concurrency)}", *_figures(r), notes, target]


def median_run(runs: Sequence[BenchResult]) -> BenchResult:
    """The run whose ops/s is the median (the lower middle one of an even count)."""
    return runs[_median_index([r.ops_per_s for r in runs])]


def _median_index(values: Sequence[float]) -> int:
    """Where the median value is (the lower middle one of an even count, as statistics.median_low)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(values) - 1) // 2]


def _unary_row(run: UnaryRun) -> list[str]:
    r = run.result
    notes = f"client CPU {r.client_cpu_percent:.0f}%"
    target = ""
    if r.concurrency == UNARY_CLIENTS:
        ratio = statistics.median_low(run.ratios) if run.ratios else None
        if ratio is not None:
            notes += f"; {times(ratio)} the {FLOOR_NAMES[FLOOR_OF[r.workload]]} floor"
            if len(run.ratios) > 1:
                notes += f" (median of {len(run.ratios)} rounds: {', '.join(times(x) for x in run.ratios)})"
        target = target_cell(
            f">= {UNARY_FLOOR_TARGET:g}x the floor",
            None if ratio is None else ratio >= UNARY_FLOOR_TARGET,
        )
    if r.first_error:
        notes += f"; first error: {r.first_error}"
    name = f"unary {UNARY_NAMES[r.workload]} to the {run.node}, {_clients(r.concurrency)}"
    return [name, *_figures(r), notes, target]


def render_report(report: Report) -> str:
    """Machine facts as a list, then the one table with every figure."""
    lines = [f"- {k}: {v}" for k, v in report.facts.items()]
    headers = ["measurement", "result", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors", "notes", "target"]
    rows = [_run_row(r, report.relay_p50_ms) for r in report.runs]
    if report.relay_p50_ms is not None:
        p50 = report.relay_p50_ms
        note = "bench/floor.py relay: a write's gRPC streams and fsyncs over 3 processes, no Raft"
        rows.append(["relay floor, 1 client", f"p50 {p50:.2f} ms", fmt_ms(p50), "-", "-", "-", "-", note, ""])
    for op, runs in report.unary_floors.items():
        r = median_run(runs)
        note = f"client CPU {r.client_cpu_percent:.0f}%; bench/floor.py unary: one grpc.aio process, a dict"
        if len(runs) > 1:
            low, high = min(x.ops_per_s for x in runs), max(x.ops_per_s for x in runs)
            note += f"; the median of {len(runs)} runs ({low:,.0f} - {high:,.0f} ops/s), the nodes stopped"
        rows.append([f"unary floor, {FLOOR_NAMES[op]}, {_clients(r.concurrency)}", *_figures(r), note, ""])
    rows += [_unary_row(run) for run in report.unary]
    if report.failover_ms:
        ms = report.failover_ms
        median = statistics.median(ms)
        rows.append(
            [
                f"failover window, {len(ms)} trials",
                f"median {median:.0f} ms",
                fmt_ms(median),
                "-",
                "-",
                fmt_ms(max(ms)),
                str(report.failover_errors),
                f"SIGKILL leader under {report.failover_writers} writers; kill -> first ack of a later write"
                + (
                    f"; new leader named after median {statistics.median(report.election_ms):.0f} ms"
                    f" (max {max(report.election_ms):.0f})"
                    if report.election_ms
                    else ""
                ),
                target_cell(
                    f"median <= {FAILOVER_MEDIAN_TARGET_MS} ms, max <= {FAILOVER_MAX_TARGET_MS:,} ms",
                    median <= FAILOVER_MEDIAN_TARGET_MS and max(ms) <= FAILOVER_MAX_TARGET_MS,
                ),
            ]
        )
    for node, pct in sorted(report.idle_cpu.items()):
        target = target_cell(f"< {IDLE_CPU_TARGET_PERCENT:g}%", pct < IDLE_CPU_TARGET_PERCENT)
        rows.append([f"idle CPU, node {node}", f"{pct:.2f}% of a core", "-", "-", "-", "-", "-", "", target])
    if report.load_seconds is not None:
        rate = report.load_keys / report.load_seconds if report.load_seconds > 0 else 0.0
        rows.append(
            [
                f"load {report.load_keys:,} keys",
                f"{report.load_seconds:.1f} s",
                "-",
                "-",
                "-",
                "-",
                "0",
                f"{rate:,.0f} writes/s at {report.load_concurrency} clients",
                "",
            ]
        )
    for node in sorted(report.rss_before_kib):
        after = report.rss_after_kib.get(node)
        before_mb = report.rss_before_kib[node] / 1024
        target = ""
        if after is not None:
            result = f"{after / 1024:.0f} MB RSS"
            note = f"with {report.load_keys:,} keys; {before_mb:.0f} MB before the load"
            if report.load_keys >= MEMORY_TARGET_KEYS:
                target = target_cell(f"< {MEMORY_TARGET_MB} MB", after / 1024 < MEMORY_TARGET_MB)
        else:
            result = f"{before_mb:.0f} MB RSS"
            note = "key load skipped"
        rows.append([f"memory, node {node}", result, "-", "-", "-", "-", "-", note, target])
    if report.large is not None:
        rows.append(_large_row(report.large))
    return "\n".join([*lines, "", markdown_table(headers, rows)])


def _large_row(run: LargeRun) -> list[str]:
    rate = run.puts / run.seconds if run.seconds > 0 else 0.0
    ratio = rate / run.sqlite_per_s if run.sqlite_per_s > 0 else 0.0
    notes = (
        f"{times(ratio)} the sqlite floor ({run.sqlite_per_s:.1f} fsynced 1 MiB inserts/s into each of 3 "
        f"databases); {run.elections} election(s) during the burst"
    )
    if run.first_error:
        notes += f"; first error: {run.first_error}"
    target = target_cell(
        f">= {LARGE_TARGET:g}x the sqlite floor, no election",
        ratio >= LARGE_TARGET and run.elections == 0 and run.errors == 0,
    )
    name = f"1 MiB puts, {run.puts} MiB from {_clients(run.clients)}"
    return [name, f"{rate:.1f} puts/s", "-", "-", "-", "-", str(run.errors), notes, target]


# -- the machine ------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_facts() -> dict[str, str]:
    mem = _read("/proc/meminfo")
    facts = {
        "CPU": parse_cpu_model(_read("/proc/cpuinfo")),
        "cores": str(os.cpu_count()),
        "RAM": f"{parse_mem_total_kib(mem) / 1024 / 1024:.1f} GiB" if mem else "unknown",
        "Python": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    if rev:
        facts["revision"] = rev
    return facts


def python_loop_seconds(additions: int = 10_000_000) -> float:
    """A fixed pure-Python loop's duration: the virtual machines this runs on change speed from hour to
    hour, so two runs' figures compare only with this beside them."""
    start = time.perf_counter()
    total = 0
    for i in range(additions):
        total += i
    return time.perf_counter() - start


def proc_cpu_ticks(pid: int) -> int:
    return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())


def proc_rss_kib(pid: int) -> int:
    return parse_vmrss_kib(Path(f"/proc/{pid}/status").read_text())


# -- the cluster ------------------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], T | None], timeout: float, poll: float = 0.05) -> T:
    """Poll check() until it returns something not None; RuntimeError naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
        except ClientError as e:
            result, last = None, e
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})")
        time.sleep(poll)


class BenchCluster(LocalCluster):
    """n `python -m raftd` processes with default settings (raftd.launcher), output in per-node files under
    root, and an admin client to watch them with."""

    def __init__(self, root: Path, n: int = 3) -> None:
        super().__init__(root, n)
        self.admin = Client(self.endpoints, timeout=2.0)

    def close(self) -> None:
        """Kill every node; safe to call more than once."""
        super().close()
        self.admin.close()

    def pid(self, i: int) -> int:
        return self.procs[i].pid

    def check_alive(self) -> None:
        for i, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"node {i} exited with {proc.returncode}; see {self.err_path(i)}")

    def agreed_leader(self) -> int | None:
        """The leader's node id when every node answers and names the same one, else None."""
        self.check_alive()
        rows = self.admin.status_all()
        leaders = {r.leader_id for r in rows}
        if not all(r.reachable for r in rows) or len(leaders) != 1 or None in leaders:
            return None
        return leaders.pop()

    def wait_leader(self, timeout: float = START_TIMEOUT_S) -> int:
        return wait_for("every node to name one leader", self.agreed_leader, timeout)

    def wait_caught_up(self, i: int, timeout: float = CATCH_UP_TIMEOUT_S) -> None:
        """Until node i has applied everything the leader had committed when we started waiting."""
        leader = self.wait_leader(timeout)
        target = self.admin.status(self.address(leader)).commit_index or 0

        def caught_up() -> bool | None:
            self.check_alive()
            row = self.admin.status(self.address(i))
            return True if row.reachable and (row.applied_index or 0) >= target else None

        wait_for(f"node {i} to apply index {target}", caught_up, timeout)


# -- the measurements -------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def _throughput(cluster: BenchCluster, s: Settings, report: Report) -> None:
    async with AsyncClient(cluster.endpoints) as client:
        for workload in ("write", "read"):
            for c in s.concurrency:
                cfg = BenchConfig(workload, c, s.seconds, s.value_size, s.keys, s.warmup)
                r = await run_bench(client, cfg)
                log(
                    f"{workload} c={c}: {r.ops_per_s:,.0f} ops/s, p50 {r.p50_ms:.2f} ms, "
                    f"p99 {r.p99_ms:.2f} ms, {r.errors} errors"
                )
                report.runs.append(r)
                cluster.check_alive()


def floor_module() -> ModuleType:
    """bench/floor.py of this checkout, a program rather than a package module: loaded by its path."""
    spec = importlib.util.spec_from_file_location("raftd_bench_floor", FLOOR_PY)
    if not FLOOR_PY.exists() or spec is None or spec.loader is None:
        raise RuntimeError(f"no {FLOOR_PY} to measure the floors with (BENCH_FLOOR=0 runs without them)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _floors(s: Settings, report: Report) -> None:
    """The relay floor, measured before any node starts, so that nothing else shares the cores meanwhile."""
    report.relay_p50_ms = floor_module().floor_relay_p50(s.seconds)
    log(f"relay floor: p50 {report.relay_p50_ms:.2f} ms")


@contextlib.contextmanager
def stopped(pids: Sequence[int]) -> Iterator[None]:
    """The processes stopped (SIGSTOP) meanwhile: idle ones still wake for timers and heartbeats."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def _unary(cluster: BenchCluster, s: Settings, report: Report) -> None:
    """UNARY_PLAN: each run's calls all go to one node, as from a client that follows no leader. A row at
    UNARY_CLIENTS runs in rounds, each after a floor run of its kind (module docstring, 1b)."""
    floor = floor_module() if s.floor else None
    with floor.unary_server() if floor is not None else contextlib.nullcontext() as server:
        for op, node, clients in UNARY_PLAN:
            paired = server is not None and clients == UNARY_CLIENTS
            runs: list[BenchResult] = []
            measured: list[tuple[float, BenchResult]] = []  # (ratio to its floor run, run)
            for _ in range(s.unary_rounds if paired else 1):
                f = None
                if server is not None and paired:
                    f = await _unary_floor_run(server.address, cluster, FLOOR_OF[op], s)
                    report.unary_floors.setdefault(FLOOR_OF[op], []).append(f)
                leader = await asyncio.to_thread(cluster.wait_leader)
                target = leader if node == "leader" else (leader + 1) % cluster.n
                cfg = UnaryConfig(op, clients, s.seconds, s.warmup, s.keys, s.value_size)
                with stopped([server.pid] if server is not None else []):
                    r = await run_unary(cluster.address(target), cfg)
                log(
                    f"unary {op} to the {node} c={clients}: {r.ops_per_s:,.0f} ops/s, p50 {r.p50_ms:.2f} ms, "
                    f"{r.errors} errors" + (f" (first: {r.first_error})" if r.first_error else "")
                )
                runs.append(r)
                if f is not None and f.ops_per_s:  # a floor run with no answer gives no ratio
                    measured.append((r.ops_per_s / f.ops_per_s, r))
                cluster.check_alive()
            ratios = tuple(ratio for ratio, _ in measured)
            middle = measured[_median_index(ratios)][1] if measured else median_run(runs)
            report.unary.append(UnaryRun(node, middle, ratios))


async def _unary_floor_run(address: str, cluster: BenchCluster, op: str, s: Settings) -> BenchResult:
    cfg = UnaryConfig(op, UNARY_CLIENTS, s.seconds, s.warmup, s.keys, s.value_size)
    with stopped([cluster.pid(i) for i in range(cluster.n)]):
        r = await run_unary(address, cfg)
    figures = f"{r.ops_per_s:,.0f} ops/s, p50 {r.p50_ms:.2f} ms, {r.errors} errors"
    log(f"unary floor {op} c={UNARY_CLIENTS}: {figures}")
    return r


def _first_ack_after(acks: list[tuple[float, float]], start: int, issued_after: float) -> float | None:
    """The ack time of the first write at or after position start that was issued at/after issued_after."""
    for issued, acked in acks[start:]:
        if issued >= issued_after:
            return acked
    return None


async def _new_leader_named(cluster: BenchCluster, killed: int) -> float:
    """When a surviving node first names a leader other than the killed one: the server's part of the
    window, apart from the client's retry backoff."""
    channels = [grpc.aio.insecure_channel(cluster.address(i)) for i in range(cluster.n) if i != killed]
    stubs = [kv_pb2_grpc.AdminStub(ch) for ch in channels]
    try:
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S
        while time.monotonic() < deadline:
            for stub in stubs:
                with contextlib.suppress(grpc.RpcError):
                    r = await stub.GetLeader(kv_pb2.GetLeaderRequest(), timeout=0.5)
                    if r.leader_id not in (-1, killed):
                        return time.monotonic()
            await asyncio.sleep(POLL_S)
        raise RuntimeError(f"no new leader named within {FAILOVER_TIMEOUT_S:.0f}s of a kill")
    finally:
        for ch in channels:
            await ch.close(grace=None)


async def _failover(cluster: BenchCluster, s: Settings, report: Report) -> None:
    """Steady writers plus a loop of kill leader / wait for a new write's ack / restart / catch up."""
    value = make_value(s.value_size)
    acks: list[tuple[float, float]] = []  # (issued, acknowledged), monotonic
    stop = asyncio.Event()
    report.failover_writers = s.failover_writers

    async def writer(client: AsyncClient, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.monotonic()
            try:
                await client.put(f"failover/{n}/{i % 100}", value)
            except ClientError as e:
                report.failover_errors += 1
                report.failover_first_error = report.failover_first_error or str(e)
                continue
            acks.append((t0, time.monotonic()))

    async with AsyncClient(cluster.endpoints) as client:
        tasks = [asyncio.create_task(writer(client, n)) for n in range(s.failover_writers)]
        try:
            for trial in range(1, s.failover_trials + 1):
                leader = await asyncio.to_thread(cluster.wait_leader)
                await asyncio.sleep(min(STEADY_BEFORE_KILL_S, s.seconds))
                mark = len(acks)
                t_kill = time.monotonic()
                cluster.procs[leader].kill()
                issued_after = time.monotonic()
                election = asyncio.create_task(_new_leader_named(cluster, leader))
                await asyncio.to_thread(cluster.procs[leader].wait)
                # acks are appended in the order they arrive: the first match is the earliest.
                while (first := _first_ack_after(acks, mark, issued_after)) is None:
                    if time.monotonic() > t_kill + FAILOVER_TIMEOUT_S:
                        raise RuntimeError(
                            f"no write acknowledged within {FAILOVER_TIMEOUT_S:.0f}s of a kill"
                        )
                    await asyncio.sleep(POLL_S)
                window_ms = (first - t_kill) * 1000
                report.election_ms.append((await election - t_kill) * 1000)
                report.failover_ms.append(window_ms)
                log(
                    f"failover trial {trial}: killed node {leader}, window {window_ms:.0f} ms, "
                    f"new leader named after {report.election_ms[-1]:.0f} ms"
                )
                cluster.start(leader)
                await asyncio.to_thread(cluster.wait_caught_up, leader)
                del acks[:]
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


def _idle_cpu(cluster: BenchCluster, s: Settings, report: Report) -> None:
    time.sleep(min(SETTLE_BEFORE_IDLE_S, s.idle_seconds))
    hz = os.sysconf("SC_CLK_TCK")
    before = {i: proc_cpu_ticks(cluster.pid(i)) for i in range(cluster.n)}
    t0 = time.monotonic()
    time.sleep(s.idle_seconds)
    elapsed = time.monotonic() - t0
    for i in range(cluster.n):
        report.idle_cpu[i] = cpu_percent(proc_cpu_ticks(cluster.pid(i)) - before[i], hz, elapsed)
    log("idle CPU: " + ", ".join(f"node {i} {p:.2f}%" for i, p in report.idle_cpu.items()))


async def _load(cluster: BenchCluster, s: Settings, report: Report) -> None:
    """Write s.load_keys distinct keys from s.load_concurrency workers, reporting progress every 10%."""
    value = make_value(16)
    report.load_keys, report.load_concurrency = s.load_keys, s.load_concurrency
    step = max(1, s.load_keys // 10)
    t0 = time.monotonic()
    async with AsyncClient(cluster.endpoints, timeout=30.0) as client:
        for start in range(0, s.load_keys, step):
            keys = range(start, min(start + step, s.load_keys))
            await fill(lambda key: client.put(key, value), keys, s.load_concurrency)
            done = min(start + step, s.load_keys)
            log(f"loaded {done:,} keys in {time.monotonic() - t0:.0f} s")
            cluster.check_alive()
    report.load_seconds = time.monotonic() - t0


def sqlite_floor(root: Path, inserts: int = 20) -> float:
    """1 MiB inserts per second into each of three sqlite databases on root's disk, fsynced as raftd
    commits (WAL, synchronous=FULL): what three nodes' disks do with no Raft and no gRPC."""
    root.mkdir(parents=True, exist_ok=True)
    value = os.urandom(MIB)
    conns = []
    try:
        for i in range(3):
            conn = sqlite3.connect(root / f"floor-{i}.db", isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            conns.append(conn)
        t0 = time.perf_counter()
        for k in range(inserts):
            for conn in conns:
                conn.execute("INSERT INTO t VALUES (?, ?)", (k, value))
        return inserts / (time.perf_counter() - t0)
    finally:
        for conn in conns:
            conn.close()
        shutil.rmtree(root, ignore_errors=True)


async def _large(cluster: BenchCluster, s: Settings, report: Report) -> None:
    floor = sqlite_floor(cluster.root / "sqlite-floor")
    value = "v" * MIB
    terms = [r.term or 0 for r in cluster.admin.status_all()]
    errors: list[str] = []
    async with AsyncClient(cluster.endpoints, timeout=60.0) as client:
        await client.put("large-warmup", "x")
        t0 = time.monotonic()

        async def put(key: str) -> None:
            try:
                await client.put(f"large-{key}", value)
            except ClientError as e:
                errors.append(str(e))

        await fill(put, range(s.large_mib), s.large_clients)
        seconds = time.monotonic() - t0
    after = [r.term or 0 for r in cluster.admin.status_all()]
    report.large = LargeRun(
        s.large_mib,
        s.large_clients,
        seconds,
        len(errors),
        errors[0] if errors else None,
        max(after) - max(terms),
        floor,
    )
    log(f"large values: {s.large_mib / seconds:.1f} puts/s, sqlite floor {floor:.1f}/s, {len(errors)} errors")


def run(s: Settings, root: Path, report: Report) -> None:
    if s.floor:
        _floors(s, report)
    cluster = BenchCluster(root)
    try:
        for i in range(cluster.n):
            cluster.start(i)
        leader = cluster.wait_leader()
        log(f"cluster up in {root}: {', '.join(cluster.endpoints)}; leader node {leader}")
        asyncio.run(_throughput(cluster, s, report))
        if s.unary:
            asyncio.run(_unary(cluster, s, report))
        if s.failover_trials > 0:
            asyncio.run(_failover(cluster, s, report))
        for i in range(cluster.n):
            cluster.wait_caught_up(i)
        _idle_cpu(cluster, s, report)
        report.rss_before_kib = {i: proc_rss_kib(cluster.pid(i)) for i in range(cluster.n)}
        if s.load_keys > 0:
            asyncio.run(_load(cluster, s, report))
            for i in range(cluster.n):
                cluster.wait_caught_up(i, timeout=300)
            report.rss_after_kib = {i: proc_rss_kib(cluster.pid(i)) for i in range(cluster.n)}
        if s.large_mib > 0:
            asyncio.run(_large(cluster, s, report))
    finally:
        cluster.close()


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: the nodes get killed


def main() -> int:
    s = Settings.from_env(os.environ)
    signal.signal(signal.SIGTERM, _sigterm)
    report = Report(facts=machine_facts())
    before = python_loop_seconds()
    root = Path(tempfile.mkdtemp(prefix="raftd-bench-"))
    ok = False
    try:
        run(s, root, report)
        ok = True
        after = python_loop_seconds()
        report.facts["speed"] = (
            f"a 10M-addition Python loop took {before:.2f} s before the run, {after:.2f} s after"
        )
    except KeyboardInterrupt:
        log(f"interrupted; every node killed; node logs kept in {root}")
        return 130
    except Exception as e:
        log(f"failed: {type(e).__name__}: {e}; node logs kept in {root}")
        return 1
    finally:
        if ok and not s.keep_dir:
            shutil.rmtree(root, ignore_errors=True)
    print(render_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
