"""Tests for the core's extensions beyond Figure 2, as etcd-io/raft implements them.

Pre-vote and check-quorum (dissertation 9.6, 6.2), fast log backtracking, batching and pipelining of
AppendEntries, ReadIndex (6.4), leadership transfer (3.10), the Ready/advance contract, and restarting from
persisted state only. Each test asserts concrete roles, terms, indices and message fields.
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
    ProposalDropped,
    Raft,
    RawNode,
    ReadState,
    Role,
)
from raftd.core.progress import ProgressState
from raftd.core.types import CAMPAIGN_TRANSFER
from tests.core.network import Network, Storage, log_of

ET = 10


def new_raft(
    node_id: int = 1,
    peers: Sequence[int] = (1, 2, 3),
    *,
    term: int = 0,
    vote: int = NONE,
    log: Iterable[Entry] = (),
    **cfg: object,
) -> Raft:
    """A single Raft with the extensions on (the defaults), driven by hand."""
    cfg.setdefault("election_tick", ET)
    config = Config(id=node_id, peers=tuple(peers), rng=random.Random(node_id), **cfg)  # type: ignore[arg-type]
    return Raft(config, HardState(term, vote, 0), entries=list(log))


def new_node(
    node_id: int = 1, hs: HardState = HardState(), log: Iterable[Entry] = (), **cfg: object
) -> RawNode:
    """A RawNode restarted from (hs, log), with the paper's rules only unless cfg turns extensions on."""
    cfg.setdefault("election_tick", ET)
    cfg.setdefault("pre_vote", False)
    cfg.setdefault("check_quorum", False)
    config = Config(id=node_id, peers=(1, 2, 3), rng=random.Random(node_id), **cfg)  # type: ignore[arg-type]
    return RawNode(config, hs, entries=list(log))


def take(r: Raft) -> list[Message]:
    msgs, r.msgs = r.msgs, []
    return msgs


def settled(net: Network, leader: int = 1) -> Network:
    """Elect `leader` and let a heartbeat round carry the commit index everywhere."""
    net.elect(leader)
    net.tick_all(1)
    return net


def it(entries: Iterable[Entry]) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in entries]


# ==================================================================================================
# Pre-vote (9.6)
# ==================================================================================================
def test_prevote_node_back_from_a_partition_does_not_disturb_the_leader() -> None:
    net = settled(Network(pre_vote=True, check_quorum=True))
    net.isolate(3)
    net.tick_all(10 * ET)  # node 3 times out again and again, alone
    assert net.term(3) == 1, "a pre-candidate must not raise its term"
    assert net.role(3) is Role.PRE_CANDIDATE
    assert net.nodes[3].raft.vote == net.storage[3].hard_state.vote
    net.heal()
    net.tick_all(2 * ET)
    assert net.leaders() == [1]
    assert [net.term(i) for i in net.ids] == [1, 1, 1]
    assert (net.role(3), net.lead(3)) == (Role.FOLLOWER, 1)
    index = net.propose(1, b"after")
    net.deliver()
    net.tick_all(1)
    assert net.applied[3][-1] == Entry(index, 1, b"after")


def test_without_prevote_the_returning_node_deposes_the_leader() -> None:
    # The contrast that shows the test above can fail: plain Raft lets the isolated node's term win.
    net = settled(Network(pre_vote=False, check_quorum=False))
    net.isolate(3)
    net.tick_all(10 * ET)
    assert net.term(3) > 2
    net.heal()
    net.tick_all(1)
    assert net.term(1) > 1
    assert net.leaders() != [1] or net.term(1) > 1


def test_prevote_changes_neither_term_nor_vote() -> None:
    r = new_raft(2, term=2, log=log_of([1, 2]))
    r.step(Message(MsgType.PRE_VOTE, to=2, frm=3, term=3, index=2, log_term=2))
    (m,) = take(r)
    assert (m.type, m.to, m.term, m.reject) == (MsgType.PRE_VOTE_RESP, 3, 3, False)
    assert (r.term, r.vote, r.role) == (2, NONE, Role.FOLLOWER)
    # The vote of term 3 is still free after granting a pre-vote for it.
    r.step(Message(MsgType.VOTE, to=2, frm=1, term=3, index=2, log_term=2))
    (m,) = take(r)
    assert (m.type, m.to, m.reject) == (MsgType.VOTE_RESP, 1, False)
    assert (r.term, r.vote) == (3, 1)


def test_precandidate_asks_for_next_term_without_taking_it() -> None:
    r = new_raft(1, term=4, vote=2, log=log_of([1, 4]))
    r.step(Message(MsgType.HUP))
    assert (r.role, r.term, r.vote) == (Role.PRE_CANDIDATE, 4, 2)
    assert r.hard_state() == HardState(4, 2, 0)
    assert sorted((m.to, m.type.value, m.term, m.index, m.log_term) for m in take(r)) == [
        (2, "pre-vote", 5, 2, 4),
        (3, "pre-vote", 5, 2, 4),
    ]
    # Winning the pre-vote starts the real election for term 5.
    r.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=5))
    assert (r.role, r.term, r.vote) == (Role.CANDIDATE, 5, 1)
    assert sorted((m.to, m.type.value, m.term) for m in take(r)) == [(2, "vote", 5), (3, "vote", 5)]


def test_lost_prevote_returns_to_follower_in_the_same_term() -> None:
    r = new_raft(1, term=4, log=log_of([1]))
    r.step(Message(MsgType.HUP))
    take(r)
    r.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=4, reject=True))
    r.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=3, term=4, reject=True))
    assert (r.role, r.term, r.vote) == (Role.FOLLOWER, 4, NONE)


