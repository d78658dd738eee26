"""Majority arithmetic, kept as small pure functions so it can be checked against a naive twin."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"
    LOST = "lost"
    WON = "won"


def majority(n: int) -> int:
    """Smallest number of voters that forms a quorum of n."""
    return n // 2 + 1


def committed_index(voters: Iterable[int], match: Mapping[int, int]) -> int:
    """Largest index acknowledged by a majority of voters (a voter missing from match counts as 0)."""
    ids = list(voters)
    if not ids:
        return 0
    acked = sorted((match.get(v, 0) for v in ids), reverse=True)
    return acked[majority(len(ids)) - 1]


def vote_result(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority is out of reach, else PENDING."""
    ids = list(voters)
    need = majority(len(ids))
    granted = sum(1 for v in ids if votes.get(v) is True)
    missing = sum(1 for v in ids if v not in votes)
    if granted >= need:
        return VoteResult.WON
    if granted + missing >= need:
        return VoteResult.PENDING
    return VoteResult.LOST
