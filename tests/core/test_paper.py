"""One or more tests per rule of Figure 2 of the Raft paper, modelled on etcd-io/raft's raft_paper_test.go.

Most tests drive a single Raft by hand (step/tick, then read `msgs`) so each asserts exactly one rule;
the log-repair and Figure 8 scenarios use the in-memory Network. Pre-vote and check-quorum are off here
unless a test says otherwise: they are extensions, tested in test_features.py, and the paper's rules are
stated without them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import pytest

from raftd.core import (
    NONE,
    Config,
    Entry,
    HardState,
    Message,
    MsgType,
    Raft,
    Role,
)
from tests.core.network import Network, Storage, log_of

ET = 10  # election_tick used throughout


def new_raft(
    node_id: int = 1,
    peers: Sequence[int] = (1, 2, 3),
    *,
    term: int = 0,
    vote: int = NONE,
    commit: int = 0,
    log: Iterable[Entry] = (),
    seed: int = 0,
    **cfg: object,
) -> Raft:
    """A Raft restarted from the given persisted state, with the paper's rules only (no extensions)."""
    cfg.setdefault("pre_vote", False)
    cfg.setdefault("check_quorum", False)
    cfg.setdefault("election_tick", ET)
    config = Config(id=node_id, peers=tuple(peers), rng=random.Random(seed), **cfg)  # type: ignore[arg-type]
    return Raft(config, HardState(term, vote, commit), entries=list(log))


def take(r: Raft) -> list[Message]:
    """Drain the node's outbox, as the owner would when sending a Ready's messages."""
    msgs, r.msgs = r.msgs, []
    return msgs


def become_candidate(r: Raft) -> None:
    r.step(Message(MsgType.HUP))
    assert r.role is Role.CANDIDATE


def become_leader(r: Raft) -> None:
    """Campaign and collect granted votes until the node wins; its no-op is then on its disk."""
    r.step(Message(MsgType.HUP))
    for p in r.peers:
        if p != r.id and r.role is not Role.LEADER:
            r.step(Message(MsgType.VOTE_RESP, to=r.id, frm=p, term=r.term))
    assert r.role is Role.LEADER
    persisted(r)


def persisted(r: Raft) -> None:
    """The owner wrote the whole log to disk and said so, as RawNode.advance() does."""
    r.log.stable_to(r.log.last_index(), r.log.last_term())
    r.on_persisted()


def commit_noop(r: Raft) -> None:
    """Every follower acknowledges the leader's whole log, so followers are in REPLICATE; outbox drained."""
    assert r.role is Role.LEADER
    for p in r.peers:
        if p != r.id:
            r.step(Message(MsgType.APP_RESP, to=r.id, frm=p, term=r.term, index=r.log.last_index()))
    assert r.log.committed == r.log.last_index()
    take(r)


def it(entries: Iterable[Entry]) -> list[tuple[int, int]]:
    """(index, term) pairs: what log-matching is about, without the payloads."""
    return [(e.index, e.term) for e in entries]


def of(msgs: Iterable[Message], kind: MsgType) -> list[Message]:
    return [m for m in msgs if m.type is kind]


def make_role(r: Raft, role: Role) -> None:
    if role is Role.CANDIDATE:
        become_candidate(r)
    elif role is Role.LEADER:
        become_leader(r)
    take(r)


# ==================================================================================================
# All servers: "If RPC request or response contains term T > currentTerm: set currentTerm = T, convert to
# follower" (5.1), and a request of an older term is refused.
# ==================================================================================================
@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
@pytest.mark.parametrize(
    "kind", [MsgType.APP, MsgType.HEARTBEAT, MsgType.VOTE, MsgType.VOTE_RESP, MsgType.APP_RESP]
)
def test_higher_term_converts_any_role_to_follower(role: Role, kind: MsgType) -> None:
    r = new_raft(term=2)
    make_role(r, role)
    term = r.term
    m = Message(
        kind,
        to=1,
        frm=2,
        term=term + 5,
        index=r.log.last_index(),
        log_term=r.log.last_term(),
        reject=kind is MsgType.VOTE_RESP,
    )
    r.step(m)
    assert r.role is Role.FOLLOWER
    assert r.term == term + 5
    # Only a message from the leader of the new term tells us who leads.
    expected_lead = 2 if kind in (MsgType.APP, MsgType.HEARTBEAT) else NONE
    assert r.lead == expected_lead
    assert r.vote == (2 if kind is MsgType.VOTE else NONE)


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
def test_lower_term_requests_are_refused(role: Role) -> None:
    r = new_raft(term=4, log=log_of([1, 2]))
    make_role(r, role)
    before = (r.role, r.term, r.vote, r.lead, it(r.log.entries), r.log.committed)
    stale = r.term - 1
    stale_entries = (Entry(3, stale, b"x"),)
    r.step(
        Message(MsgType.APP, to=1, frm=2, term=stale, index=2, log_term=2, entries=stale_entries, commit=3)
    )
    r.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=stale, commit=2))
    r.step(Message(MsgType.VOTE, to=1, frm=3, term=stale, index=99, log_term=stale))
    assert (r.role, r.term, r.vote, r.lead, it(r.log.entries), r.log.committed) == before
    for m in take(r):
        # Silence is allowed; an answer must never accept, and must carry our newer term.
        assert m.term == r.term, m
        assert m.type is not MsgType.VOTE_RESP or m.reject, m


