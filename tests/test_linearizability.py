"""The linearizability checker against histories whose verdict is known by construction.

Hand-written histories pin down each rule (real-time order, info ops that did or did not happen, deletes);
generated ones come from a simulated atomic register, so they are linearizable by construction, and one
corrupted read in them must be caught.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from raftd.testing import History, Op, check
from raftd.testing.history import load

# -- hand-written histories --------------------------------------------------------------------------------


def put(p: int, value: str, call: float, ret: float | None, status: str = "ok", key: str = "k") -> Op:
    return Op(p, "put", key, value, call, ret, status)


def get(p: int, output: str | None, call: float, ret: float | None, status: str = "ok", key: str = "k") -> Op:
    return Op(p, "get", key, None, call, ret, status, output)


def delete(
    p: int, existed: bool | None, call: float, ret: float | None, status: str = "ok", key: str = "k"
) -> Op:
    out = None if existed is None else ("true" if existed else "false")
    return Op(p, "delete", key, None, call, ret, status, out)


def assert_linearizable(ops: list[Op]) -> None:
    result = check(ops, timeout_s=10)
    assert result.ok, result.explanation


def assert_violation(ops: list[Op], key: str = "k") -> str:
    result = check(ops, timeout_s=10)
    assert not result.ok, "a non-linearizable history passed"
    assert result.key == key
    return result.explanation


def test_empty_and_sequential() -> None:
    assert_linearizable([])
    assert_linearizable(
        [
            get(0, None, 0, 1),
            put(0, "a", 2, 3),
            get(1, "a", 4, 5),
            put(1, "b", 6, 7),
            get(0, "b", 8, 9),
            delete(0, True, 10, 11),
            get(1, None, 12, 13),
            delete(1, False, 14, 15),
        ]
    )


def test_concurrent_writes_either_order() -> None:
    # a and b overlap: either may win, and readers overlapping both may see either.
    writes = [put(0, "a", 0, 10), put(1, "b", 1, 9)]
    for final in ("a", "b"):
        assert_linearizable([*writes, get(2, final, 11, 12)])
    assert_linearizable([*writes, get(2, "a", 2, 3), get(3, "b", 4, 5), get(2, "a", 6, 8)][:4])
    assert_linearizable([*writes, get(2, None, 0.5, 2), get(3, "b", 3, 4), get(2, "a", 5, 8)])


def test_read_concurrent_with_write_sees_old_or_new() -> None:
    base = [put(0, "a", 0, 1), put(0, "b", 2, 6)]
    assert_linearizable([*base, get(1, "a", 3, 4), get(1, "b", 4.5, 5)])
    assert_linearizable([*base, get(1, "b", 3, 4)])


def test_touching_intervals_are_concurrent() -> None:
    """An op that returns exactly when another is called does not precede it (ties are not evidence)."""
    assert_linearizable([put(0, "a", 0, 1), put(1, "b", 1, 2), get(2, "a", 2, 3)])


def test_info_write_that_took_effect_late() -> None:
    # The write timed out; it shows up long after, even after other completed writes.
    assert_linearizable(
        [
            put(0, "a", 0, 1),
            put(1, "x", 2, None, "info"),
            get(2, "a", 3, 4),
            put(2, "b", 5, 6),
            get(0, "b", 7, 8),
            get(0, "x", 20, 21),
        ]
    )


def test_info_write_that_never_took_effect() -> None:
    assert_linearizable(
        [put(0, "a", 0, 1), put(1, "x", 2, None, "info"), get(2, "a", 3, 4), get(2, "a", 100, 101)]
    )


def test_pending_ops_count_as_info() -> None:
    assert_linearizable([put(0, "a", 0, 1), put(1, "x", 2, None, "pending"), get(2, "x", 3, 4)])
    assert_linearizable([put(0, "a", 0, 1), get(1, "zzz", 2, None, "pending"), get(2, "a", 3, 4)])


def test_info_write_cannot_take_effect_before_its_call() -> None:
    explanation = assert_violation([get(0, "x", 0, 1), put(1, "x", 2, None, "info")])
    assert "get('k') -> 'x'" in explanation


def test_info_delete_may_explain_absence() -> None:
    assert_linearizable([put(0, "a", 0, 1), delete(1, None, 2, None, "info"), get(2, None, 3, 4)])
    assert_linearizable([put(0, "a", 0, 1), delete(1, None, 2, None, "info"), get(2, "a", 3, 4)])


def test_info_write_of_unread_value_can_explain_a_delete() -> None:
    assert_linearizable([put(0, "never-read", 0, None, "info"), delete(1, True, 1, 2)])
    assert_violation([delete(1, True, 1, 2), put(0, "never-read", 3, None, "info")])


def test_many_info_writes_stay_cheap() -> None:
    """200 pending writes of unread values would be 2^200 subsets without the interchangeability rule."""
    ops = [put(i, f"lost{i}", i, None, "info") for i in range(200)]
    ops += [put(999, "a", 300, 301), get(998, "a", 302, 303), delete(998, True, 304, 305)]
    ops += [get(998, None, 306, 307)]
    assert_linearizable(ops)
    # lost3 may take effect late, but only once: absent in between is impossible without a delete.
    assert_linearizable([*ops, get(997, "lost3", 400, 401)])
    assert_violation(
        [*ops, get(997, "lost3", 400, 401), get(997, None, 402, 403), get(997, "lost3", 404, 405)]
    )


def test_failed_ops_are_dropped() -> None:
    assert_linearizable([put(0, "a", 0, 1), put(1, "x", 2, 3, "fail"), get(2, "a", 4, 5)])
    assert_linearizable([put(0, "a", 0, 1), get(1, "garbage", 2, 3, "fail"), get(2, "a", 4, 5)])
    assert_violation([put(0, "a", 0, 1), put(1, "x", 2, 3, "fail"), get(2, "x", 4, 5)])


def test_deletes() -> None:
    assert_linearizable(
        [delete(0, False, 0, 1), put(0, "a", 2, 3), delete(1, True, 4, 5), get(0, None, 6, 7)]
    )
    # Two deletes concurrent with one write: exactly one of them may see it.
    assert_linearizable([put(0, "a", 0, 1), delete(1, True, 2, 5), delete(2, False, 3, 6)])
    assert_violation([put(0, "a", 0, 1), delete(1, True, 2, 5), delete(2, True, 3, 6)])


def test_stale_read() -> None:
    explanation = assert_violation([put(0, "a", 0, 1), put(0, "b", 2, 3), get(1, "a", 4, 5)])
    assert "get('k') -> 'a'" in explanation
    assert "value after it: 'b'" in explanation


def test_lost_write() -> None:
    """An acknowledged write never visible to a later read, which sees an older value instead."""
    assert_violation(
        [
            put(0, "old", 0, 1),
            get(1, "old", 1.5, 1.8),
            put(0, "new", 2, 3),
            get(1, "old", 4, 5),
            get(2, "old", 6, 7),
        ]
    )


def test_read_of_a_never_written_value() -> None:
    explanation = assert_violation([put(0, "a", 0, 1), get(1, "ghost", 0.5, 2)])
    assert "'ghost'" in explanation


def test_delete_reporting_absent_when_present() -> None:
    assert_violation([put(0, "a", 0, 1), delete(1, False, 2, 3)])
    assert_violation([delete(1, True, 0, 1)])


def test_keys_are_independent_and_the_bad_one_is_named() -> None:
    ops = [put(0, "a", 0, 1, key="x"), get(1, "a", 2, 3, key="x")]
    ops += [put(0, "a", 4, 5, key="y"), put(0, "b", 6, 7, key="y"), get(1, "a", 8, 9, key="y")]
    assert check(ops[:2]).ok
    assert_violation(ops, key="y")


def test_history_recorder_roundtrip(tmp_path) -> None:
    h = History()
    a = h.invoke(0, "put", "k", "v")
    b = h.invoke(1, "get", "k")
    c = h.invoke(2, "delete", "k")
    h.ok(a)
    h.ok(b, "v")
    h.info(c)
    d = h.invoke(0, "get", "k")
    h.fail(d)
    ops = h.ops()
    assert [o.status for o in ops] == ["ok", "ok", "info", "fail"]
    assert ops[2].ret is None and ops[0].ret is not None and ops[0].ret >= ops[0].call
    h.dump(tmp_path / "h.jsonl")
    assert load(tmp_path / "h.jsonl") == ops
    assert check(ops).ok


def test_history_refuses_two_outstanding_ops_per_process() -> None:
    h = History()
    h.invoke(0, "get", "k")
    try:
        h.invoke(0, "get", "k")
    except ValueError:
        pass
    else:
        raise AssertionError("a second outstanding op was accepted")


# -- generated histories -----------------------------------------------------------------------------------


def simulate(
    rng: random.Random,
    n_ops: int,
    processes: int,
    keys: list[str],
    p_info: float = 0.05,
    p_fail: float = 0.03,
) -> list[Op]:
    """Ops against an atomic map, with random real-time overlap: linearizable by construction.

    Each op takes effect at one instant between its call and its return (or, for info writes, at some
    instant after its call or never); fail ops never take effect.
    """
    state: dict[str, str | None] = dict.fromkeys(keys)
    ops: list[Op] = []
    # Per process: (op, effect done?) of its outstanding op.
    busy: dict[int, tuple[Op, bool]] = {}
    ghosts: list[Op] = []  # info writes that may still take effect
    clock = 0.0
    pid = {p: p for p in range(processes)}  # after an info op a process continues under a new id
    next_pid = processes
    written = 0
    while len(ops) < n_ops or busy:
        clock += rng.random()
        if ghosts and rng.random() < 0.05:
            ghost = ghosts.pop(rng.randrange(len(ghosts)))
            state[ghost.key] = ghost.value if ghost.kind == "put" else None
        p = rng.randrange(processes)
        if p not in busy:
            if len(ops) >= n_ops:
                continue
            key = rng.choice(keys)
            kind = rng.choices(["put", "get", "delete"], [4, 5, 1])[0]
            value = None
            if kind == "put":
                written += 1
                value = f"v{written}"
            op = Op(pid[p], kind, key, value, clock)
            ops.append(op)
            busy[p] = (op, False)
        else:
            op, done = busy[p]
            if not done:
                r = rng.random()
                if op.kind != "get" and r < p_info:
                    op.status = "info"  # it may take effect later, or never
                    ghosts.append(op)
                    del busy[p]
                    pid[p] = next_pid
                    next_pid += 1
                elif r < p_info + p_fail:
                    op.status, op.ret = "fail", clock
                    del busy[p]
                else:
                    if op.kind == "put":
                        state[op.key] = op.value
                    elif op.kind == "get":
                        op.output = state[op.key]
                    else:
                        op.output = "true" if state[op.key] is not None else "false"
                        state[op.key] = None
                    busy[p] = (op, True)
            else:
                op.status, op.ret = "ok", clock
                del busy[p]
    return ops


def corrupt_one_read(rng: random.Random, ops: list[Op]) -> list[Op] | None:
    """One ok read made to return what no linearization allows: a value written only after the read
    returned (values are unique, so that write must be linearized after the read), else one never written."""
    reads = [i for i, op in enumerate(ops) if op.kind == "get" and op.status == "ok"]
    if not reads:
        return None
    i = rng.choice(reads)
    r = ops[i]
    future = [
        op.value
        for op in ops
        if op.kind == "put" and op.key == r.key and op.call > r.ret and op.value != r.output  # type: ignore[operator]
    ]
    bad = rng.choice(future) if future else "never-written"
    out = list(ops)
    out[i] = replace(r, output=bad)
    return out


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ops=st.integers(1, 60),
    processes=st.integers(1, 6),
    n_keys=st.integers(1, 3),
)
def test_simulated_register_histories_are_linearizable(
    seed: int, n_ops: int, processes: int, n_keys: int
) -> None:
    rng = random.Random(seed)
    ops = simulate(rng, n_ops, processes, [f"k{i}" for i in range(n_keys)])
    assert_linearizable(ops)
    bad = corrupt_one_read(rng, ops)
    if bad is not None:
        result = check(bad, timeout_s=10)
        assert not result.ok


def test_performance_sanity_on_2000_ops() -> None:
    """A few thousand ops over a handful of keys with 10 processes: a verdict well within the budget."""
    rng = random.Random(7)
    ops = simulate(rng, 2000, 10, ["a", "b", "c"], p_info=0.02)
    start = time.monotonic()
    assert_linearizable(ops)
    bad = corrupt_one_read(rng, ops)
    assert bad is not None
    assert not check(bad, timeout_s=60).ok
    print(f"2,000-op history checked twice in {time.monotonic() - start:.2f}s")


# -- against a naive twin ----------------------------------------------------------------------------------


def naive_linearizable(ops: list[Op]) -> bool:
    """By definition: some order of all ok ops plus any subset of info/pending writes, respecting real time
    (a precedes b when a returned before b was called) and the register's semantics, per key."""
    keys = {op.key for op in ops}
    for key in keys:
        mine = [op for op in ops if op.key == key and op.status != "fail"]
        must = [op for op in mine if op.status == "ok"]
        may = [op for op in mine if op.status != "ok" and op.kind != "get"]
        if not any(
            _naive_order_exists(must + [may[j] for j in range(len(may)) if mask >> j & 1])
            for mask in range(1 << len(may))
        ):
            return False
    return True


