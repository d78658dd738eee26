"""The Raft state machine: one node's view, advanced only by tick(), step() and propose().

Nothing here performs I/O or reads a clock; outgoing messages accumulate in `msgs` and are handed to the
owner through RawNode.ready(). Section numbers refer to the Raft paper (5.x) and Ongaro's dissertation
(6.x, 9.x).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import quorum
from .log import RaftLog
from .progress import Progress, ProgressState
from .read_only import ReadOnly, ReadRequest
from .types import (
    CAMPAIGN_TRANSFER,
    LOCAL_MESSAGES,
    NONE,
    ConfChange,
    ConfChangeRefused,
    ConfChangeType,
    ConfState,
    Entry,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

_VOTE_REQUESTS = (MsgType.VOTE, MsgType.PRE_VOTE)
_RESPONSE_OF = {MsgType.VOTE: MsgType.VOTE_RESP, MsgType.PRE_VOTE: MsgType.PRE_VOTE_RESP}
# Messages whose term is chosen by the sender on purpose; every other message carries the node's term.
_EXPLICIT_TERM = frozenset({MsgType.VOTE, MsgType.VOTE_RESP, MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP})
# Forwarded requests travel with term 0 so any node may take them, whatever its term.
_TERMLESS = frozenset({MsgType.READ_INDEX, MsgType.TRANSFER_LEADER})


@dataclass(frozen=True, slots=True)
class Config:
    """peers and learners: the membership as of the snapshot the node starts from (or the cluster's first,
    without one); the snapshot's own record of it (SnapshotMeta.conf) takes precedence, and the membership
    changes in the log after it apply on top (Raft.conf_state)."""

    id: int
    peers: tuple[int, ...]  # every voter, this node included unless it is a learner or outside (joining)
    rng: random.Random
    # Members that receive the log and snapshots but never vote, campaign or count toward a quorum: a node
    # catching up before it is promoted (dissertation 4.2.1).
    learners: tuple[int, ...] = ()
    # Which entries carry membership changes, and which: the owner encodes them (propose_conf_change), so
    # it decodes them. None: no entry does.
    conf_change_of: Callable[[bytes], ConfChange | None] | None = None
    election_tick: int = 10
    # Election timeouts are drawn from [election_tick, max_election_tick); None means 2 * election_tick.
    max_election_tick: int | None = None
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 64
    # Bytes of entries in flight to one follower (0: no limit). With 1 MiB entries, 64 messages in flight
    # would queue 64 MiB ahead of a heartbeat on the one peer stream: longer than an election timeout.
    max_inflight_bytes: int = 8 << 20
    max_entries_per_msg: int = 512
    max_bytes_per_msg: int = 1 << 20
    # A learner is promoted only once its log is within this many entries of the commit index: a voter far
    # behind could not help commit anything for a while, and with a small cluster would stall it.
    max_learner_lag: int = 1000

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("node id 0 is reserved for 'nobody'")
        if not self.peers:
            raise ValueError("a cluster needs at least one voter")
        members = self.peers + self.learners
        if len(set(members)) != len(members):
            raise ValueError(f"duplicate ids among voters {list(self.peers)}, learners {list(self.learners)}")
        if NONE in members:
            raise ValueError("node id 0 is reserved for 'nobody'")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        if self.max_election_tick is not None and self.max_election_tick <= self.election_tick:
            raise ValueError("need election_tick < max_election_tick")
        if self.max_inflight <= 0 or self.max_entries_per_msg <= 0 or self.max_bytes_per_msg <= 0:
            raise ValueError("flow-control limits must be positive")
        if self.max_inflight_bytes < 0:
            raise ValueError("max_inflight_bytes must be 0 (no limit) or positive")
        if self.max_learner_lag < 0:
            raise ValueError("max_learner_lag must be 0 or positive")


class Raft:
    def __init__(
        self,
        config: Config,
        hard_state: HardState = HardState(),
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        applied: int = 0,
    ) -> None:
        config.validate()
        self.cfg = config
        self.id = config.id
        self.rng = config.rng
        self.log = RaftLog(snapshot, list(entries))
        # The membership is the latest in the log, committed or not (dissertation 4.1): the one as of the
        # log's snapshot, then each change in the entries after it, as (index, membership after it).
        self._base_conf = self.log.snapshot_meta.conf or ConfState(
            tuple(sorted(config.peers)), tuple(sorted(config.learners))
        )
        self._confs: list[tuple[int, ConfState]] = []
        if not self.log.snapshot_meta.index <= hard_state.commit <= self.log.last_index():
            raise ValueError(
                f"persisted commit {hard_state.commit} is outside the log "
                f"[{self.log.snapshot_meta.index}, {self.log.last_index()}]"
            )
        self.log.commit_to(hard_state.commit)
        self.log.applied_to(max(applied, self.log.snapshot_meta.index))
        self._rescan_conf(self.log.snapshot_meta.index, switch=False)
        # Invariant: vote is NONE or the node granted its one vote of `term` to it, durably.
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.read_only = ReadOnly()
        self.pending_reads: list[Message] = []  # reads waiting for the first commit of this leader's term
        self.lead_transferee = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        self.verified = 0
        self._reset(self.term)

    # -- state reported to the owner ----------------------------------------------------------------
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    # -- role transitions ---------------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        # 5.2: a fresh random timeout each time, so split votes resolve.
        hi = self.cfg.max_election_tick or 2 * self.cfg.election_tick
        self.randomized_election_timeout = self.rng.randrange(self.cfg.election_tick, hi)
        self.lead_transferee = NONE
        self.votes = {}
        # Invariant: our log matches the current leader's up to verified (0 until it sends an AppendEntries).
        self.verified = 0
        # Our own progress is kept even when we are not a member: a leader that removed itself leads on
        # until the change commits, and its own copy of the log still advances.
        self.prs = {p: self._new_progress() for p in (*self.members, self.id)}
        self.prs[self.id].match = self.log.stabled
        self.read_only = ReadOnly()
        self.pending_reads = []

    def _new_progress(self) -> Progress:
        return Progress(self.log.last_index() + 1, self.cfg.max_inflight, self.cfg.max_inflight_bytes)

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # 9.6: a pre-candidate neither raises its term nor votes; it only asks whether it could win.
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.lead = NONE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        me = self.prs[self.id]
        me.become_replicate()
        me.recent_active = True
        # 8: a no-op of the new term lets the leader commit (and learn) everything before it.
        self._append_entries([b""])

    # -- time ---------------------------------------------------------------------------------------
    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def ticks_until_due(self) -> int:
        """How many ticks may pass before one does anything but count: the owner may sleep that long.

        Ticks short of it only advance counters, so delivering them late, all at once, changes nothing.
        """
        if self.role is Role.LEADER:
            due = min(
                self.cfg.heartbeat_tick - self.heartbeat_elapsed,
                self.cfg.election_tick - self.election_elapsed,
            )
        elif not self.promotable():
            # A learner's (or a removed node's) election timer never fires: nothing is ever due, but the
            # owner still wakes now and then to count.
            due = self.randomized_election_timeout
        else:
            due = self.randomized_election_timeout - self.election_elapsed
        return max(1, due)

    def tick_heartbeat(self, ticks: int) -> None:
        """Advance a leader's heartbeat clock alone, by ticks, broadcasting at most one heartbeat.

        For time its driver spent too busy to count on the election clock: a leader that counted it there
        would step down (check-quorum) before reading the answers waiting for it, yet its followers, whose
        clocks run on, need their heartbeats.
        """
        if self.role is not Role.LEADER or ticks <= 0:
            return
        self.heartbeat_elapsed += ticks
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_election_timeout and self.promotable():
            self.election_elapsed = 0
            self.step(Message(MsgType.HUP))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self.become_follower(self.term, NONE)
                return
            # A transfer that did not finish within an election timeout is abandoned.
            self.lead_transferee = NONE
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def promotable(self) -> bool:
        """Whether this node may campaign (and so lead): a voter; a learner never does."""
        return self.id in self.peers

    def _quorum_active(self) -> bool:
        """Check-quorum (6.2): did a majority reach us since the last check? Resets the window."""
        active = {p for p, pr in self.prs.items() if p == self.id or pr.recent_active}
        for p, pr in self.prs.items():
            pr.active_before = pr.recent_active
            pr.recent_active = p == self.id
        return quorum.vote_result(self.peers, {p: True for p in active}) is quorum.VoteResult.WON

    # -- proposals and local requests ---------------------------------------------------------------
    def propose(self, datas: Sequence[bytes]) -> int:
        """Append client commands; returns the index of the first. Raises ProposalDropped off-leader."""
        if self.role is not Role.LEADER:
            raise ProposalDropped(f"not the leader (leader is {self.lead or 'unknown'})")
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership is being transferred to {self.lead_transferee}")
        if not datas or any(not d for d in datas):
            raise ValueError("a proposal needs non-empty data; empty entries are the leader's no-ops")
        first = self.log.last_index() + 1
        self._append_entries(datas)
        return first

    # -- membership -------------------------------------------------------------------------------------
    def conf_state(self) -> ConfState:
        return ConfState(self.peers, self.learners)

    def propose_conf_change(self, cc: ConfChange, data: bytes) -> int:
        """Append a membership change, encoded by the owner as data (Config.conf_change_of decodes it);
        returns its index. It takes effect on each node as the node appends it. Raises ProposalDropped
        off-leader, ConfChangeRefused when the change must not be made (now, or ever)."""
        if self.role is not Role.LEADER:
            raise ProposalDropped(f"not the leader (leader is {self.lead or 'unknown'})")
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership is being transferred to {self.lead_transferee}")
        decode = self.cfg.conf_change_of
        if decode is None or decode(data) != cc:
            raise ValueError("the data of a membership change must decode to it (Config.conf_change_of)")
        self._check_conf_change(cc)
        if not self._committed_in_term():
            # A change of an earlier term may be in the log uncommitted: single-server changes are safe only
            # from a leader that has committed an entry of its own term (the 2015 correction on raft-dev).
            raise ConfChangeRefused("this leader has not yet committed an entry of its term; retry shortly")
        pending = self._last_conf_index()
        if pending > self.log.committed:
            raise ConfChangeRefused(
                f"a membership change is in progress (log index {pending}); one at a time"
            )
        first = self.log.last_index() + 1
        self._append_entries([data])
        return first

    def _check_conf_change(self, cc: ConfChange) -> None:
        node = cc.node
        voters = set(self.peers)
        if node == NONE:
            raise ConfChangeRefused("node id 0 is reserved", invalid=True)
        if cc.type is ConfChangeType.ADD_LEARNER:
            if node in self.members:
                role = "voter" if node in voters else "learner"
                raise ConfChangeRefused(f"node {node} is a {role} already", invalid=True)
            return
        if cc.type is ConfChangeType.ADD_VOTER:
            if node in voters:
                raise ConfChangeRefused(f"node {node} is a voter already", invalid=True)
            if node in self.learners:  # promoted only once nearly caught up
                behind = self.log.committed - self.prs[node].match
                if behind > self.cfg.max_learner_lag:
                    raise ConfChangeRefused(
                        f"learner {node} is {behind} entries behind the commit index; it is promoted within "
                        f"{self.cfg.max_learner_lag}"
                    )
                if self.prs[node].match == 0:
                    # Never heard from: a short log would otherwise let a learner that never started (a
                    # mistyped address, a node not run yet) count toward every quorum from now on.
                    raise ConfChangeRefused(f"learner {node} has not caught up: it has not answered yet")
            voters.add(node)
        else:
            if node not in self.members:
                raise ConfChangeRefused(f"node {node} is not a member", invalid=True)
            if node in voters and len(voters) == 1:
                raise ConfChangeRefused(f"node {node} is the last voter")
            voters.discard(node)
        # etcd's strict reconfiguration check: the new voters must include a quorum heard from lately.
        reachable = sorted(v for v in voters if v == self.id or (v in self.prs and self.prs[v].reachable()))
        if len(reachable) < quorum.majority(len(voters)):
            raise ConfChangeRefused(
                f"after the change {len(voters)} voters would have {len(reachable)} reachable "
                f"({', '.join(map(str, reachable))}); a quorum needs {quorum.majority(len(voters))}"
            )

    def _last_conf_index(self) -> int:
        return self._confs[-1][0] if self._confs else 0

    def _rescan_conf(self, after: int, switch: bool = True) -> None:
        """The entries after index `after` changed (appended, or replaced by a leader's): find the changes
        among them again, and switch to the membership they end with."""
        confs = self._confs
        while confs and confs[-1][0] > after:
            confs.pop()
        decode = self.cfg.conf_change_of
        lo, hi = max(after + 1, self.log.first_index()), self.log.last_index() + 1
        if decode is not None and lo < hi:
            conf = confs[-1][1] if confs else self._base_conf
            for e in self.log.slice(lo, hi):
                cc = decode(e.data) if e.data else None
                if cc is not None:
                    conf = changed(conf, cc)
                    confs.append((e.index, conf))
        conf = confs[-1][1] if confs else self._base_conf
        if switch:
            self._switch_to(conf)
        else:
            self._set_members(conf)

    def _set_members(self, cs: ConfState) -> None:
        self.peers, self.learners = cs.voters, cs.learners
        # Everyone the leader replicates to (and tracks progress of): voters, then learners.
        self.members = self.peers + self.learners

    def conf_at(self, index: int) -> ConfState:
        """The membership as of index, at or after the log's snapshot (the changes up to it)."""
        covered = [c for c in self._confs if c[0] <= index]
        return covered[-1][1] if covered else self._base_conf

    def compact(self, index: int) -> None:
        """Drop the log up to index (the owner holds a snapshot of it): the snapshot records the membership
        as of index, which the changes after it build on."""
        covered = [c for c in self._confs if c[0] <= index]
        base = self.conf_at(index)
        self.log.compact(index, base)  # first: it refuses an index beyond the applied one
        if self.log.snapshot_meta.index == index:
            self._base_conf = base
            del self._confs[: len(covered)]

    def _switch_to(self, cs: ConfState) -> None:
        if cs == self.conf_state():
            return
        added = [p for p in cs.voters + cs.learners if p not in self.prs]
        self._set_members(cs)
        for p in added:
            pr = self.prs[p] = self._new_progress()
            pr.recent_active = True  # a grace window, as every member gets at an election (check-quorum)
        for p in [p for p in self.prs if p not in self.members and p != self.id]:
            del self.prs[p]
        if self.lead_transferee not in self.peers:
            self.lead_transferee = NONE
        if self.role is Role.LEADER:
            # Fewer voters may make a smaller quorum: what they hold may now be committed.
            self._commit_and_bcast()
            for p in added:
                self._send_append(p)
        elif self.role is not Role.FOLLOWER and not self.promotable():
            self.become_follower(self.term, NONE)  # a campaign of a node no longer a voter ends

    def _commit_and_bcast(self) -> None:
        """Advance the commit index if a quorum allows, and tell the followers. A leader that removed
        itself leads until that change commits (dissertation 4.2.2), then hands over and steps down."""
        if not self._maybe_commit():
            return
        if self.promotable() or self.log.committed < self._last_conf_index():
            self._bcast_append(send_if_empty=False)
            return
        self._bcast_append()  # the commit of the change, now: there is no next append to carry it
        best = max(self.peers, key=lambda p: self.prs[p].match)
        if self.prs[best].match == self.log.last_index():
            # The most up-to-date remaining voter campaigns at once, rather than after an election timeout.
            self._send(Message(MsgType.TIMEOUT_NOW, best))
        self.become_follower(self.term, NONE)

    def _append_entries(self, datas: Sequence[bytes]) -> None:
        last = self.log.last_index()
        self.log.append([Entry(last + 1 + k, self.term, d) for k, d in enumerate(datas)])
        # Our own copy counts toward a quorum only once it is durable (on_persisted), so the owner may send
        # these entries to followers while it writes them (dissertation 10.2.1).
        self._bcast_append()
        if self.cfg.conf_change_of is not None:
            self._rescan_conf(last)  # a member added here gets its first append from the switch

    def on_persisted(self) -> None:
        """The owner made the log durable up to log.stabled: as leader, that is our own acknowledgement."""
        if self.role is Role.LEADER and self.prs[self.id].maybe_update(self.log.stabled):
            self._commit_and_bcast()

    # -- sending ------------------------------------------------------------------------------------
    def _send(self, m: Message, *, term: int | None = None) -> None:
        if m.type in _EXPLICIT_TERM:
            assert term is not None, f"{m.type} needs an explicit term"
        elif m.type not in _TERMLESS:
            term = self.term
        self.msgs.append(
            Message(
                m.type,
                m.to,
                self.id,
                term or 0,
                m.log_term,
                m.index,
                m.entries,
                m.commit,
                m.reject,
                m.reject_hint,
                m.context,
                m.snapshot,
            )
        )

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None:
            return self._send_snapshot(to, pr)
        entries: list[Entry] = []
        if pr.next <= self.log.last_index():
            hi = min(self.log.last_index() + 1, pr.next + self.cfg.max_entries_per_msg)
            budget = self.cfg.max_bytes_per_msg
            if pr.max_inflight_bytes:  # what is left of the window, and at least one entry
                budget = max(1, min(budget, pr.max_inflight_bytes - pr.inflight_bytes))
            entries = self.log.slice(pr.next, hi, budget)
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(
                MsgType.APP,
                to,
                index=prev_index,
                log_term=prev_term,
                entries=tuple(entries),
                commit=self.log.committed,
            )
        )
        size = sum(len(e.data) for e in entries)
        pr.sent_entries(entries[-1].index if entries else prev_index, len(entries), size)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        # The core knows only the snapshot's position; the transport attaches the state machine image.
        if not pr.recent_active:
            return False
        meta = self.log.snapshot_meta
        self._send(Message(MsgType.SNAP, to, snapshot=Snapshot(meta)))
        pr.become_snapshot(meta.index)
        return True

    def _bcast_append(self, send_if_empty: bool = True) -> None:
        """send_if_empty=False after a commit: unlike etcd, no append for the new commit index alone; it
        rides on the next append or heartbeat (as in the paper), which halves the messages per write."""
        for p in self.members:
            if p != self.id:
                self._send_append(p, send_if_empty)

    def _bcast_heartbeat(self, context: bytes = b"") -> None:
        for p in self.members:
            if p != self.id:
                # Never tell a follower to commit past what it is known to hold.
                commit = min(self.prs[p].match, self.log.committed)
                self._send(Message(MsgType.HEARTBEAT, p, commit=commit, context=context))

    def _maybe_commit(self) -> bool:
        match = {p: pr.match for p, pr in self.prs.items()}
        if not self.log.maybe_commit(quorum.committed_index(self.peers, match), self.term):
            return False
        if self.pending_reads and self._committed_in_term():
            pending, self.pending_reads = self.pending_reads, []
            for m in pending:
                self._handle_read_index(m)
        return True

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    # -- receiving ----------------------------------------------------------------------------------
    def step(self, m: Message) -> None:
        # 5.1: every message's term is compared before anything else (local and forwarded ones carry none).
        termless = m.type in LOCAL_MESSAGES or m.type in _TERMLESS
        if termless:
            pass
        elif m.term > self.term:
            if m.type in _VOTE_REQUESTS:
                forced = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.cfg.election_tick
                )
                if in_lease and not forced:
                    # 6.2 / 4.2.3: we heard from a live leader recently, so this candidate is disruptive.
                    return
            if m.type is MsgType.PRE_VOTE or (m.type is MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # pre-vote traffic carries a future term without changing anyone's term
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if m.type in (MsgType.APP, MsgType.HEARTBEAT) and (self.cfg.check_quorum or self.cfg.pre_vote):
                # A leader of an old term: answer with our term so it steps down, rather than staying
                # silent and letting it believe it still leads.
                self._send(Message(MsgType.APP_RESP, m.frm))
            elif m.type is MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, m.frm, reject=True), term=self.term)
            return

        if m.type is MsgType.HUP:
            self._hup(transfer=False)
        elif m.type in _VOTE_REQUESTS:
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self.promotable():
            return
        if self.cfg.pre_vote and not transfer:
            self._campaign(MsgType.PRE_VOTE, transfer)
        else:
            self._campaign(MsgType.VOTE, transfer)

    def _campaign(self, kind: MsgType, transfer: bool) -> None:
        if kind is MsgType.PRE_VOTE:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        if self._poll(self.id, granted=True) is quorum.VoteResult.WON:
            self._won(kind)
            return
        context = CAMPAIGN_TRANSFER if transfer else b""
        for p in self.peers:
            if p != self.id:
                self._send(
                    Message(
                        kind, p, index=self.log.last_index(), log_term=self.log.last_term(), context=context
                    ),
                    term=term,
                )

    def _poll(self, node: int, granted: bool) -> quorum.VoteResult:
        self.votes.setdefault(node, granted)
        return quorum.vote_result(self.peers, self.votes)

    def _won(self, kind: MsgType) -> None:
        if kind is MsgType.PRE_VOTE:
            self._campaign(MsgType.VOTE, transfer=False)
        else:
            self._become_leader()

    def _handle_vote_request(self, m: Message) -> None:
        # 5.2: one vote per term (a repeat to the same candidate is fine); a pre-vote for a future term
        # binds nobody.
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type is MsgType.PRE_VOTE and m.term > self.term)
        )
        resp = _RESPONSE_OF[m.type]
        # 5.4.1: only for a candidate whose log is at least as up-to-date as ours.
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(resp, m.frm), term=m.term)
            if m.type is MsgType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, m.frm, reject=True), term=self.term)

    # -- per-role step functions --------------------------------------------------------------------
    def _step_leader(self, m: Message) -> None:
        if m.type is MsgType.BEAT:
            self._bcast_heartbeat()
            return
        if m.type is MsgType.READ_INDEX:
            self._handle_read_index(m)
            return
        pr = self.prs.get(m.frm)
        if pr is None or m.frm == self.id:
            return
        if m.type is MsgType.APP_RESP:
            self._handle_append_response(m, pr)
        elif m.type is MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if m.index < pr.match:
                # The follower lost entries it had acknowledged (a wiped or replaced disk): forget what we
                # believed it holds and find out again, down to a snapshot if need be.
                pr.match = 0
                pr.become_probe()
            if pr.state is ProgressState.REPLICATE and pr.is_paused():
                # Free a slot so lost AppendEntries cannot stall a full window forever: the next send
                # exposes the gap, the follower rejects it, and we fall back to probing.
                pr.free_oldest()
            # Behind in log or in commit: an AppendEntries both repairs the log and lets the follower commit
            # (heartbeats only carry a commit index the follower has verified; see _step_follower).
            if pr.match < self.log.last_index() or m.commit < self.log.committed:
                self._send_append(m.frm)
            if m.context:
                self._handle_read_ack(m)
        elif m.type is MsgType.SNAP_STATUS:
            if pr.state is ProgressState.SNAPSHOT:
                if m.reject:
                    pr.pending_snapshot = 0
                pr.become_probe()
                # Wait for the follower's answer (or the next heartbeat) before probing again.
                pr.probe_sent = True
        elif m.type is MsgType.UNREACHABLE:
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
        elif m.type is MsgType.TRANSFER_LEADER:
            self._handle_transfer_leader(m.frm, pr)

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            # Fast backtracking: the hint lets us skip a whole conflicting term per round trip.
            probe = m.reject_hint
            if m.log_term > 0:
                probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        # A probe answered at the current match also proves where the logs agree: resume streaming.
        if not pr.maybe_update(m.index) and not (pr.state is ProgressState.PROBE and pr.match == m.index):
            return
        caught_up = pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot
        if pr.state is ProgressState.PROBE or caught_up:
            pr.become_replicate()
        self._commit_and_bcast()
        if self.role is not Role.LEADER:
            return  # it removed itself, and that change just committed
        if was_paused:
            # A follower that was paused (probing, or a full window) hears from us now even when there is
            # nothing new: it learns the commit index (rare, so worth a message).
            self._send_append(m.frm)
        # Pipelining: keep the window full while there is something to send.
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, m.frm))

    def abort_transfer(self, target: int) -> None:
        """The owner gave up handing leadership to target: take proposals again now, not only once the
        election timeout abandons the transfer. A TIMEOUT_NOW already sent may still make target campaign;
        safety does not depend on the transfer's state."""
        if self.role is Role.LEADER and self.lead_transferee == target:
            self.lead_transferee = NONE

    def _handle_transfer_leader(self, target: int, pr: Progress) -> None:
        if target == self.lead_transferee or target not in self.peers:
            return  # under way already, or a learner, which never campaigns
        # 3.10: stop taking proposals, bring the target up to date, then tell it to campaign now.
        self.lead_transferee = target
        self.election_elapsed = 0
        if pr.match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, target))
        else:
            self._send_append(target)

    def _handle_read_index(self, m: Message) -> None:
        if not self._committed_in_term():
            # 6.4: until the no-op of this term commits, our commit index may be behind the true one (also
            # alone: a single node commits its own entries only once they are durable).
            self.pending_reads.append(m)
            return
        if self.peers == (self.id,):
            # Alone: nobody else can lead. (A leader that removed itself, with one voter left, is not.)
            self._answer_read(ReadRequest(self.log.committed, m.context, m.frm))
            return
        if self.read_only.add(self.log.committed, m.context, m.frm):
            self.read_only.ack(self.id, m.context)
            self._bcast_heartbeat(m.context)

    def _handle_read_ack(self, m: Message) -> None:
        acks = self.read_only.ack(m.frm, m.context)
        if acks is None:
            return
        if quorum.vote_result(self.peers, {a: True for a in acks}) is not quorum.VoteResult.WON:
            return
        for req in self.read_only.release(m.context):
            self._answer_read(req)

    def _answer_read(self, req: ReadRequest) -> None:
        if req.origin in (NONE, self.id):
            self.read_states.append(ReadState(req.index, req.context))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, req.origin, index=req.index, context=req.context))

    def _step_candidate(self, m: Message) -> None:
        my_resp = MsgType.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            # 5.2: a leader of our term exists; a candidate returns to follower.
            self.become_follower(m.term, m.frm)
            self._step_follower(m)
        elif m.type is my_resp:
            result = self._poll(m.frm, not m.reject)
            if result is quorum.VoteResult.WON:
                self._won(MsgType.PRE_VOTE if self.role is Role.PRE_CANDIDATE else MsgType.VOTE)
            elif result is quorum.VoteResult.LOST:
                self.become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            self.election_elapsed = 0
            self.lead = m.frm
            if m.type is MsgType.APP:
                self._handle_append(m)
            elif m.type is MsgType.HEARTBEAT:
                # Commit only what an AppendEntries of this leader has shown to match its log: the leader's
                # view of our log can be stale (our disk was wiped), and entries we hold but have not
                # matched may be another leader's uncommitted ones.
                self.log.commit_to(min(m.commit, self.verified))
                self._send(
                    Message(
                        MsgType.HEARTBEAT_RESP,
                        m.frm,
                        index=self.log.last_index(),
                        commit=self.log.committed,
                        context=m.context,
                    )
                )
            else:
                self._handle_snapshot(m)
        elif m.type in (MsgType.READ_INDEX, MsgType.TRANSFER_LEADER):
            # Forward to the leader; dropped when none is known (the owner's deadline reports it).
            if self.lead != NONE:
                # The message keeps its origin: the transfer target, or the node that asked for the read.
                origin = m.frm if m.frm != NONE else self.id
                self.msgs.append(Message(m.type, self.lead, origin, 0, context=m.context))
        elif m.type is MsgType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))
        elif m.type is MsgType.TIMEOUT_NOW:
            self._hup(transfer=True)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MsgType.APP_RESP, m.frm, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            if m.entries and self.cfg.conf_change_of is not None:
                self._rescan_conf(m.index)
            self.verified = max(self.verified, last_new)
            self._send(Message(MsgType.APP_RESP, m.frm, index=last_new))
            return
        # 5.3 with the dissertation's optimisation: point the leader at our last entry whose term is not
        # newer than the one it tried, so it can skip a whole term per round trip.
        hint, hint_term = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._send(
            Message(MsgType.APP_RESP, m.frm, index=m.index, reject=True, reject_hint=hint, log_term=hint_term)
        )

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        meta = m.snapshot.meta
        if meta.index <= self.log.committed:
            self._send(Message(MsgType.APP_RESP, m.frm, index=self.log.committed))
        elif self.log.match_term(meta.index, meta.term):
            # We already hold the snapshot's last entry: just fast-forward the commit index.
            self.log.commit_to(meta.index)
            self.verified = max(self.verified, meta.index)
            self._send(Message(MsgType.APP_RESP, m.frm, index=self.log.committed))
        else:
            self.log.restore(m.snapshot)
            self.verified = meta.index
            self._base_conf = meta.conf or self.conf_state()
            self._confs = []
            self._switch_to(self._base_conf)
            self._send(Message(MsgType.APP_RESP, m.frm, index=self.log.last_index()))


def changed(conf: ConfState, cc: ConfChange) -> ConfState:
    """The membership after cc. Total, as every node must reach the same one from the same log: a change
    the leader would have refused (a voter made a learner, the last voter removed) changes nothing."""
    voters, learners = set(conf.voters), set(conf.learners)
    if cc.type is ConfChangeType.ADD_LEARNER:
        if cc.node not in voters:
            learners.add(cc.node)
    elif cc.type is ConfChangeType.ADD_VOTER:
        learners.discard(cc.node)
        voters.add(cc.node)
    elif voters != {cc.node}:
        voters.discard(cc.node)
        learners.discard(cc.node)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