def test_stale_leader_learns_newer_term_from_append_response() -> None:
    # With check-quorum a follower answers a stale AppendEntries with its term, so the old leader steps down.
    old = new_raft(1, term=1, check_quorum=True)
    become_leader(old)
    app = next(m for m in take(old) if m.to == 2 and m.type is MsgType.APP)
    assert (app.type, app.term) == (MsgType.APP, 2)

    follower = new_raft(2, term=5, check_quorum=True)
    follower.step(app)
    (resp,) = take(follower)
    assert (resp.type, resp.to, resp.term) == (MsgType.APP_RESP, 1, 5)
    assert follower.term == 5 and follower.log.last_index() == 0

    old.step(resp)
    assert old.role is Role.FOLLOWER and old.term == 5 and old.lead == NONE


# ==================================================================================================
# Followers: respond to RPCs; "if election timeout elapses without receiving AppendEntries from the current
# leader or granting vote to candidate: convert to candidate".
# ==================================================================================================
def test_servers_start_as_followers() -> None:
    r = new_raft()
    assert (r.role, r.term, r.vote, r.lead) == (Role.FOLLOWER, 0, NONE, NONE)
    assert take(r) == []


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE])
def test_election_timeout_starts_a_new_election(role: Role) -> None:
    # Followers campaign on timeout; a candidate whose election timed out (split vote) starts another one.
    r = new_raft(term=1, log=log_of([1, 1]))
    make_role(r, role)
    term = r.term
    n = 0
    for n in range(1, 2 * ET + 1):  # noqa: B007 - n is the tick count at which the campaign started
        r.tick()
        if r.term != term:
            break
    assert ET <= n < 2 * ET
    assert r.role is Role.CANDIDATE
    assert r.term == term + 1
    assert r.vote == 1
    assert r.votes == {1: True}
    msgs = take(r)
    assert sorted((m.type, m.to, m.frm, m.term, m.index, m.log_term) for m in msgs) == [
        (MsgType.VOTE, 2, 1, term + 1, 2, 1),
        (MsgType.VOTE, 3, 1, term + 1, 2, 1),
    ]


def test_follower_hearing_from_leader_never_times_out() -> None:
    r = new_raft(term=1)
    r.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=1))
    take(r)
    for t in range(1, 10 * ET):
        r.tick()
        if t % (ET - 1) == 0:
            r.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=1))
    assert (r.role, r.term, r.lead) == (Role.FOLLOWER, 1, 2)
    assert of(take(r), MsgType.VOTE) == []
    # Without the leader, the same follower campaigns within 2 * election_tick.
    for _ in range(2 * ET):
        r.tick()
    assert r.role is Role.CANDIDATE and r.term == 2


def test_granting_a_vote_resets_the_election_timer() -> None:
    r = new_raft(term=1)
    timeout = r.randomized_election_timeout
    for _ in range(timeout - 1):
        r.tick()
    # A vote within our own term, so no term change resets the timer behind the test's back.
    r.step(Message(MsgType.VOTE, to=1, frm=2, term=1))
    assert [(m.type, m.reject) for m in take(r)] == [(MsgType.VOTE_RESP, False)]
    assert r.randomized_election_timeout == timeout
    for _ in range(timeout - 1):
        r.tick()
    assert r.role is Role.FOLLOWER and r.term == 1, "granting a vote must restart the election timer"
    r.tick()
    assert r.role is Role.CANDIDATE and r.term == 2


