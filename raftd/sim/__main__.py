"""python -m raftd.sim: run seeds, print the replay command of the first failure, exit non-zero on it."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from .checker import Violation
from .cluster import Simulation
from .realnode import RealNodeSim


def replay_command(seed: int, nodes: int, ticks: int, lost_tail: bool = False) -> str:
    extra = " --lost-tail" if lost_tail else ""
    return f"python -m raftd.sim --seed {seed} --nodes {nodes} --ticks {ticks}{extra}"


def run_seed(seed: int, nodes: int, ticks: int, lost_tail: bool = False) -> str | None:
    """None when the seed passes, else a report naming the violation and the replay command."""
    try:
        Simulation(seed, nodes, ticks, lost_tail).run()
    except Violation as v:
        problem = str(v)
    except Exception:
        # An exception inside the core is a bug too (a broken invariant, a contract violation).
        problem = "unexpected exception\n" + traceback.format_exc()
    else:
        return None
    return (
        f"seed {seed} ({nodes} nodes, {ticks} ticks): {problem}\n"
        f"replay: {replay_command(seed, nodes, ticks, lost_tail)}"
    )


def run_real_seed(seed: int, totals: dict[str, int] | None = None) -> str | None:
    """The simulator of the shipped RaftNode (raftd/sim/realnode.py): None when the seed passes. totals, if
    given, gains the seed's counts of faults and outcomes."""
    try:
        stats = RealNodeSim(seed).run()
    except Violation as v:
        problem = str(v)
    except Exception:
        problem = "unexpected exception\n" + traceback.format_exc()
    else:
        if totals is not None:
            for name, count in stats.items():
                totals[name] = totals.get(name, 0) + count
        return None
    # Sets of keys iterate in the hash seed's order: the same hash seed replays the same run.
    hash_seed = os.environ.get("PYTHONHASHSEED")
    replay = f"PYTHONHASHSEED={hash_seed or 0} python -m raftd.sim --real --seed {seed}"
    if not hash_seed:
        replay += " (this run's hash seed was random: the replay may take another path)"
    return f"seed {seed} (the real node): {problem}\nreplay: {replay}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m raftd.sim", description=__doc__)
    ap.add_argument(
        "--seeds", type=int, help="how many seeds to run, from --seed on (default 100, or 1 with --seed)"
    )
    ap.add_argument("--seed", type=int, help="run this one seed (with --seeds, the first of them)")
    ap.add_argument("--nodes", type=int, help="cluster size (default: alternate 3 and 5 by seed)")
    ap.add_argument("--ticks", type=int, default=300, help="ticks of faulty weather per seed")
    ap.add_argument(
        "--lost-tail",
        action="store_true",
        help="damaged disks on every seed, including lost fsyncs that raftd cannot detect at boot "
        "(the same term and vote): what they can cost",
    )
    ap.add_argument(
        "--real",
        action="store_true",
        help="simulate the shipped RaftNode (three nodes, on the in-memory transport and storage) instead "
        "of the core under the simulator's own driver",
    )
    args = ap.parse_args(argv)
    if args.nodes is not None and args.nodes < 1:
        ap.error("--nodes must be at least 1")
    first = args.seed if args.seed is not None else 0
    count = args.seeds if args.seeds is not None else (1 if args.seed is not None else 100)
    if args.ticks < 1 or count < 1:
        ap.error("--ticks and --seeds must be positive")
    started = time.monotonic()
    totals: dict[str, int] = {}
    for seed in range(first, first + count):
        nodes = args.nodes if args.nodes is not None else (3 if seed % 2 == 0 else 5)
        failure = (
            run_real_seed(seed, totals) if args.real else run_seed(seed, nodes, args.ticks, args.lost_tail)
        )
        if failure:
            print(f"FAIL {failure}", file=sys.stderr)
            return 1
    print(f"ok: {count} seeds passed in {time.monotonic() - started:.1f}s")
    if totals:  # what the seeds went through: a check that passes on calm weather proves little
        print(", ".join(f"{name} {n}" for name, n in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
