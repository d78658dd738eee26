"""check_failed_writes_unread on small hand-made histories: a definite failure read back is caught (by any
read, final reads included), and every history where it is not read passes."""

from __future__ import annotations

import pytest

from raftd.testing import Op, check, check_failed_writes_unread

FINAL = 1_000_000  # a final read's process id, as the Jepsen tests number them


def put(p: int, value: str, call: float, ret: float | None, status: str = "ok", key: str = "k") -> Op:
    return Op(p, "put", key, value, call, ret, status)


def get(p: int, output: str | None, call: float, ret: float, status: str = "ok", key: str = "k") -> Op:
    return Op(p, "get", key, None, call, ret, status, output)


def test_passes_when_no_failed_write_is_read() -> None:
    ops = [
        put(0, "p0-1", 0, 1),
        put(5, "s5-1", 2, 3, "fail"),  # never read: fine
        put(6, "u6-1", 4, None, "info"),  # unknown outcome: may be read
        get(1, "u6-1", 5, 6),
        get(1, None, 7, 8, "fail"),  # a failed read returns nothing
        put(5, "s5-2", 9, 10),
        get(FINAL, "s5-2", 11, 12),
    ]
    assert check_failed_writes_unread(ops).ok
    assert check_failed_writes_unread([]).ok


def test_a_read_of_a_failed_write_is_caught_and_named() -> None:
    failed = put(5, "s5-1", 2, 3, "fail")
    read = get(1, "s5-1", 4, 5)
    ops = [put(0, "p0-1", 0, 1), failed, read]
    result = check_failed_writes_unread(ops)
    assert not result.ok and result.key == "k"
    assert failed.describe() in result.explanation and read.describe() in result.explanation
    # The linearizability checker drops the failed write too, so it refutes the same history (less plainly).
    assert not check(ops).ok


def test_a_failed_write_read_long_after_or_only_by_the_final_read_is_caught() -> None:
    failed = put(6, "u6-1", 0, 1, "fail", key="k1")
    final = get(FINAL, "u6-1", 100, 101, key="k1")
    result = check_failed_writes_unread([failed, put(0, "p0-1", 2, 3, key="k1"), final])
    assert not result.ok and result.key == "k1"
    assert f"p{FINAL} get('k1') -> 'u6-1'" in result.explanation


def test_every_offending_read_is_listed() -> None:
    ops = [
        put(5, "s5-1", 0, 1, "fail", key="a"),
        put(6, "u6-1", 0, 1, "fail", key="b"),
        get(1, "s5-1", 2, 3, key="a"),
        get(2, "u6-1", 2, 3, key="b"),
        get(3, "s5-1", 4, 5, key="a"),
    ]
    result = check_failed_writes_unread(ops)
    assert not result.ok and result.key == "a"
    assert result.explanation.count("read by") == 3


def test_the_value_must_match_on_the_same_key() -> None:
    # A read of key b cannot have seen a write to key a (that would be another bug, the checker's to find).
    assert check_failed_writes_unread([put(5, "x", 0, 1, "fail", key="a"), get(1, "x", 2, 3, key="b")]).ok


def test_duplicate_written_values_are_refused() -> None:
    with pytest.raises(ValueError, match="written twice"):
        check_failed_writes_unread([put(5, "x", 0, 1, "fail"), put(6, "x", 2, 3), get(1, "x", 4, 5)])