def test_prevote_refused_to_a_stale_log() -> None:
    r = new_raft(2, term=2, log=log_of([1, 2, 2]))
    r.step(Message(MsgType.PRE_VOTE, to=2, frm=3, term=3, index=2, log_term=2))
    (m,) = take(r)
    assert (m.type, m.reject, m.term) == (MsgType.PRE_VOTE_RESP, True, 2)
    assert r.term == 2


def test_prevote_of_an_older_term_is_refused_with_our_term() -> None:
    # The pre-candidate learns the newer term and stops asking.
    r = new_raft(2, term=5)
    r.step(Message(MsgType.PRE_VOTE, to=2, frm=3, term=3))
    (m,) = take(r)
    assert (m.type, m.reject, m.term) == (MsgType.PRE_VOTE_RESP, True, 5)
    cand = new_raft(3, term=2)
    cand.step(Message(MsgType.HUP))
    take(cand)
    cand.step(m)
    assert (cand.role, cand.term) == (Role.FOLLOWER, 5)


# ==================================================================================================
# Check-quorum and the leader lease (6.2, 4.2.3)
# ==================================================================================================
def test_leader_without_a_live_quorum_steps_down() -> None:
    net = settled(Network(check_quorum=True))
    # Align the check-quorum window: after ET ticks as leader a check has just passed, and the heartbeat of
    # that same tick was acknowledged inside the new window.
    net.tick_all(ET - 1)
    assert net.nodes[1].raft.election_elapsed == 0
    net.isolate(1)
    # The current window still holds those acks; the next one hears from nobody and ends at tick 2 * ET.
    net.tick(1, 2 * ET - 1)
    assert net.role(1) is Role.LEADER
    net.tick(1, 1)
    assert (net.role(1), net.lead(1), net.term(1)) == (Role.FOLLOWER, NONE, 1)


def test_leader_with_a_live_quorum_stays_leader() -> None:
    net = settled(Network(check_quorum=True))
    net.isolate(3)  # one follower gone is still a quorum of three
    net.tick_all(5 * ET)
    assert net.role(1) is Role.LEADER and net.term(1) == 1


def test_without_check_quorum_an_isolated_leader_keeps_leading() -> None:
    net = settled(Network(check_quorum=False, pre_vote=False))
    net.isolate(1)
    net.tick(1, 5 * ET)
    assert net.role(1) is Role.LEADER


@pytest.mark.parametrize("pre_vote", [False, True])
def test_follower_in_lease_ignores_vote_requests(pre_vote: bool) -> None:
    r = new_raft(2, term=1, pre_vote=pre_vote)
    r.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1))
    take(r)
    for _ in range(ET - 1):
        r.tick()
    kind = MsgType.PRE_VOTE if pre_vote else MsgType.VOTE
    r.step(Message(kind, to=2, frm=3, term=2))
    assert take(r) == []
    assert (r.term, r.vote, r.lead, r.role) == (1, NONE, 1, Role.FOLLOWER)


def test_leader_in_lease_ignores_vote_requests() -> None:
    r = new_raft(1, term=0)
    r.step(Message(MsgType.HUP))
    r.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=1))
    r.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=1))
    assert r.role is Role.LEADER
    take(r)
    r.step(Message(MsgType.VOTE, to=1, frm=3, term=2, index=5, log_term=5))
    assert take(r) == []
    assert (r.role, r.term) == (Role.LEADER, 1)


def test_transfer_vote_overrides_the_lease() -> None:
    r = new_raft(2, term=1)
    r.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1))
    take(r)
    r.step(Message(MsgType.VOTE, to=2, frm=3, term=2, context=CAMPAIGN_TRANSFER))
    (m,) = take(r)
    assert (m.type, m.to, m.term, m.reject) == (MsgType.VOTE_RESP, 3, 2, False)
    assert (r.term, r.vote, r.lead) == (2, 3, NONE)


def test_vote_granted_once_the_lease_has_expired() -> None:
    r = new_raft(2, term=1)
    r.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1))
    take(r)
    for _ in range(ET):
        r.tick()
    take(r)
    r.step(Message(MsgType.VOTE, to=2, frm=3, term=2))
    (m,) = take(r)
    assert (m.type, m.term, m.reject) == (MsgType.VOTE_RESP, 2, False)
    assert (r.term, r.vote) == (2, 3)


# ==================================================================================================
# Fast backtracking: one round trip per conflicting term, not per entry
# ==================================================================================================
def backtrack_net(leader_log: list[int], follower_log: list[int], term: int) -> Network:
    storages = {
        1: Storage(HardState(term, NONE, 1), log_of(leader_log)),
        2: Storage(HardState(term, NONE, 1), log_of(follower_log)),
        3: Storage(HardState(term, NONE, 1), log_of(leader_log)),
    }
    return Network(storages=storages)


@pytest.mark.parametrize("n", [5, 100])
def test_fast_backtracking_skips_a_whole_term_per_round_trip(n: int) -> None:
    # Leader: 1 | n x t2 | n x t4 | n x t6.  Follower: 1 | n x t2 | n x t3 | n x t5. They match up to 1 + n.
    leader = [1] + [2] * n + [4] * n + [6] * n
    follower = [1] + [2] * n + [3] * n + [5] * n
    net = backtrack_net(leader, follower, term=6)
    net.elect(1)
    rejects = [m for m in net.delivered_of(MsgType.APP_RESP, frm=2) if m.reject]
    # Two rejections (one per conflicting term), whatever the length of the divergence.
    assert [(m.index, m.reject_hint, m.log_term) for m in rejects] == [
        (1 + 3 * n, 1 + 3 * n, 5),
        (1 + 2 * n, 1 + 2 * n, 3),
    ]
    probes = [m.index for m in net.delivered_of(MsgType.APP, to=2)]
    assert probes[:3] == [1 + 3 * n, 1 + 2 * n, 1 + n]
    assert it(net.log(2)) == it(net.log(1))
    assert net.log(1)[-1].term == 7