def test_follower_answers_append_entries_and_heartbeats() -> None:
    r = new_raft(term=1)
    r.step(Message(MsgType.APP, to=1, frm=2, term=1, index=0, log_term=0, entries=(Entry(1, 1, b"a"),)))
    r.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=1, commit=1, context=b"c"))
    msgs = take(r)
    assert [(m.type, m.to, m.term, m.index, m.reject) for m in msgs] == [
        (MsgType.APP_RESP, 2, 1, 1, False),
        (MsgType.HEARTBEAT_RESP, 2, 1, 1, False),
    ]
    # The heartbeat answer reports the follower's last index and commit, so the leader can repair either.
    assert msgs[1].commit == 1
    assert msgs[1].context == b"c"
    assert r.lead == 2 and r.log.committed == 1


# ==================================================================================================
# Candidates: increment currentTerm, vote for self, reset election timer, send RequestVote to all others;
# majority -> leader; AppendEntries from the new leader -> follower; timeout -> new election.
# ==================================================================================================
def test_campaign_increments_term_votes_for_self_and_requests_votes() -> None:
    r = new_raft(term=2, log=log_of([1, 2]))
    r.election_elapsed = 7
    r.step(Message(MsgType.HUP))
    assert (r.role, r.term, r.vote, r.lead) == (Role.CANDIDATE, 3, 1, NONE)
    assert r.election_elapsed == 0
    assert r.hard_state() == HardState(3, 1, 0)
    assert [(m.type, m.to, m.frm, m.term, m.index, m.log_term) for m in take(r)] == [
        (MsgType.VOTE, 2, 1, 3, 2, 2),
        (MsgType.VOTE, 3, 1, 3, 2, 2),
    ]


@pytest.mark.parametrize(
    ("size", "votes", "want"),
    [
        (1, {}, Role.LEADER),
        (3, {2: True, 3: True}, Role.LEADER),
        (3, {2: True}, Role.LEADER),
        (5, {2: True, 3: True, 4: True, 5: True}, Role.LEADER),
        (5, {2: True, 3: True, 4: True}, Role.LEADER),
        (5, {2: True, 3: True}, Role.LEADER),
        # return to follower state once a majority is out of reach
        (3, {2: False, 3: False}, Role.FOLLOWER),
        (5, {2: False, 3: False, 4: False, 5: False}, Role.FOLLOWER),
        (5, {2: True, 3: False, 4: False, 5: False}, Role.FOLLOWER),
        # stay a candidate while the outcome is open
        (3, {}, Role.CANDIDATE),
        (5, {2: True}, Role.CANDIDATE),
        (5, {2: False, 3: False}, Role.CANDIDATE),
        (5, {}, Role.CANDIDATE),
    ],
)
def test_election_in_one_round(size: int, votes: dict[int, bool], want: Role) -> None:
    r = new_raft(peers=range(1, size + 1))
    r.step(Message(MsgType.HUP))
    for frm, granted in votes.items():
        r.step(Message(MsgType.VOTE_RESP, to=1, frm=frm, term=r.term, reject=not granted))
    assert r.role is want
    assert r.term == 1
    assert r.lead == (1 if want is Role.LEADER else NONE)


def test_duplicate_vote_responses_are_counted_once() -> None:
    r = new_raft(peers=range(1, 6))
    r.step(Message(MsgType.HUP))
    for _ in range(3):
        r.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=1))
    assert r.role is Role.CANDIDATE


@pytest.mark.parametrize("kind", [MsgType.APP, MsgType.HEARTBEAT])
def test_candidate_steps_down_on_append_from_leader_of_its_term(kind: MsgType) -> None:
    r = new_raft(term=1)
    become_candidate(r)
    take(r)
    r.step(Message(kind, to=1, frm=3, term=2))
    assert (r.role, r.term, r.lead) == (Role.FOLLOWER, 2, 3)
    assert r.vote == 1, "stepping down within the term must not forget the vote already cast"
    assert [m.type for m in take(r)] == [MsgType.APP_RESP if kind is MsgType.APP else MsgType.HEARTBEAT_RESP]


def test_candidate_ignores_votes_of_an_older_term() -> None:
    r = new_raft(term=1)
    become_candidate(r)
    r.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=1))
    r.step(Message(MsgType.VOTE_RESP, to=1, frm=3, term=1))
    assert r.role is Role.CANDIDATE and r.term == 2


