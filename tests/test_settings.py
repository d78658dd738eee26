"""The settings objects refuse values that would make a node misbehave rather than start it."""

from __future__ import annotations

import pytest

from raftd.settings import Limits, Tuning


@pytest.mark.parametrize("bad", [0, -1, True, "5"])
def test_a_tuning_value_must_be_a_positive_number(bad: object) -> None:
    with pytest.raises(ValueError, match="tick_s must be a positive number"):
        Tuning(tick_s=bad)  # type: ignore[arg-type]


def test_a_limit_of_zero_is_refused_except_where_zero_turns_a_check_off() -> None:
    with pytest.raises(ValueError, match="max_stream_requests must be a positive number, not 0"):
        Limits(max_stream_requests=0)
    assert Limits(corrupt_check_interval_s=0).corrupt_check_interval_s == 0
    with pytest.raises(ValueError, match="corrupt_check_interval_s must be a positive number"):
        Limits(corrupt_check_interval_s=-1)