def test_fast_backtracking_jumps_to_the_end_of_a_short_follower_log() -> None:
    net = backtrack_net([1] * 300, [1], term=1)
    net.elect(1)
    rejects = [m for m in net.delivered_of(MsgType.APP_RESP, frm=2) if m.reject]
    assert [(m.index, m.reject_hint) for m in rejects] == [(300, 1)]
    assert len(net.log(2)) == 301


def test_fast_backtracking_over_a_long_stale_tail() -> None:
    # The follower holds 200 entries of a term the leader never had: one round trip removes them all.
    net = backtrack_net([1] + [3] * 200, [1] + [2] * 250, term=3)
    net.elect(1)
    rejects = [m for m in net.delivered_of(MsgType.APP_RESP, frm=2) if m.reject]
    assert len(rejects) == 1
    assert it(net.log(2)) == it(net.log(1))


# ==================================================================================================
# Batching and pipelining of AppendEntries
# ==================================================================================================
def test_max_entries_per_msg_bounds_each_append() -> None:
    net = settled(Network(max_entries_per_msg=3))
    start = len(net.sent)
    first = net.nodes[1].propose_batch([f"v{k}".encode() for k in range(10)])
    net.deliver()
    apps = [m for m in net.sent[start:] if m.type is MsgType.APP and m.to == 2 and m.entries]
    assert [len(m.entries) for m in apps] == [3, 3, 3, 1]
    assert [e.index for m in apps for e in m.entries] == list(range(first, first + 10))
    assert all(len(m.entries) <= 3 for m in net.sent if m.type is MsgType.APP)
    assert it(net.log(2)) == it(net.log(1)) and len(net.log(1)) == 11


def test_max_bytes_per_msg_bounds_each_append_but_never_starves_a_big_entry() -> None:
    net = settled(Network(max_bytes_per_msg=10))
    start = len(net.sent)
    net.nodes[1].propose_batch([b"aaaa"] * 5 + [b"x" * 25, b"bbbb"])
    net.deliver()
    apps = [m for m in net.sent[start:] if m.type is MsgType.APP and m.to == 3 and m.entries]
    assert [[len(e.data) for e in m.entries] for m in apps] == [[4, 4], [4, 4], [4], [25], [4]]
    assert len(net.log(3)) == 8


def test_pipelining_keeps_at_most_max_inflight_appends_per_follower() -> None:
    net = settled(Network(max_inflight=3))
    assert net.nodes[1].raft.prs[2].state is ProgressState.REPLICATE
    for k in range(10):
        net.propose(1, f"p{k}".encode())
    apps = net.queued_of(MsgType.APP, to=2)
    assert [[e.index for e in m.entries] for m in apps] == [[2], [3], [4]]
    # One acknowledgement frees one slot, and the leader fills it with everything that is waiting.
    net.deliver_one(lambda m: m.type is MsgType.APP and m.to == 2)
    net.deliver_one(lambda m: m.type is MsgType.APP_RESP and m.frm == 2)
    apps = [m for m in net.queued_of(MsgType.APP, to=2) if m.entries]
    assert [[e.index for e in m.entries] for m in apps] == [[3], [4], list(range(5, 12))]
    assert [last for last, _ in net.nodes[1].raft.prs[2].inflights] == [3, 4, 11]
    net.deliver()
    assert len(net.log(2)) == 11


def test_the_window_is_full_once_its_bytes_are_in_flight() -> None:
    """etcd's MaxInflightBytes: large entries fill the window long before its count does, so a heartbeat
    is never queued behind more than about max_inflight_bytes of appends."""
    net = settled(Network(max_inflight=64, max_inflight_bytes=250))
    for k in range(10):
        net.propose(1, bytes([k]) * 100)
    apps = [m for m in net.queued_of(MsgType.APP, to=2) if m.entries]
    assert [len(m.entries) for m in apps] == [1, 1, 1], "full at 300 bytes of 250, not at 64 messages"
    pr = net.nodes[1].raft.prs[2]
    assert pr.inflight_bytes == 300 and pr.is_paused()
    # Each acknowledgement frees its message's bytes, and the leader fills the room it made.
    net.deliver_one(lambda m: m.type is MsgType.APP and m.to == 2 and bool(m.entries))
    net.deliver_one(lambda m: m.type is MsgType.APP_RESP and m.frm == 2)
    assert pr.inflight_bytes == 300 and pr.is_paused(), "the room (50 bytes) takes one entry"
    net.deliver()
    assert len(net.log(2)) == len(net.log(1)) and pr.inflight_bytes == 0


def test_probing_sends_one_append_at_a_time() -> None:
    net = Network()
    elect_only = {MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP, MsgType.VOTE, MsgType.VOTE_RESP}
    net.nodes[1].campaign()
    net.deliver(only=lambda m: m.type in elect_only)
    assert net.role(1) is Role.LEADER
    assert net.nodes[1].raft.prs[2].state is ProgressState.PROBE
    for k in range(5):
        net.propose(1, f"p{k}".encode())
    # Only the first probe (the no-op) is out; the proposals wait for its answer.
    assert [[e.index for e in m.entries] for m in net.queued_of(MsgType.APP, to=2)] == [[1]]
    net.deliver_one(lambda m: m.type is MsgType.APP and m.to == 2)
    net.deliver_one(lambda m: m.type is MsgType.APP_RESP and m.frm == 2)
    assert net.nodes[1].raft.prs[2].state is ProgressState.REPLICATE
    assert [[e.index for e in m.entries] for m in net.queued_of(MsgType.APP, to=2) if m.entries] == [
        [2, 3, 4, 5, 6]
    ]