# ==================================================================================================
# Leaders: a no-op on election, heartbeats, append and replicate, retry on inconsistency, and commit only by
# majority on an entry of the current term.
# ==================================================================================================
def test_new_leader_appends_a_noop_and_sends_it() -> None:
    r = new_raft(term=1, log=log_of([1]))
    become_leader(r)
    assert r.term == 2 and r.lead == 1
    assert r.log.entries[-1] == Entry(2, 2, b"")
    apps = of(take(r), MsgType.APP)
    assert sorted((m.type, m.to, m.term, m.index, m.log_term, m.entries, m.commit) for m in apps) == [
        (MsgType.APP, 2, 2, 1, 1, (Entry(2, 2, b""),), 0),
        (MsgType.APP, 3, 2, 1, 1, (Entry(2, 2, b""),), 0),
    ]


def test_leader_sends_heartbeats_every_heartbeat_tick() -> None:
    r = new_raft(heartbeat_tick=2)
    become_leader(r)
    commit_noop(r)
    r.tick()
    assert take(r) == []
    r.tick()
    assert sorted((m.type, m.to, m.term, m.commit) for m in take(r)) == [
        (MsgType.HEARTBEAT, 2, 1, 1),
        (MsgType.HEARTBEAT, 3, 1, 1),
    ]
    r.tick()
    r.tick()
    assert len(of(take(r), MsgType.HEARTBEAT)) == 2


def test_heartbeat_never_commits_a_follower_past_its_match() -> None:
    r = new_raft()
    become_leader(r)
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=1, index=1))
    assert r.log.committed == 1
    take(r)
    r.step(Message(MsgType.BEAT))
    commits = {m.to: m.commit for m in take(r) if m.type is MsgType.HEARTBEAT}
    assert commits == {2: 1, 3: 0}


def test_leader_appends_proposal_and_replicates_it() -> None:
    r = new_raft()
    become_leader(r)
    commit_noop(r)
    index = r.propose([b"some data"])
    assert index == 2
    assert r.log.entries[-1] == Entry(2, 1, b"some data")
    assert r.log.committed == 1, "not committed before a majority has it"
    assert sorted((m.type, m.to, m.term, m.index, m.log_term, m.entries, m.commit) for m in take(r)) == [
        (MsgType.APP, 2, 1, 1, 1, (Entry(2, 1, b"some data"),), 1),
        (MsgType.APP, 3, 1, 1, 1, (Entry(2, 1, b"some data"),), 1),
    ]


def test_leader_commits_on_majority_and_tells_followers() -> None:
    """The new commit index goes out with the next append or heartbeat (5.3), not in an append of its own:
    that would cost every write a second round of messages."""
    r = new_raft(heartbeat_tick=1)
    become_leader(r)
    commit_noop(r)
    r.propose([b"x"])
    persisted(r)
    take(r)
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=1, index=2))
    assert r.log.committed == 2
    assert it(r.log.next_committed_entries()) == [(1, 1), (2, 1)]
    assert take(r) == [], "a commit alone sends nothing"
    r.propose([b"y"])
    apps = of(take(r), MsgType.APP)
    assert {m.to for m in apps} == {2, 3}
    assert all(m.commit == 2 for m in apps)
    r.tick()
    beats = {m.to: m.commit for m in of(take(r), MsgType.HEARTBEAT)}
    # Never past what the follower is known to hold: node 3 has not acknowledged index 2.
    assert beats == {2: 2, 3: 1}


@pytest.mark.parametrize(
    ("size", "acceptors", "committed"),
    [
        (1, (), True),
        (3, (), False),
        (3, (2,), True),
        (3, (2, 3), True),
        (4, (2,), False),
        (4, (2, 3), True),
        (5, (), False),
        (5, (2,), False),
        (5, (2, 3), True),
        (5, (2, 3, 4), True),
        (5, (2, 3, 4, 5), True),
    ],
)
def test_leader_commits_only_what_a_majority_acknowledged(
    size: int, acceptors: tuple[int, ...], committed: bool
) -> None:
    r = new_raft(peers=range(1, size + 1))
    become_leader(r)
    if size > 1:
        commit_noop(r)
    li = r.log.last_index()
    r.propose([b"data"])
    persisted(r)
    for a in acceptors:
        r.step(Message(MsgType.APP_RESP, to=1, frm=a, term=r.term, index=li + 1))
    assert r.log.committed == (li + 1 if committed else li)


