"""`raftctl bench`: closed-loop load from C concurrent asyncio workers through one AsyncClient.

Each worker issues one request, awaits its answer (a write is answered only once committed and applied),
and issues the next, so throughput and latency are what C synchronous users of the library would see.
Only operations that start after the warmup and finish before the end count; an error is an operation
that failed after the client's own retries (its --timeout), and the worker carries on.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from raftctl.aio import AsyncClient
from raftctl.client import ClientError, NotFound

WORKLOADS = ("write", "read", "local-read")
PREFILL_CONCURRENCY = 64


@dataclass(frozen=True)
class BenchConfig:
    workload: str = "write"
    concurrency: int = 16
    duration: float = 10.0
    value_size: int = 16
    keys: int = 1000
    warmup: float = 1.0
    prefill: bool = True  # read workloads first write every key once, so that reads find values

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, not {self.workload!r}")
        check_load(self.concurrency, self.keys, self.value_size, self.duration, self.warmup)


def check_load(concurrency: int, keys: int, value_size: int, duration: float, warmup: float) -> None:
    """The shape of any closed-loop load (this module's and raftctl/unary_load.py's)."""
    if concurrency < 1 or keys < 1 or value_size < 0:
        raise ValueError("concurrency and keys must be at least 1, value size at least 0")
    if duration <= 0 or warmup < 0:
        raise ValueError("duration must be positive and warmup not negative")


@dataclass(frozen=True)
class BenchResult:
    workload: str
    concurrency: int
    duration_s: float
    value_size: int
    keys: int
    ops: int
    ops_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: int
    first_error: str | None
    client_cpu_percent: float  # this process's CPU over the run, % of one core: is the client the limit?

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of already sorted values; 0.0 for none."""
    if not sorted_values:
        return 0.0
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, not {p}")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds."""
    ordered = sorted(latencies_s)
    mean = sum(ordered) / len(ordered) if ordered else 0.0
    return {
        "p50_ms": percentile(ordered, 50) * 1000,
        "p95_ms": percentile(ordered, 95) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": (ordered[-1] if ordered else 0.0) * 1000,
        "mean_ms": mean * 1000,
    }


def key_name(i: int) -> str:
    return f"bench/{i:08d}"


def make_value(size: int, seed: int = 0) -> str:
    """An ASCII value of exactly size bytes (values are UTF-8 text)."""
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(size))


def _operation(client: AsyncClient, workload: str, value: str) -> Callable[[str], Awaitable[object]]:
    if workload == "write":
        return lambda key: client.put(key, value)
    linearizable = workload == "read"
    return lambda key: client.get(key, linearizable=linearizable)


async def fill(
    write: Callable[[str], Awaitable[object]], keys: range | Sequence[int], concurrency: int
) -> None:
    """write(key_name(i)) for every i, from `concurrency` workers; raises the first error.

    write is whatever client writes the key (an AsyncClient's put, a unary call), so reads of any kind
    can first find a value under every key.
    """
    it = iter(keys)

    async def worker() -> None:
        for i in it:
            await write(key_name(i))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def closed_loop(
    workload: str,
    op: Callable[[str], Awaitable[object]],
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    keys: int,
    value_size: int,
    failures: tuple[type[Exception], ...],
    served: tuple[type[Exception], ...] = (),
    describe: Callable[[Exception], str] = str,
    seed: int | None = None,
) -> BenchResult:
    """`concurrency` workers each await op(a random key) and issue the next, for warmup + duration seconds.

    The one loop behind `raftctl bench` and the unary load (raftctl/unary_load.py), so that their figures
    compare. Only operations that start after the warmup and finish before the end count. An exception
    in `served` still answered the request (a read of a key not written yet); one in `failures` is an
    error, counted, and the worker carries on; the first error's text is kept, by describe().
    """
    names = [key_name(i) for i in range(keys)]
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    first_error: Exception | None = None

    start = time.perf_counter() + warmup
    end = start + duration
    cpu_start: float | None = None

    async def worker() -> None:
        nonlocal cpu_start, errors, first_error
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            if cpu_start is None and t0 >= start:
                cpu_start = time.process_time()
            try:
                await op(names[rng.randrange(keys)])
            except served:
                pass
            except failures as e:
                if t0 >= start:
                    errors += 1
                    first_error = first_error or e
                continue
            t1 = time.perf_counter()
            if t0 >= start and t1 <= end:
                latencies.append(t1 - t0)

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu_used = time.process_time() - (cpu_start if cpu_start is not None else cpu0)
    summary = latency_summary(latencies)
    return BenchResult(
        workload=workload,
        concurrency=concurrency,
        duration_s=duration,
        value_size=value_size,
        keys=keys,
        ops=len(latencies),
        ops_per_s=len(latencies) / duration,
        errors=errors,
        first_error=describe(first_error) if first_error is not None else None,
        client_cpu_percent=100 * cpu_used / duration,
        **summary,
    )


async def run_bench(client: AsyncClient, cfg: BenchConfig, *, seed: int | None = None) -> BenchResult:
    """Run one workload on an open client and summarise it."""
    value = make_value(cfg.value_size)
    if cfg.workload != "write" and cfg.prefill:
        concurrency = min(cfg.concurrency, PREFILL_CONCURRENCY)
        await fill(lambda key: client.put(key, value), range(cfg.keys), concurrency)
    return await closed_loop(
        cfg.workload,
        _operation(client, cfg.workload, value),
        concurrency=cfg.concurrency,
        duration=cfg.duration,
        warmup=cfg.warmup,
        keys=cfg.keys,
        value_size=cfg.value_size,
        failures=(ClientError,),
        served=(NotFound,),  # a read of a key not written yet is still a served read
        seed=seed,
    )


async def bench(endpoints: list[str], timeout: float, cfg: BenchConfig) -> BenchResult:
    """One workload against a cluster with a client of its own."""
    async with AsyncClient(endpoints, timeout) as client:
        return await run_bench(client, cfg)


# -- output -----------------------------------------------------------------------------------------


def box_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A boxed table like `raftctl status`."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True)) + "|"

    return "\n".join([rule, line(headers), rule, *(line(r) for r in rows), rule])


def fmt_ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def result_table(result: BenchResult) -> str:
    """The text output of `raftctl bench`: one row, then the first error when there was one."""
    headers = ["WORKLOAD", "CONC", "OPS", "OPS/S", "P50 MS", "P95 MS", "P99 MS", "MAX MS", "ERRORS"]
    row = [
        result.workload,
        str(result.concurrency),
        str(result.ops),
        f"{result.ops_per_s:.0f}",
        fmt_ms(result.p50_ms),
        fmt_ms(result.p95_ms),
        fmt_ms(result.p99_ms),
        fmt_ms(result.max_ms),
        str(result.errors),
    ]
    text = box_table(headers, [row])
    if result.first_error:
        text += f"\nfirst error: {result.first_error}"
    return text