def test_heartbeat_commits_only_what_an_append_of_this_leader_verified() -> None:
    """A follower may hold entries no leader of this term has matched (another leader's uncommitted tail,
    or a log rebuilt after its disk was wiped); a heartbeat's commit index must not commit those."""
    r = new_raft(term=2, log=log_of([1, 1, 1]))
    r.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=2, commit=3))
    assert r.log.committed == 0
    (resp,) = take(r)
    assert (resp.type, resp.index, resp.commit) == (MsgType.HEARTBEAT_RESP, 3, 0)
    # An AppendEntries of this leader that matches at index 3 verifies the log up to there.
    r.step(Message(MsgType.APP, to=1, frm=2, term=2, index=3, log_term=1, commit=3))
    assert r.log.committed == 3
    assert r.verified == 3


def test_leader_repairs_a_follower_whose_commit_lags() -> None:
    """Heartbeats alone cannot move a restarted follower's commit; its answer must draw an AppendEntries."""
    net = settled(Network())
    # Node 2 stores the entry but never hears that it committed, then restarts (verified nothing since).
    net.drop = lambda m: m.to == 2 and m.type is MsgType.APP and not m.entries
    index = net.nodes[1].propose(b"x")
    net.deliver()
    assert net.commit(1) == index and net.commit(2) < index
    net.crash(2)
    net.restart(2)
    net.heal()
    net.tick(1, 1)  # one heartbeat round: nothing else is pending
    net.deliver()
    assert net.commit(2) == index


def test_leader_notices_a_follower_that_lost_its_log() -> None:
    """A wiped follower answers heartbeats with a last index below what it had acknowledged: the leader
    must stop trusting its match index, probe again, and rebuild the follower's log."""
    net = settled(Network())
    for k in range(5):
        net.propose(1, f"p{k}".encode())
    net.deliver()
    assert net.nodes[1].raft.prs[3].match == 6
    net.crash(3)
    net.storage[3] = Storage()
    net.restart(3)
    net.tick_all(1)
    net.deliver()
    assert it(net.log(3)) == it(net.log(1))
    assert net.commit(3) == net.commit(1) == 6
    assert net.nodes[1].raft.prs[3].match == 6


def test_probe_answered_at_the_current_match_resumes_streaming() -> None:
    """A follower whose probe reply repeats its match index is in sync: back to REPLICATE at once."""
    net = settled(Network())
    pr = net.nodes[1].raft.prs[2]
    match = pr.match
    pr.become_probe()
    leader = net.nodes[1].raft
    leader.step(Message(MsgType.APP_RESP, to=1, frm=2, term=leader.term, index=match))
    assert pr.state is ProgressState.REPLICATE
    assert pr.match == match


def test_probing_after_reject_sends_one_append_at_a_time() -> None:
    net = backtrack_net([1] + [3] * 20, [1] + [2] * 20, term=3)
    net.nodes[1].campaign()
    elect_only = {MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP, MsgType.VOTE, MsgType.VOTE_RESP}
    net.deliver(only=lambda m: m.type in elect_only)
    for k in range(3):
        net.propose(1, f"p{k}".encode())
    assert len(net.queued_of(MsgType.APP, to=2)) == 1
    net.deliver_one(lambda m: m.type is MsgType.APP and m.to == 2)
    net.deliver_one(lambda m: m.type is MsgType.APP_RESP and m.frm == 2)
    (retry,) = net.queued_of(MsgType.APP, to=2)
    assert (retry.index, retry.log_term) == (1, 1)


# ==================================================================================================
# ReadIndex (6.4)
# ==================================================================================================
def test_read_index_needs_a_heartbeat_quorum() -> None:
    net = settled(Network(range(1, 6)))
    commit = net.commit(1)
    net.nodes[1].read_index(b"r1")
    net.process(1)
    beats = net.queued_of(MsgType.HEARTBEAT, frm=1)
    assert sorted(m.to for m in beats) == [2, 3, 4, 5]
    assert all(m.context == b"r1" for m in beats)
    # Later writes do not move the read point recorded on arrival.
    net.propose(1, b"later")
    for follower in (2, 3):
        net.deliver_one(lambda m, f=follower: m.type is MsgType.HEARTBEAT and m.to == f)
    net.deliver_one(lambda m: m.type is MsgType.HEARTBEAT_RESP and m.frm == 2)
    assert net.read_states[1] == [], "two of five is not a quorum"
    net.deliver_one(lambda m: m.type is MsgType.HEARTBEAT_RESP and m.frm == 3)
    assert net.read_states[1] == [ReadState(commit, b"r1")]
    net.deliver()
    assert net.read_states[1] == [ReadState(commit, b"r1")], "released exactly once"


def test_read_index_waits_for_the_leaders_noop_to_commit() -> None:
    net = Network()
    elect_only = {MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP, MsgType.VOTE, MsgType.VOTE_RESP}
    net.nodes[1].campaign()
    net.deliver(only=lambda m: m.type in elect_only)
    assert net.role(1) is Role.LEADER and net.commit(1) == 0
    net.nodes[1].read_index(b"early")
    net.process(1)
    read_beats = [m for m in net.queued_of(MsgType.HEARTBEAT) if m.context]
    assert read_beats == [], "no read heartbeat before the no-op commits"
    net.deliver(only=lambda m: m.type is MsgType.APP or m.type is MsgType.APP_RESP)
    assert net.commit(1) == 1
    assert net.read_states[1] == []
    assert {m.to for m in net.queued_of(MsgType.HEARTBEAT) if m.context == b"early"} == {2, 3}
    net.deliver()
    assert net.read_states[1] == [ReadState(1, b"early")]