def test_leader_counts_its_own_copy_only_once_it_is_durable() -> None:
    """The owner may send a leader's entries while writing them (10.2.1): until its write is done, the
    leader's own copy must not count, or one durable copy out of three could be called committed."""
    r = new_raft()
    become_leader(r)
    commit_noop(r)
    r.propose([b"x"])
    take(r)
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=1, index=2))
    assert r.log.committed == 1, "committed on one durable copy"
    persisted(r)
    assert r.log.committed == 2
    assert take(r) == [], "the new commit index waits for the next append or heartbeat"


def test_two_followers_commit_without_the_leaders_own_write() -> None:
    r = new_raft()
    become_leader(r)
    commit_noop(r)
    r.propose([b"x"])
    for p in (2, 3):
        r.step(Message(MsgType.APP_RESP, to=1, frm=p, term=1, index=2))
    assert r.log.committed == 2


@pytest.mark.parametrize("prior", [[], [2], [1, 1], [1, 2], [1, 2, 2]])
def test_leader_commits_preceding_entries_with_its_own(prior: list[int]) -> None:
    r = new_raft(term=2, log=log_of(prior))
    become_leader(r)
    r.propose([b"some data"])
    li = r.log.last_index()
    for p in (2, 3):
        r.step(Message(MsgType.APP_RESP, to=1, frm=p, term=r.term, index=li))
    assert r.log.committed == li
    want = [(e.index, e.term) for e in log_of(prior)] + [(li - 1, 3), (li, 3)]
    assert it(r.log.next_committed_entries()) == want


@pytest.mark.parametrize(("ack", "commit"), [(1, 0), (2, 0), (3, 3)])
def test_leader_only_commits_by_counting_entries_of_its_term(ack: int, commit: int) -> None:
    # 5.4.2: entries of earlier terms are never committed by counting replicas.
    r = new_raft(term=2, log=log_of([1, 2]))
    become_leader(r)
    assert r.term == 3 and r.log.last_index() == 3
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=3, index=ack))
    assert r.log.committed == commit


def test_figure8_entry_on_a_majority_from_an_old_term_is_not_committed() -> None:
    """Figure 8 of the paper, (a)-(e), on five nodes.

    (a)/(b) happened before the test: S1 led term 2 and wrote (2, t2) to S2; S5 led term 3 and wrote (2, t3)
    to itself only. (c) S1 is re-elected in term 4 and copies (2, t2) to S3: it is now on a majority, but
    S1 must not commit it. (d) S1 crashes, S5 is elected by S3 and S4 and overwrites index 2 everywhere.
    Had S1 committed index 2, that would have lost a committed entry.
    """
    base = HardState(term=3, vote=NONE, commit=1)
    storages = {
        1: Storage(base, log_of([1, 2])),
        2: Storage(base, log_of([1, 2])),
        3: Storage(base, log_of([1])),
        4: Storage(base, log_of([1])),
        5: Storage(base, log_of([1, 3])),
    }
    net = Network(range(1, 6), storages=storages, pre_vote=False, check_quorum=False, max_entries_per_msg=1)

    # (c): S4 and S5 hear nothing from S1 once it leads; S3 gets the old-term entry but never the no-op
    # (probes it would reject anyway still reach it, so S1 can find where their logs match).
    def drop(m: Message) -> bool:
        if m.frm != 1 or m.type is not MsgType.APP:
            return False
        if m.to in (4, 5):
            return True
        s3_would_accept = m.index <= net.nodes[3].raft.log.last_index()
        return m.to == 3 and s3_would_accept and any(e.term == 4 for e in m.entries)

    net.drop = drop
    net.elect(1)
    assert net.term(1) == 4
    assert it(net.log(1)) == [(1, 1), (2, 2), (3, 4)]
    assert it(net.log(3)) == [(1, 1), (2, 2)]
    match = net.nodes[1].status().match
    assert sorted(i for i, idx in match.items() if idx >= 2) == [1, 2, 3], "index 2 is on a majority"
    assert net.commit(1) == 1, "an old-term entry on a majority must not be committed by counting"
    assert all(net.commit(i) == 1 for i in net.ids)

    # (d): S1 crashes; S5 wins with the votes of S3 and S4 (S2 has a newer last term and refuses).
    net.crash(1)
    net.drop = None
    net.elect(5)
    assert net.term(5) == 5
    votes = {m.frm: m.reject for m in net.delivered_of(MsgType.VOTE_RESP, to=5) if m.term == 5}
    assert votes == {2: True, 3: False, 4: False}
    net.heartbeat(5)
    for i in (2, 3, 4, 5):
        assert it(net.log(i)) == [(1, 1), (2, 3), (3, 5)], i
        assert net.commit(i) == 3
    # S1 comes back and is repaired too; nobody ever applied the overwritten (2, t2).
    net.restart(1)
    net.tick(5)
    net.deliver()
    assert it(net.log(1)) == [(1, 1), (2, 3), (3, 5)]
    for i in net.ids:
        assert (2, 2) not in it(net.applied[i])


