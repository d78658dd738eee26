"""The checkers of the etcd Jepsen workloads (raftd/testing/etcd_jepsen.py): compare-and-swap registers
against a brute-force twin, and watches against the cluster's record of changes."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from raftd.testing.etcd_jepsen import RegOp, Watcher, check_registers, check_watches


def op(
    kind: str,
    call: float,
    ret: float | None,
    *,
    value: int | None = None,
    expected: int | None = None,
    output: int | bool | None = None,
    status: str = "ok",
    key: str = "cas/0-0",
    process: int = 0,
) -> RegOp:
    return RegOp(process, kind, key, value, expected, call, ret, status, output)


def ok(ops: list[RegOp]) -> bool:
    return check_registers(ops).ok


def test_a_sequential_history_that_makes_sense_is_linearizable() -> None:
    assert ok(
        [
            op("read", 0, 1, output=None),
            op("write", 2, 3, value=1),
            op("cas", 4, 5, expected=1, value=2, output=True),
            op("cas", 6, 7, expected=1, value=3, output=False),
            op("read", 8, 9, output=2),
        ]
    )


def test_a_read_of_a_value_nobody_wrote_is_not() -> None:
    assert not ok([op("write", 0, 1, value=1), op("read", 2, 3, output=4)])


def test_a_swap_refused_while_the_value_matched_is_not() -> None:
    assert not ok([op("write", 0, 1, value=1), op("cas", 2, 3, expected=1, value=2, output=False)])


def test_a_swap_on_an_absent_key_never_matches() -> None:
    assert ok([op("cas", 0, 1, expected=0, value=2, output=False), op("read", 2, 3, output=None)])
    assert not ok([op("cas", 0, 1, expected=0, value=2, output=True)])


def test_a_stale_read_after_a_completed_write_is_not() -> None:
    assert not ok([op("write", 0, 1, value=1), op("write", 2, 3, value=2), op("read", 4, 5, output=1)])


def test_concurrent_ops_may_take_effect_in_either_order() -> None:
    assert ok([op("write", 0, 5, value=1), op("write", 1, 6, value=2), op("read", 7, 8, output=1)])


def test_an_unknown_outcome_may_have_applied_or_not() -> None:
    info_write = op("write", 0, None, value=3, status="info")
    assert ok([info_write, op("read", 5, 6, output=3), op("read", 7, 8, output=3)])
    assert ok([info_write, op("read", 5, 6, output=None)])
    # Once seen applied, it cannot be unapplied.
    assert not ok([info_write, op("read", 5, 6, output=3), op("read", 7, 8, output=None)])
    info_cas = op("cas", 1, None, expected=1, value=4, status="info")
    assert ok([op("write", 0, 0.5, value=1), info_cas, op("read", 5, 6, output=4)])
    assert not ok([op("write", 0, 0.5, value=2), info_cas, op("read", 5, 6, output=4)]), "its compare failed"
    # A failed write certainly did not happen.
    assert not ok([op("write", 0, 1, value=3, status="fail"), op("read", 2, 3, output=3)])


# -- the twin: every order of the ok ops and any subset of the info ops, checked the naive way ------------


def brute_force(ops: list[RegOp]) -> bool:
    oks = [o for o in ops if o.status == "ok"]
    infos = [o for o in ops if o.status == "info" and o.kind != "read"]
    for n in range(len(infos) + 1):
        for chosen in itertools.combinations(infos, n):
            for order in itertools.permutations(oks + list(chosen)):
                if respects_real_time(order) and explains(order):
                    return True
    return False


def respects_real_time(order: tuple[RegOp, ...]) -> bool:
    return not any(
        b.status == "ok" and b.ret is not None and b.ret < a.call
        for i, a in enumerate(order)
        for b in order[i + 1 :]
    )


def explains(order: tuple[RegOp, ...]) -> bool:
    value: int | None = None
    for o in order:
        if o.kind == "read":
            if o.output != value:
                return False
        elif o.kind == "write":
            value = o.value
        elif value is not None and value == o.expected:
            if o.status == "ok" and o.output is False:
                return False
            value = o.value
        elif (o.status == "ok" and o.output is True) or o.status == "info":
            return False  # a swap that took effect needs its value; an info one that did not is "never"
    return True


@st.composite
def histories(draw: st.DrawFn) -> list[RegOp]:
    ops = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["read", "write", "cas"]))
        call = draw(st.integers(0, 10))
        status = draw(st.sampled_from(["ok", "ok", "ok", "info", "fail"]))
        ret = None if status == "info" else call + draw(st.integers(1, 6))
        value = draw(st.integers(0, 2)) if kind != "read" else None
        expected = draw(st.integers(0, 2)) if kind == "cas" else None
        output: int | bool | None = None
        if kind == "read":
            output = draw(st.one_of(st.none(), st.integers(0, 2)))
        elif kind == "cas" and status == "ok":
            output = draw(st.booleans())
        ops.append(
            op(kind, call + i / 100, ret, value=value, expected=expected, output=output, status=status)
        )
    return ops


@settings(max_examples=2000, deadline=None)
@given(histories())
def test_the_checker_agrees_with_brute_force(ops: list[RegOp]) -> None:
    assert check_registers(ops).ok == brute_force([o for o in ops if o.status != "fail"])


# -- watches ------------------------------------------------------------------------------------------------

RECORD = [(5, "PUT", "cas/0-0", 1), (6, "PUT", "cas/0-0", 2), (7, "PUT", "cas/0-1", 1)]
REGISTERS = [
    op("write", 0, 1, value=1),
    op("cas", 2, 3, expected=1, value=2, output=True),
    op("write", 4, None, value=1, key="cas/0-1", status="info"),
]


def watcher(events: list[tuple[int, str, str, int | None]]) -> Watcher:
    w = Watcher([], 0, 5)
    w.events = events
    return w


def test_watchers_that_saw_the_record_pass() -> None:
    assert check_watches([watcher(list(RECORD)), watcher(list(RECORD))], RECORD, REGISTERS, 7).ok
    # Events past the end of the check are not compared.
    assert check_watches([watcher([*RECORD, (8, "PUT", "cas/0-0", 3)])], RECORD, REGISTERS, 7).ok


def test_a_watcher_that_missed_repeated_or_reordered_an_event_fails() -> None:
    for bad in (
        RECORD[:1] + RECORD[2:],
        [*RECORD[:2], RECORD[1], RECORD[2]],
        [RECORD[1], RECORD[0], RECORD[2]],
    ):
        result = check_watches([watcher(list(RECORD)), watcher(bad)], RECORD, REGISTERS, 7)
        assert not result.ok and "watcher 1" in result.explanation


def test_the_record_must_agree_with_the_registers_history() -> None:
    lost = RECORD[1:]  # the acknowledged write of 1 is missing
    assert not check_watches([watcher(list(lost))], lost, REGISTERS, 7).ok
    extra = [*RECORD, (8, "PUT", "cas/0-0", 4)]  # a value nobody wrote
    assert not check_watches([watcher(list(extra))], extra, REGISTERS, 8).ok
    twice = [*RECORD, (8, "PUT", "cas/0-1", 1)]  # the info write applied twice
    assert not check_watches([watcher(list(twice))], twice, REGISTERS, 8).ok