def test_read_at_a_follower_is_forwarded_and_answered() -> None:
    net = settled(Network())
    net.propose(1, b"x")
    net.deliver()
    net.nodes[3].read_index(b"f")
    net.deliver()
    (fwd,) = net.delivered_of(MsgType.READ_INDEX)
    assert (fwd.frm, fwd.to, fwd.context) == (3, 1, b"f")
    (resp,) = net.delivered_of(MsgType.READ_INDEX_RESP)
    assert (resp.frm, resp.to, resp.index, resp.context) == (1, 3, 2, b"f")
    assert net.read_states[3] == [ReadState(2, b"f")]
    assert net.read_states[1] == []


def test_read_at_a_follower_right_after_a_write_can_be_served() -> None:
    """No append carries a commit index alone, so a follower may hold a committed write without knowing it;
    the heartbeats that confirm its read carry the commit, so it can serve the read at once."""
    net = settled(Network())
    index = net.propose(1, b"x")
    net.deliver()
    assert net.commit(1) == index and net.commit(2) == index - 1
    mark = len(net.delivered)
    net.nodes[2].read_index(b"f")
    net.deliver()
    assert net.read_states[2] == [ReadState(index, b"f")]
    assert net.commit(2) == index
    # From the heartbeat itself: no append (the leader's repair of a lagging commit) was needed.
    assert [m for m in net.delivered[mark:] if m.type is MsgType.APP] == []
    assert [e.index for e in net.applied[2]][-1] == index


def test_deposed_leader_cannot_answer_a_read() -> None:
    net = settled(Network())
    net.isolate(1)
    net.nodes[1].read_index(b"stale")
    net.tick_all(3 * ET)  # the majority side elects a new leader meanwhile
    (leader,) = [i for i in net.leaders() if i != 1]
    assert net.term(leader) > 1
    net.heal()
    net.tick_all(ET)
    assert net.role(1) is Role.FOLLOWER
    assert net.read_states[1] == []
    assert not net.delivered_of(MsgType.READ_INDEX_RESP)


def test_isolated_leader_without_check_quorum_still_cannot_answer_a_read() -> None:
    net = settled(Network(check_quorum=False, pre_vote=False))
    net.isolate(1)
    net.nodes[1].read_index(b"stale")
    net.tick_all(3 * ET)
    assert net.role(1) is Role.LEADER, "without check-quorum it still believes it leads"
    assert net.read_states[1] == []


def test_read_without_a_known_leader_is_dropped() -> None:
    node = new_node()
    with pytest.raises(ProposalDropped):
        node.read_index(b"r")


# ==================================================================================================
# Leadership transfer (3.10)
# ==================================================================================================
def test_transfer_brings_target_up_to_date_then_times_it_out() -> None:
    net = settled(Network())
    net.isolate(3)
    for k in range(4):
        net.propose(1, f"w{k}".encode())
    net.deliver()
    net.heal()
    assert len(net.log(3)) == 1 and len(net.log(1)) == 5
    start = len(net.sent)
    net.nodes[1].transfer_leader(3)
    assert net.nodes[1].raft.lead_transferee == 3
    with pytest.raises(ProposalDropped):
        net.nodes[1].propose(b"refused")
    net.deliver()
    sent = net.sent[start:]
    (tn,) = [k for k, m in enumerate(sent) if m.type is MsgType.TIMEOUT_NOW]
    assert (sent[tn].frm, sent[tn].to, sent[tn].term) == (1, 3, 1)
    acks = [k for k, m in enumerate(sent) if m.type is MsgType.APP_RESP and m.frm == 3 and m.index == 5]
    assert acks and acks[0] < tn, "TIMEOUT_NOW only once the target holds the whole log"
    votes = [m for m in sent if m.type is MsgType.VOTE and m.frm == 3]
    assert votes and all(m.context == CAMPAIGN_TRANSFER and m.term == 2 for m in votes)
    assert not [m for m in sent if m.type is MsgType.PRE_VOTE], "a forced election skips pre-vote"
    assert net.leaders() == [3]
    assert (net.term(3), net.lead(1), net.lead(2), net.role(1)) == (2, 3, 3, Role.FOLLOWER)
    assert net.nodes[1].raft.lead_transferee == NONE
    net.propose(3, b"new leader")
    net.deliver()
    assert net.log(1)[-1] == Entry(7, 2, b"new leader")


def test_transfer_to_an_up_to_date_target_times_it_out_at_once() -> None:
    net = settled(Network())
    net.nodes[1].transfer_leader(2)
    net.process(1)
    assert [(m.type, m.to) for m in net.queue] == [(MsgType.TIMEOUT_NOW, 2)]
    net.deliver()
    assert net.leaders() == [2] and net.term(2) == 2


def test_transfer_requested_at_a_follower_is_forwarded() -> None:
    net = settled(Network())
    net.nodes[3].transfer_leader(3)
    net.deliver()
    (fwd,) = net.delivered_of(MsgType.TRANSFER_LEADER)
    assert (fwd.to, fwd.frm) == (1, 3)
    assert net.leaders() == [3]


def test_transfer_aborts_after_an_election_timeout() -> None:
    net = settled(Network())
    net.isolate(3)
    net.propose(1, b"3 misses this")  # the target is behind, so the leader must wait for it to catch up
    net.deliver()
    net.nodes[1].transfer_leader(3)
    for _ in range(ET - 1):
        net.tick_all(1)
        with pytest.raises(ProposalDropped):
            net.nodes[1].propose(b"refused")
    net.tick_all(1)
    assert net.nodes[1].raft.lead_transferee == NONE
    assert net.role(1) is Role.LEADER and net.term(1) == 1
    index = net.propose(1, b"accepted")
    net.deliver()
    assert net.commit(1) == index
    # When the target comes back, the abandoned transfer does not resume.
    net.heal()
    net.tick_all(2)
    assert it(net.log(3)) == it(net.log(1)), "the target caught up after the transfer was abandoned"
    assert net.sent_of(MsgType.TIMEOUT_NOW) == []
    assert net.leaders() == [1] and net.term(3) == 1