def test_leader_retries_with_lower_next_index_after_reject() -> None:
    r = new_raft(term=1, log=log_of([1, 1, 1]))
    become_leader(r)
    take(r)
    # No hint from the follower (log_term 0): the leader just retries one index lower.
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=2, index=3, reject=True, reject_hint=2))
    (m,) = take(r)
    assert (m.type, m.to, m.index, m.log_term) == (MsgType.APP, 2, 2, 1)
    assert it(m.entries) == [(3, 1), (4, 2)]
    # A duplicate of the same rejection is stale and must not move next again.
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=2, index=3, reject=True, reject_hint=2))
    assert take(r) == []
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=2, index=2, reject=True, reject_hint=1))
    (m,) = take(r)
    assert (m.type, m.to, m.index, m.log_term) == (MsgType.APP, 2, 1, 1)
    assert it(m.entries) == [(2, 1), (3, 1), (4, 2)]


FIGURE7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]


@pytest.mark.parametrize(
    "follower",
    [
        pytest.param([1, 1, 1, 4, 4, 5, 5, 6, 6], id="a-missing-one"),
        pytest.param([1, 1, 1, 4], id="b-missing-many"),
        pytest.param([1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6], id="c-extra-uncommitted"),
        pytest.param([1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], id="d-extra-newer-term"),
        pytest.param([1, 1, 1, 4, 4, 4, 4], id="e-missing-and-extra"),
        pytest.param([1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], id="f-many-conflicting-terms"),
    ],
)
def test_leader_brings_every_figure7_follower_in_sync(follower: list[int]) -> None:
    # Node 3 stays down; it only grants the leader its vote (injected below), as in etcd's test.
    storages = {
        1: Storage(HardState(8, NONE, 3), log_of(FIGURE7_LEADER)),
        2: Storage(HardState(7, NONE, 3), log_of(follower)),
        3: Storage(HardState(8, NONE, 3), log_of(FIGURE7_LEADER)),
    }
    net = Network(storages=storages, pre_vote=False, check_quorum=False)
    net.crash(3)
    net.nodes[1].campaign()
    net.nodes[1].step(Message(MsgType.VOTE_RESP, to=1, frm=3, term=9))
    net.deliver()
    assert net.role(1) is Role.LEADER and net.term(1) == 9
    want = [*it(log_of(FIGURE7_LEADER)), (11, 9)]
    assert it(net.log(1)) == want
    assert it(net.log(2)) == want
    assert it(net.storage[2].entries) == want
    assert net.commit(1) == net.commit(2) == 11


# ==================================================================================================
# RequestVote receiver: reply false if term < currentTerm; grant if votedFor is null or candidateId and the
# candidate's log is at least as up-to-date as the receiver's (5.2, 5.4.1).
# ==================================================================================================
def test_vote_request_of_an_older_term_is_not_granted() -> None:
    r = new_raft(term=3)
    r.step(Message(MsgType.VOTE, to=1, frm=2, term=2, index=10, log_term=2))
    assert r.vote == NONE and r.term == 3
    assert not [m for m in take(r) if m.type is MsgType.VOTE_RESP and not m.reject]


@pytest.mark.parametrize(
    ("vote", "candidate", "granted"),
    [
        (NONE, 2, True),
        (NONE, 3, True),
        (2, 2, True),  # a repeat to the same candidate (its first answer may be lost)
        (3, 3, True),
        (2, 3, False),  # at most one vote per term
        (3, 2, False),
    ],
)
def test_at_most_one_vote_per_term(vote: int, candidate: int, granted: bool) -> None:
    r = new_raft(term=1, vote=vote)
    r.step(Message(MsgType.VOTE, to=1, frm=candidate, term=1))
    (m,) = take(r)
    assert (m.type, m.to, m.term, m.reject) == (MsgType.VOTE_RESP, candidate, 1, not granted)
    assert r.vote == (candidate if granted else vote)
    assert r.term == 1