def _naive_order_exists(ops: list[Op]) -> bool:
    def ret(op: Op) -> float:
        return op.ret if op.status == "ok" and op.ret is not None else float("inf")

    for order in itertools.permutations(ops):
        if any(ret(order[j]) < order[i].call for i in range(len(order)) for j in range(i + 1, len(order))):
            continue
        value: str | None = None
        for op in order:
            if op.kind == "put":
                value = op.value
            elif op.kind == "get":
                if op.output != value:
                    break
            else:
                if op.status == "ok" and op.output != ("true" if value is not None else "false"):
                    break
                value = None
        else:
            return True
    return False


@st.composite
def small_histories(draw: st.DrawFn) -> list[Op]:
    """Up to 6 ops on 1-2 keys with arbitrary overlaps, outputs from a tiny alphabet and any outcome."""
    n = draw(st.integers(1, 6))
    ops = []
    for p in range(n):
        kind = draw(st.sampled_from(["put", "put", "get", "get", "delete"]))
        key = draw(st.sampled_from(["a", "b"])) if draw(st.booleans()) else "a"
        call = draw(st.integers(0, 10))
        ret = call + draw(st.integers(0, 6))
        status = draw(st.sampled_from(["ok", "ok", "ok", "info", "fail", "pending"]))
        value = draw(st.sampled_from(["x", "y", "z"])) if kind == "put" else None
        output = None
        if kind == "get":
            output = draw(st.sampled_from([None, "x", "y", "z"]))
        elif kind == "delete":
            output = draw(st.sampled_from(["true", "false"]))
        if status in ("info", "pending"):
            ret = None
            output = None
        ops.append(Op(p, kind, key, value, float(call), None if ret is None else float(ret), status, output))
    return ops


@settings(max_examples=1500, deadline=None)
@given(ops=small_histories())
def test_agrees_with_a_naive_twin(ops: list[Op]) -> None:
    """The reductions (unread values collapsed, interchangeable info ops in call order, reads taken greedily)
    lose nothing: the verdict is the definition's on every small history, repeated values included."""
    assert check(ops, timeout_s=10).ok == naive_linearizable(ops)