def test_transfer_survives_an_unreachable_report_and_ends_when_the_owner_aborts_it() -> None:
    net = settled(Network())
    net.isolate(3)
    net.propose(1, b"3 misses this")
    net.deliver()
    net.nodes[1].transfer_leader(3)
    # One failed write to the target is a hiccup, not a verdict: the transfer goes on.
    net.nodes[1].report_unreachable(3)
    net.nodes[1].abort_transfer(2)  # not the target: nothing changes
    assert net.nodes[1].raft.lead_transferee == 3
    with pytest.raises(ProposalDropped):
        net.nodes[1].propose(b"refused")
    net.nodes[1].abort_transfer(3)
    assert net.nodes[1].raft.lead_transferee == NONE
    index = net.propose(1, b"accepted")
    net.deliver()
    assert net.commit(1) == index and net.leaders() == [1]


# ==================================================================================================
# The Ready contract
# ==================================================================================================
def test_vote_is_in_the_same_ready_as_the_vote_response() -> None:
    node = new_node(2)
    node.step(Message(MsgType.VOTE, to=2, frm=1, term=1))
    rd = node.ready()
    assert rd.hard_state == HardState(1, 1, 0)
    assert [(m.type, m.to, m.term, m.reject) for m in rd.messages] == [(MsgType.VOTE_RESP, 1, 1, False)]
    node.advance()
    assert not node.has_ready()


def test_campaign_ready_holds_term_and_self_vote_with_requests() -> None:
    node = new_node(1)
    node.campaign()
    rd = node.ready()
    assert rd.hard_state == HardState(1, 1, 0)
    assert rd.soft_state is not None and rd.soft_state.role is Role.CANDIDATE
    assert sorted(m.to for m in rd.messages if m.type is MsgType.VOTE) == [2, 3]
    node.advance()
    assert not node.has_ready()


def test_vote_granted_between_ready_and_advance_reaches_the_next_ready() -> None:
    node = new_node(2)
    node.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1))
    rd1 = node.ready()
    assert rd1.hard_state == HardState(1, NONE, 0)
    node.step(Message(MsgType.VOTE, to=2, frm=3, term=2))  # arrives while rd1 is being persisted
    node.advance()
    rd2 = node.ready()
    assert rd2.hard_state == HardState(2, 3, 0)
    assert [(m.type, m.to, m.reject) for m in rd2.messages] == [(MsgType.VOTE_RESP, 3, False)]


def test_entries_and_their_ack_travel_in_one_ready_and_never_reappear() -> None:
    node = new_node(2)
    ents = (Entry(1, 1, b"a"), Entry(2, 1, b"b"))
    node.step(Message(MsgType.APP, to=2, frm=1, term=1, index=0, log_term=0, entries=ents, commit=1))
    rd = node.ready()
    assert rd.entries == list(ents)
    assert rd.hard_state == HardState(1, NONE, 1)
    assert rd.committed_entries == [ents[0]]
    assert [(m.type, m.index) for m in rd.messages] == [(MsgType.APP_RESP, 2)]
    node.advance()
    assert not node.has_ready()
    node.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1, commit=2))
    rd = node.ready()
    assert rd.entries == [] and rd.committed_entries == [ents[1]]
    assert rd.hard_state == HardState(1, NONE, 2)
    node.advance()
    node.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1, commit=2))
    rd = node.ready()
    assert (rd.hard_state, rd.entries, rd.committed_entries) == (None, [], [])
    assert [m.type for m in rd.messages] == [MsgType.HEARTBEAT_RESP]


def test_leader_proposal_ready_holds_entries_with_appends() -> None:
    node = new_node(1)
    node.campaign()
    node.ready()
    node.advance()
    node.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=1))
    rd = node.ready()
    assert rd.soft_state is not None and rd.soft_state.role is Role.LEADER
    assert rd.entries == [Entry(1, 1, b"")]
    assert {m.to for m in rd.messages if m.type is MsgType.APP} == {2, 3}
    node.advance()
    assert not node.has_ready()


def test_only_a_leader_with_a_durable_term_may_send_before_persisting() -> None:
    follower = new_node(2)
    entries = (Entry(1, 1, b"a"),)
    follower.step(Message(MsgType.APP, to=2, frm=1, term=1, index=0, log_term=0, entries=entries))
    assert not follower.ready().send_early, "an ack must wait for its entries"
    node = new_node(1)
    node.campaign()
    assert not node.ready().send_early, "vote requests must wait for the vote"
    node.advance()
    node.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=1))
    rd = node.ready()
    assert rd.send_early and rd.entries == [Entry(1, 1, b"")]
    node.advance()
    node.step(Message(MsgType.APP_RESP, to=1, frm=2, term=1, index=1))
    node.ready()
    node.advance()
    node.propose(b"x")
    rd = node.ready()
    assert rd.send_early and rd.entries == [Entry(2, 1, b"x")]


def test_a_single_node_commits_its_own_entries_once_they_are_durable() -> None:
    config = Config(id=1, peers=(1,), rng=random.Random(1), election_tick=ET)
    node = RawNode(config)
    node.campaign()
    rd = node.ready()
    assert rd.soft_state is not None and rd.soft_state.role is Role.LEADER
    assert not rd.send_early, "its term and vote are not durable yet"
    assert rd.entries == [Entry(1, 1, b"")] and rd.committed_entries == []
    node.advance()
    rd = node.ready()
    assert rd.committed_entries == [Entry(1, 1, b"")]
    node.advance()
    assert not node.has_ready()


