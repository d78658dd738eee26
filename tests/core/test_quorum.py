"""Quorum arithmetic against naive twins.

committed_index and vote_result decide what is durable and who leads, so they are checked against
deliberately simple brute-force versions (the approach of etcd-io/raft/quorum/quick_test.go) on thousands of
random clusters, including votes and acknowledgements from ids that are not voters at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftd.core.quorum import VoteResult, committed_index, majority, vote_result

# Deterministic for CI: derandomize draws the same cases every run and needs no example database.
PROPERTY = settings(
    max_examples=2000,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

voter_sets = st.sets(st.integers(min_value=1, max_value=9), min_size=1, max_size=7)


def naive_committed_index(voters: set[int], match: Mapping[int, int]) -> int:
    """The largest i that more than half of the voters have reached, by trying every candidate value."""
    candidates = {0, *match.values()}
    best = 0
    for i in candidates:
        reached = sum(1 for v in voters if match.get(v, 0) >= i)
        if 2 * reached > len(voters):
            best = max(best, i)
    return best


def naive_vote_result(voters: set[int], votes: Mapping[int, bool]) -> VoteResult:
    """Enumerate every way the missing voters could still answer: WON/LOST if all agree, else PENDING."""
    missing = sorted(v for v in voters if v not in votes)
    outcomes = set()
    for answers in itertools.product([True, False], repeat=len(missing)):
        final = {v: votes[v] for v in voters if v in votes} | dict(zip(missing, answers, strict=True))
        granted = sum(1 for g in final.values() if g)
        outcomes.add(2 * granted > len(voters))
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


@st.composite
def cluster_match(draw: st.DrawFn) -> tuple[set[int], dict[int, int]]:
    """Voters plus a match map that may miss some voters and include strangers (non-voters)."""
    voters = draw(voter_sets)
    ids = st.integers(min_value=1, max_value=12)
    match = draw(st.dictionaries(ids, st.integers(min_value=0, max_value=20), max_size=10))
    return voters, match


@st.composite
def cluster_votes(draw: st.DrawFn) -> tuple[set[int], dict[int, bool]]:
    voters = draw(voter_sets)
    votes = draw(st.dictionaries(st.integers(min_value=1, max_value=12), st.booleans(), max_size=10))
    return voters, votes


@PROPERTY
@given(cluster_match())
def test_committed_index_matches_naive_twin(case: tuple[set[int], dict[int, int]]) -> None:
    voters, match = case
    expected = naive_committed_index(voters, match)
    # The core passes a sorted tuple; any iterable order must give the same answer.
    ordered = sorted(voters)
    assert committed_index(ordered, match) == expected
    assert committed_index(list(reversed(ordered)), match) == expected


@PROPERTY
@given(cluster_votes())
def test_vote_result_matches_naive_twin(case: tuple[set[int], dict[int, bool]]) -> None:
    voters, votes = case
    before = vote_result(voters, votes)
    assert before == naive_vote_result(voters, votes)
    # Once decided, more answers never change the outcome: a won election cannot be lost later.
    if before is not VoteResult.PENDING:
        for v in sorted(voters - votes.keys()):
            for answer in (True, False):
                assert vote_result(voters, votes | {v: answer}) is before


@pytest.mark.parametrize(("n", "expected"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_majority(n: int, expected: int) -> None:
    assert majority(n) == expected


@pytest.mark.parametrize(
    ("voters", "match", "expected"),
    [
        ({1}, {1: 5}, 5),  # a single node commits what it has
        ({1}, {}, 0),
        ({1, 2}, {1: 5, 2: 3}, 3),  # two nodes need both
        ({1, 2}, {1: 5}, 0),  # a missing voter counts as 0
        ({1, 2, 3}, {1: 5, 2: 3, 3: 1}, 3),
        ({1, 2, 3}, {1: 5, 2: 5, 3: 0}, 5),
        ({1, 2, 3}, {1: 5}, 0),
        ({1, 2, 3, 4}, {1: 4, 2: 3, 3: 2, 4: 1}, 2),  # four need three
        ({1, 2, 3, 4}, {1: 9, 2: 9}, 0),
        ({1, 2, 3, 4, 5}, {1: 9, 2: 7, 3: 5, 4: 3, 5: 1}, 5),
        ({1, 2, 3, 4, 5}, {1: 9, 2: 7, 6: 8, 7: 8}, 0),  # acknowledgements from non-voters do not count
        ({1, 2, 3, 4, 5}, {1: 9, 2: 7, 3: 7}, 7),
        (set(), {1: 3}, 0),  # no voters: nothing is committed
    ],
)
def test_committed_index_examples(voters: set[int], match: dict[int, int], expected: int) -> None:
    assert committed_index(voters, match) == expected


@pytest.mark.parametrize(
    ("voters", "votes", "expected"),
    [
        ({1}, {}, VoteResult.PENDING),
        ({1}, {1: True}, VoteResult.WON),
        ({1}, {1: False}, VoteResult.LOST),
        ({1, 2}, {1: True}, VoteResult.PENDING),
        ({1, 2}, {1: True, 2: False}, VoteResult.LOST),  # two nodes need both
        ({1, 2}, {1: True, 2: True}, VoteResult.WON),
        ({1, 2, 3}, {1: True}, VoteResult.PENDING),
        ({1, 2, 3}, {1: True, 3: True}, VoteResult.WON),
        ({1, 2, 3}, {1: True, 2: False}, VoteResult.PENDING),
        ({1, 2, 3}, {2: False, 3: False}, VoteResult.LOST),
        ({1, 2, 3, 4}, {1: True, 2: True}, VoteResult.PENDING),  # four need three
        ({1, 2, 3, 4}, {1: True, 2: False, 3: False}, VoteResult.LOST),
        ({1, 2, 3, 4}, {1: True, 2: True, 4: True}, VoteResult.WON),
        ({1, 2, 3, 4, 5}, {1: True, 2: True}, VoteResult.PENDING),
        ({1, 2, 3, 4, 5}, {1: True, 2: True, 5: True}, VoteResult.WON),
        ({1, 2, 3, 4, 5}, {1: True, 2: False, 3: False, 4: False}, VoteResult.LOST),
        ({1, 2, 3}, {1: True, 7: True, 8: True}, VoteResult.PENDING),  # strangers' votes do not count
    ],
)
def test_vote_result_examples(voters: set[int], votes: dict[int, bool], expected: VoteResult) -> None:
    assert vote_result(voters, votes) is expected