def test_follower_of_a_known_leader_does_not_vote_in_that_term() -> None:
    r = new_raft(term=1)
    r.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=1))
    take(r)
    r.step(Message(MsgType.VOTE, to=1, frm=3, term=1))
    (m,) = take(r)
    assert (m.type, m.reject) == (MsgType.VOTE_RESP, True)
    assert r.vote == NONE


def test_vote_is_granted_once_per_term_across_candidates_and_terms() -> None:
    r = new_raft(term=1)
    r.step(Message(MsgType.VOTE, to=1, frm=2, term=2))
    r.step(Message(MsgType.VOTE, to=1, frm=3, term=2))
    r.step(Message(MsgType.VOTE, to=1, frm=3, term=3))
    assert [(m.to, m.term, m.reject) for m in take(r)] == [(2, 2, False), (3, 2, True), (3, 3, False)]
    assert (r.term, r.vote) == (3, 3)


@pytest.mark.parametrize(
    ("voter_log", "cand_term", "cand_index", "granted"),
    [
        # same last term: the index decides
        ([1], 1, 1, True),
        ([1], 1, 2, True),
        ([1, 1], 1, 1, False),
        ([1, 1], 1, 2, True),
        ([1, 1], 1, 3, True),
        # a higher last term wins even with a shorter log
        ([1], 2, 1, True),
        ([1, 1, 1], 2, 1, True),
        ([1, 1], 2, 2, True),
        # a lower last term loses even with a longer log
        ([2], 1, 1, False),
        ([2], 1, 5, False),
        ([1, 2], 1, 9, False),
        # empty logs
        ([], 0, 0, True),
        ([1], 0, 0, False),
    ],
)
def test_vote_only_for_an_up_to_date_log(
    voter_log: list[int], cand_term: int, cand_index: int, granted: bool
) -> None:
    r = new_raft(term=2, log=log_of(voter_log))
    r.step(Message(MsgType.VOTE, to=1, frm=2, term=3, index=cand_index, log_term=cand_term))
    (m,) = take(r)
    assert (m.type, m.to, m.reject) == (MsgType.VOTE_RESP, 2, not granted)
    assert r.term == 3
    assert r.vote == (2 if granted else NONE)


# ==================================================================================================
# AppendEntries receiver: reject if the log has no entry at prevLogIndex of prevLogTerm; delete a conflicting
# entry and all that follow; append new entries; commitIndex = min(leaderCommit, index of last new entry).
# ==================================================================================================
@pytest.mark.parametrize(
    ("log_term", "index", "want_index", "reject", "hint", "hint_term"),
    [
        (0, 0, 1, False, 0, 0),  # before our commit: we answer with our commit index
        (1, 1, 1, False, 0, 0),
        (2, 2, 2, False, 0, 0),
        (1, 2, 2, True, 1, 1),  # entry 2 has term 2, not 1
        (3, 3, 3, True, 2, 2),  # we have no entry 3
        (2, 9, 9, True, 2, 2),
    ],
)
def test_follower_rejects_append_whose_previous_entry_does_not_match(
    log_term: int, index: int, want_index: int, reject: bool, hint: int, hint_term: int
) -> None:
    r = new_raft(term=2, commit=1, log=log_of([1, 2]))
    r.step(Message(MsgType.APP, to=1, frm=2, term=2, index=index, log_term=log_term, commit=1))
    (m,) = take(r)
    assert (m.type, m.to, m.term, m.index, m.reject) == (MsgType.APP_RESP, 2, 2, want_index, reject)
    if reject:
        assert (m.reject_hint, m.log_term) == (hint, hint_term)
    assert it(r.log.entries) == [(1, 1), (2, 2)]


@pytest.mark.parametrize(
    ("index", "log_term", "entries", "want", "want_unstable"),
    [
        (2, 2, [(3, 3)], [(1, 1), (2, 2), (3, 3)], [(3, 3)]),
        (1, 1, [(2, 3), (3, 4)], [(1, 1), (2, 3), (3, 4)], [(2, 3), (3, 4)]),
        (0, 0, [(1, 1)], [(1, 1), (2, 2)], []),  # already present: nothing is truncated
        (0, 0, [(1, 1), (2, 2)], [(1, 1), (2, 2)], []),
        (0, 0, [(1, 3)], [(1, 3)], [(1, 3)]),  # conflict at 1: drop it and all that follow
        (1, 1, [(2, 2), (3, 4)], [(1, 1), (2, 2), (3, 4)], [(3, 4)]),
    ],
)
def test_follower_truncates_conflicts_and_appends_new_entries(
    index: int,
    log_term: int,
    entries: list[tuple[int, int]],
    want: list[tuple[int, int]],
    want_unstable: list[tuple[int, int]],
) -> None:
    r = new_raft(term=2, log=log_of([1, 2]))
    ents = tuple(Entry(i, t, b"new") for i, t in entries)
    r.step(Message(MsgType.APP, to=1, frm=2, term=4, index=index, log_term=log_term, entries=ents))
    assert it(r.log.entries) == want
    assert it(r.log.unstable_entries()) == want_unstable
    (m,) = take(r)
    assert (m.type, m.reject, m.index) == (MsgType.APP_RESP, False, index + len(entries))