def test_a_single_node_answers_a_read_only_after_its_terms_first_commit() -> None:
    # Restarted with entry 2 acknowledged before the crash but its commit index never written (a commit-only
    # hard state is not fsynced): a read must not be served at index 1.
    config = Config(id=1, peers=(1,), rng=random.Random(1), election_tick=ET)
    node = RawNode(config, HardState(1, 1, 1), entries=[Entry(1, 1, b"a"), Entry(2, 1, b"b")])
    node.campaign()
    node.read_index(b"r")
    reads = []
    while node.has_ready():
        reads += node.ready().read_states
        node.advance()
    assert reads == [ReadState(3, b"r")]


def test_ready_twice_or_advance_without_ready_is_refused() -> None:
    node = new_node(1)
    node.campaign()
    node.ready()
    with pytest.raises(RuntimeError):
        node.ready()
    node.advance()
    with pytest.raises(RuntimeError):
        node.advance()


def test_local_message_kinds_are_refused_from_the_network() -> None:
    node = new_node(1)
    with pytest.raises(ValueError):
        node.step(Message(MsgType.HUP, to=1, frm=2))


@pytest.mark.parametrize("seed", range(8))
def test_ready_contract_and_election_safety_under_chaos(seed: int) -> None:
    # The Network checks the Ready contract on every Ready; here we also check one leader per term and that
    # all nodes apply the same sequence, while partitions, crashes, restarts, loss and reordering come and go.
    rng = random.Random(seed)
    net = Network(range(1, 6), seed=seed, max_inflight=2, max_entries_per_msg=3)
    lossy = rng.random() < 0.5
    leaders_of_term: dict[int, int] = {}
    proposed = 0
    for _ in range(300):
        action = rng.random()
        if action < 0.05:
            net.heal()
            net.isolate(rng.randint(1, 5))
        elif action < 0.1:
            net.heal()
        elif action < 0.13:
            victim = rng.randint(1, 5)
            if victim not in net.down and len(net.down) < 2:
                net.crash(victim)
        elif action < 0.2 and net.down:
            net.restart(sorted(net.down)[0])
        elif action < 0.4:
            for leader in net.leaders():
                try:
                    net.propose(leader, f"s{seed}-{proposed}".encode())
                    proposed += 1
                except ProposalDropped:
                    pass
        if lossy:
            net.drop = lambda m: rng.random() < 0.1
        for i in net.ids:
            if i not in net.down:
                net.nodes[i].tick()
        net.process_all()
        shuffled = list(net.queue)
        rng.shuffle(shuffled)  # reorder what this tick produced
        net.queue.clear()
        net.queue.extend(shuffled)
        net.deliver()
        for leader in net.leaders():
            assert leaders_of_term.setdefault(net.term(leader), leader) == leader, "two leaders in a term"
    net.heal()
    for i in sorted(net.down):
        net.restart(i)
    net.tick_all(4 * ET)
    (leader,) = net.leaders()
    index = net.propose(leader, b"final")
    net.deliver()
    net.tick_all(1)
    logs = [[(e.index, e.term, e.data) for e in net.applied[i]] for i in net.ids]
    for applied in logs:
        longest = max(logs, key=len)
        assert applied == longest[: len(applied)], "state machines diverged"
    assert all(net.applied[i][-1].index == index for i in net.ids)


# ==================================================================================================
# Restart from persisted state only
# ==================================================================================================
def test_restart_keeps_term_and_vote_so_no_second_vote_in_a_term() -> None:
    node = new_node(1)
    node.step(Message(MsgType.VOTE, to=1, frm=2, term=5))
    rd = node.ready()
    assert rd.hard_state == HardState(5, 2, 0)
    node.advance()
    restarted = new_node(1, rd.hard_state)
    assert (restarted.raft.term, restarted.raft.vote, restarted.raft.role) == (5, 2, Role.FOLLOWER)
    assert not restarted.has_ready(), "state loaded from disk is not reported again"
    restarted.step(Message(MsgType.VOTE, to=1, frm=3, term=5))
    restarted.step(Message(MsgType.VOTE, to=1, frm=2, term=5))
    rd = restarted.ready()
    assert [(m.to, m.reject) for m in rd.messages] == [(3, True), (2, False)]
    assert restarted.raft.vote == 2


def test_crashed_voter_restarted_from_storage_does_not_vote_twice() -> None:
    net = Network(pre_vote=False, check_quorum=False)
    net.nodes[1].campaign()
    net.deliver(only=lambda m: m.type is MsgType.VOTE and m.to == 2)
    net.deliver_one(lambda m: m.type is MsgType.VOTE_RESP)
    assert net.storage[2].hard_state == HardState(1, 1, 0)
    net.crash(2)
    net.restart(2)
    net.crash(1)
    net.nodes[3].raft.term = 0  # node 3 never heard of term 1 and campaigns for it
    net.nodes[3].campaign()
    net.deliver()
    (resp,) = net.delivered_of(MsgType.VOTE_RESP, frm=2, to=3)
    assert (resp.term, resp.reject) == (1, True)
    assert net.role(3) is Role.CANDIDATE and net.term(3) == 1


def test_restart_keeps_log_and_commit_and_comes_back_as_follower() -> None:
    net = settled(Network())
    for k in range(3):
        net.propose(1, f"k{k}".encode())
    net.deliver()
    net.tick_all(1)
    before = net.log(1)
    net.crash(1)
    net.restart(1)
    assert net.log(1) == before
    assert net.commit(1) == 4 and net.term(1) == 1
    assert (net.role(1), net.lead(1)) == (Role.FOLLOWER, NONE)
    assert net.nodes[1].raft.vote == 1
    assert not net.nodes[1].has_ready(), "nothing to persist or apply again after a clean restart"


