"""Membership changes in the core (dissertation 4.1 - 4.2): the rules the golden scripts membership*.txt do
not show message by message. Each test fails when its rule is broken."""

from __future__ import annotations

import random

import pytest

from raftd.core import (
    ConfChange,
    ConfChangeRefused,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    HardState,
    LogError,
    Message,
    MsgType,
    Raft,
    Snapshot,
    SnapshotMeta,
)
from tests.core.interaction import decode_conf_change, encode_conf_change
from tests.core.network import Network

ET = 10
ADD_LEARNER, ADD_VOTER, REMOVE = ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_VOTER, ConfChangeType.REMOVE


def network() -> Network:
    """Three voters that decode the golden environment's changes; node 1 leads and its no-op committed."""
    net = Network((1, 2, 3), conf_change_of=decode_conf_change)
    net.elect(1)
    net.tick_all(1)
    return net


def propose(net: Network, node: int, kind: ConfChangeType, target: int) -> int:
    cc = ConfChange(kind, target)
    index = net.nodes[node].propose_conf_change(cc, encode_conf_change(cc))
    net.process(node)
    return index


def test_a_change_takes_effect_when_appended_and_a_lagging_voter_campaigns_under_it() -> None:
    """Node 2 holds the uncommitted removal of node 3: it already counts without 3, so when the leader dies
    it asks node 1 alone for a vote. Under the old membership it would also ask 3, whose vote could then
    make a majority that does not overlap the new membership's."""
    net = network()
    propose(net, 1, REMOVE, 3)
    assert net.nodes[1].conf_state() == ConfState((1, 2))
    net.deliver(only=lambda m: m.type is MsgType.APP and m.to == 2)
    assert net.nodes[2].conf_state() == ConfState((1, 2))
    assert net.nodes[3].conf_state() == ConfState((1, 2, 3))
    net.crash(1)
    net.queue.clear()
    net.nodes[2].campaign()
    net.process(2)
    votes = [m.to for m in net.queue if m.type in (MsgType.PRE_VOTE, MsgType.VOTE)]
    assert votes == [1]


def test_a_change_replaced_by_a_new_leader_is_undone() -> None:
    """An uncommitted change lost with its leader: the entry that replaces it takes the membership back."""
    net = network()
    net.isolate(1)
    propose(net, 1, REMOVE, 3)  # saved on node 1 alone
    net.crash(1)
    net.restart(1)
    assert net.nodes[1].conf_state() == ConfState((1, 2)), "a restart reads the membership from the log"
    for _ in range(4 * ET):
        net.tick_all(1)
        if net.leaders():
            break
    assert net.leaders() and net.leaders()[0] in (2, 3)
    net.heal()
    net.tick_all(2)
    assert [e.data for e in net.log(1)] == [e.data for e in net.log(2)]
    for i in (1, 2, 3):
        assert net.nodes[i].conf_state() == ConfState((1, 2, 3)), i


def test_one_change_at_a_time_until_the_first_commits() -> None:
    net = network()
    index = propose(net, 1, ADD_LEARNER, 4)
    with pytest.raises(ConfChangeRefused, match=f"in progress \\(log index {index}\\)") as refused:
        propose(net, 1, REMOVE, 3)
    assert not refused.value.invalid
    net.deliver()
    assert net.commit(1) >= index
    propose(net, 1, REMOVE, 3)


def test_reachable_counts_the_check_quorum_window_before_the_current_one() -> None:
    """Right after check-quorum starts a new window nobody has answered in it yet; the members heard in the
    window before are still reachable, so a change is not refused for a moment's bookkeeping."""
    net = network()
    leader = net.nodes[1].raft
    net.tick(1, leader.cfg.election_tick - leader.election_elapsed)  # a new window, with no answer yet
    assert not leader.prs[2].recent_active and not leader.prs[3].recent_active
    propose(net, 1, REMOVE, 3)


def test_a_changes_data_must_decode_to_it() -> None:
    net = network()
    cc = ConfChange(REMOVE, 3)
    with pytest.raises(ValueError, match="must decode"):
        net.nodes[1].propose_conf_change(cc, encode_conf_change(ConfChange(REMOVE, 2)))


def test_a_snapshot_records_the_membership_and_a_follower_installs_it() -> None:
    net = network()
    propose(net, 1, ADD_LEARNER, 4)
    net.deliver()
    leader = net.nodes[1]
    leader.compact(leader.applied)
    assert leader.snapshot_meta().conf == ConfState((1, 2, 3), (4,))

    rng = random.Random(4)
    joining = Raft(Config(4, (1, 2, 3), rng, learners=(4,), conf_change_of=decode_conf_change))
    meta = SnapshotMeta(leader.applied, leader.term, ConfState((1, 2, 3, 4)))
    joining.step(Message(MsgType.SNAP, 4, 1, leader.term, snapshot=Snapshot(meta)))
    assert joining.conf_state() == ConfState((1, 2, 3, 4))
    assert joining.promotable()


def test_a_restart_from_a_snapshot_takes_its_membership_over_the_configs() -> None:
    """The owner's config names the first membership; a snapshot's record of a later one wins, and the
    changes in the log after the snapshot apply on top of it."""
    meta = SnapshotMeta(5, 1, ConfState((1, 2), (3,)))
    cc = ConfChange(ADD_VOTER, 3)
    r = Raft(
        Config(1, (1, 2, 3), random.Random(1), conf_change_of=decode_conf_change),
        HardState(1, 1, 5),
        meta,
        [Entry(6, 1, encode_conf_change(cc))],
    )
    assert r.conf_state() == ConfState((1, 2, 3))
    assert Raft(Config(1, (1, 2, 3), random.Random(1)), HardState(1, 1, 5), meta).conf_state() == meta.conf


def test_a_leader_that_removed_itself_confirms_reads_with_the_voter_left() -> None:
    """Voters 1 and 2, and leader 1 removing itself: node 2 alone is a quorum of the new membership and may
    elect itself at any moment, so a read on node 1 waits for node 2's answer to a heartbeat round."""
    net = Network((1, 2), conf_change_of=decode_conf_change)
    net.elect(1)
    net.tick_all(1)
    propose(net, 1, REMOVE, 1)
    net.isolate(2)
    net.nodes[1].read_index(b"r")
    net.process(1)
    assert net.read_states[1] == []
    assert net.queued_of(MsgType.HEARTBEAT, frm=1, to=2)


def test_compacting_beyond_the_applied_index_changes_no_membership() -> None:
    net = network()
    propose(net, 1, ADD_LEARNER, 4)
    leader = net.nodes[1]
    with pytest.raises(LogError, match="beyond the applied index"):
        leader.compact(leader.raft.log.last_index())
    assert leader.conf_state() == ConfState((1, 2, 3), (4,))
    leader.compact(leader.applied)  # the change is beyond it: the snapshot's record must not include it
    assert leader.snapshot_meta().conf == ConfState((1, 2, 3))


def test_a_learner_never_heard_from_is_not_promoted_however_short_the_log() -> None:
    """With fewer entries than max_learner_lag, a learner that never answered (not started, a mistyped
    address) was promoted, and a voter that nothing runs then counted toward every quorum."""
    net = network()
    net.isolate(4)
    propose(net, 1, ADD_LEARNER, 4)  # node 4 is not running: it never answers
    net.tick_all(2)
    cc = ConfChange(ADD_VOTER, 4)
    with pytest.raises(ConfChangeRefused, match="learner 4 has not caught up: it has not answered yet"):
        net.nodes[1].propose_conf_change(cc, encode_conf_change(cc))
    assert 4 not in net.nodes[1].conf_state().voters