def test_follower_commit_is_min_of_leader_commit_and_last_new_entry() -> None:
    # Our entry 3 (term 2) came from a dead leader; the leader of term 3 has a different entry 3. When it
    # sends us only entry 2 with commit 3, committing our own entry 3 would commit the wrong entry.
    r = new_raft(term=2, log=log_of([1, 1, 2]))
    r.step(
        Message(
            MsgType.APP, to=1, frm=2, term=3, index=1, log_term=1, entries=(Entry(2, 1, b"e2t1"),), commit=3
        )
    )
    assert r.log.committed == 2
    assert it(r.log.entries) == [(1, 1), (2, 1), (2 + 1, 2)]
    (m,) = take(r)
    assert (m.reject, m.index) == (False, 2)
    # And leaderCommit below the last new entry bounds it from the other side.
    r.step(
        Message(MsgType.APP, to=1, frm=2, term=3, index=2, log_term=1, entries=(Entry(3, 3, b"n"),), commit=2)
    )
    assert r.log.committed == 2
    r.step(Message(MsgType.APP, to=1, frm=2, term=3, index=3, log_term=3, commit=3))
    assert r.log.committed == 3


def test_follower_commit_never_moves_backwards() -> None:
    r = new_raft(term=1, log=log_of([1, 1, 1]), commit=3)
    r.step(Message(MsgType.APP, to=1, frm=2, term=1, index=3, log_term=1, commit=1))
    r.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=1, commit=0))
    assert r.log.committed == 3


def test_follower_commits_as_told_by_the_leader() -> None:
    r = new_raft(term=1)
    ents = tuple(Entry(i, 1, b"d") for i in (1, 2, 3))
    r.step(Message(MsgType.APP, to=1, frm=2, term=1, index=0, log_term=0, entries=ents, commit=2))
    assert r.log.committed == 2
    assert it(r.log.next_committed_entries()) == [(1, 1), (2, 1)]


def test_all_servers_apply_the_same_committed_entries_in_order() -> None:
    net = Network()
    net.elect(1)
    for k in range(5):
        net.propose(1, f"cmd{k}".encode())
    net.deliver()
    net.tick_all(1)  # a heartbeat carries the final commit index to the followers
    want = [b"", *(f"cmd{k}".encode() for k in range(5))]
    for i in net.ids:
        assert [e.data for e in net.applied[i]] == want, i
        assert [e.index for e in net.applied[i]] == list(range(1, 7))


# ==================================================================================================
# Election timeouts are randomised in [election_tick, 2 * election_tick) (5.2), so split votes resolve.
# ==================================================================================================
def ticks_until_campaign(r: Raft) -> int:
    term = r.term
    for n in range(1, 4 * ET):
        r.tick()
        if r.term != term:
            return n
    raise AssertionError("never campaigned")


def test_election_timeout_is_randomised_within_one_to_two_election_ticks() -> None:
    seen = {ticks_until_campaign(new_raft(seed=seed)) for seed in range(300)}
    assert seen == set(range(ET, 2 * ET))


def test_election_timeout_is_redrawn_for_every_election() -> None:
    r = new_raft(seed=7)
    seen = [ticks_until_campaign(r) for _ in range(40)]
    assert all(ET <= n < 2 * ET for n in seen)
    assert len(set(seen)) > 3


def test_randomised_timeouts_let_one_of_five_nodes_win_alone() -> None:
    # All five start together; with distinct timeouts one of them campaigns first and wins before any other
    # times out, so the first election is decided without a split vote.
    net = Network(range(1, 6), seed=3, pre_vote=False, check_quorum=False)
    for _ in range(2 * ET):
        net.tick_all(1)
        if net.leaders():
            break
    (leader,) = net.leaders()
    assert net.term(leader) == 1
    assert all(net.term(i) == 1 and net.lead(i) == leader for i in net.ids)