def test_restart_reapplies_committed_entries_above_applied() -> None:
    ents = log_of([1, 1, 1])
    node = RawNode(
        Config(id=1, peers=(1, 2, 3), rng=random.Random(1)), HardState(1, NONE, 3), entries=ents, applied=1
    )
    rd = node.ready()
    assert rd.committed_entries == ents[1:]
    assert rd.entries == [] and rd.hard_state is None


# ==================================================================================================
# Snapshot transfers
# ==================================================================================================
def test_failed_snapshot_transfer_is_retried_and_a_complete_one_resumes_replication() -> None:
    r = new_raft(log=log_of([1] * 10), term=1)
    r.log.commit_to(10)
    r.log.applied_to(10)
    r.log.compact(8)
    r._become_candidate()
    r._become_leader()
    take(r)
    # Follower 2 has nothing: its rejection walks the leader back below the compacted prefix.
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=r.term, index=10, reject=True, reject_hint=0))
    (snap,) = take(r)
    assert snap.type is MsgType.SNAP and snap.snapshot is not None and snap.snapshot.meta.index == 8
    assert r.prs[2].state is ProgressState.SNAPSHOT
    # The transfer breaks: the leader waits for the follower to speak again, then sends a fresh one.
    r.step(Message(MsgType.SNAP_STATUS, frm=2, reject=True))
    assert r.prs[2].state is ProgressState.PROBE
    assert take(r) == []
    r.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=2, term=r.term, index=0, commit=0))
    (again,) = [m for m in take(r) if m.to == 2]
    assert again.type is MsgType.SNAP and again.snapshot is not None and again.snapshot.meta.index == 8
    # This one lands: the follower acknowledges the snapshot's index and replication goes on from there.
    r.step(Message(MsgType.SNAP_STATUS, frm=2, reject=False))
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=r.term, index=8))
    assert r.prs[2].state is ProgressState.REPLICATE and r.prs[2].match == 8
    apps = [m for m in take(r) if m.to == 2 and m.type is MsgType.APP]
    assert [e.index for m in apps for e in m.entries] == [9, 10, 11]


# ==================================================================================================
# Idle ticks: the owner may sleep ticks_until_due() ticks and deliver them at once
# ==================================================================================================
def _quiet(r: Raft) -> tuple[Role, int, int, int]:
    return (r.role, r.term, r.vote, r.lead)


@pytest.mark.parametrize("pre_vote", [False, True])
def test_a_follower_is_due_exactly_when_its_election_timeout_fires(pre_vote: bool) -> None:
    r = new_raft(pre_vote=pre_vote)
    due = r.ticks_until_due()
    assert due == r.randomized_election_timeout
    before = _quiet(r)
    for _ in range(due - 1):
        r.tick()
        assert take(r) == [] and _quiet(r) == before
    assert r.ticks_until_due() == 1
    r.tick()
    expected = MsgType.PRE_VOTE if pre_vote else MsgType.VOTE
    assert {m.type for m in take(r)} == {expected}


def test_hearing_from_the_leader_pushes_the_due_tick_back() -> None:
    r = new_raft()
    for _ in range(r.ticks_until_due() - 1):
        r.tick()
    r.step(Message(MsgType.HEARTBEAT, to=1, frm=2, term=1))
    assert r.ticks_until_due() == r.randomized_election_timeout


def test_a_leader_is_due_at_every_heartbeat_and_quorum_check() -> None:
    net = settled(Network(heartbeat_tick=3, check_quorum=True))
    leader = net.nodes[1].raft

    def tick_and_collect() -> set[MsgType]:
        start = len(net.sent)
        net.tick(1, 1)
        sent = {m.type for m in net.sent[start:] if m.frm == 1}
        net.deliver()
        return sent

    for _ in range(4 * ET):
        due = leader.ticks_until_due()
        for _ in range(due - 1):
            assert tick_and_collect() == set()
        heartbeat_due = leader.heartbeat_elapsed + 1 >= 3
        check_due = leader.election_elapsed + 1 >= ET
        assert heartbeat_due or check_due
        sent = tick_and_collect()
        assert sent == ({MsgType.HEARTBEAT} if heartbeat_due else set())
    assert leader.role is Role.LEADER


def test_an_isolated_leader_steps_down_on_a_due_tick() -> None:
    net = settled(Network(check_quorum=True))
    leader = net.nodes[1].raft
    net.isolate(1)
    for _ in range(3 * ET):
        due = leader.ticks_until_due()
        for _ in range(due - 1):
            net.tick(1, 1)
            assert leader.role is Role.LEADER
        net.tick(1, 1)
        if leader.role is not Role.LEADER:
            break
    assert leader.role is Role.FOLLOWER


def test_a_config_with_learners_needs_a_voter_and_distinct_ids() -> None:
    """A learner may run a node (it is in its own config as a learner), and so may a node outside the
    membership, but a learner is never also a voter, and a cluster of learners alone could never elect
    anyone."""
    rng = random.Random(0)
    Config(id=4, peers=(1, 2, 3), rng=rng, learners=(4,)).validate()
    with pytest.raises(ValueError, match="duplicate ids"):
        Config(id=1, peers=(1, 2, 3), rng=rng, learners=(3,)).validate()
    with pytest.raises(ValueError, match="at least one voter"):
        Config(id=1, peers=(), rng=rng, learners=(1,)).validate()
    # Outside the membership: a node that joins waits there until its addition reaches it.
    Config(id=5, peers=(1, 2, 3), rng=rng, learners=(4,)).validate()
