"""The owner's handle on a Raft node: feed it time and input, take its work as one Ready, acknowledge it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .raft import Config, Raft
from .types import (
    LOCAL_MESSAGES,
    NONE,
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)

_ANSWERS = frozenset(
    {
        MsgType.APP_RESP,
        MsgType.HEARTBEAT_RESP,
        MsgType.VOTE_RESP,
        MsgType.PRE_VOTE_RESP,
        MsgType.READ_INDEX_RESP,
    }
)


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    role: Role
    term: int
    lead: int
    commit: int
    applied: int
    last_index: int
    match: dict[int, int]  # leader only: how far each node's log is known to match ours


class RawNode:
    def __init__(
        self,
        config: Config,
        hard_state: HardState = HardState(),
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        applied: int = 0,
    ) -> None:
        """Start from persisted state only: what the owner loaded from disk, nothing remembered in memory."""
        self.raft = Raft(config, hard_state, snapshot, entries, applied)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()
        self._pending: Ready | None = None

    # -- input --------------------------------------------------------------------------------------
    def tick(self) -> None:
        self.raft.tick()

    def tick_heartbeat(self, ticks: int) -> None:
        """A leader's heartbeat clock alone (Raft.tick_heartbeat)."""
        self.raft.tick_heartbeat(ticks)

    def ticks_until_due(self) -> int:
        """Ticks that can be skipped and delivered later in one go (at least 1): see Raft.ticks_until_due."""
        return self.raft.ticks_until_due()

    def step(self, m: Message) -> None:
        """Feed a message from the network. Local-only kinds are refused, and answers from non-members are
        dropped. Other messages from a non-member are taken: a leader that removed itself leads, and sends,
        until its removal commits (dissertation 4.2.2)."""
        if m.type in LOCAL_MESSAGES:
            raise ValueError(f"{m.type.value} is a local message and cannot come from the network")
        if m.type in _ANSWERS and m.frm not in self.raft.prs:
            return
        self.raft.step(m)

    def campaign(self) -> None:
        self.raft.step(Message(MsgType.HUP))

    def propose(self, data: bytes) -> int:
        """Append one command; returns its log index. Raises ProposalDropped when not the leader."""
        return self.raft.propose([data])

    def propose_batch(self, datas: Sequence[bytes]) -> int:
        """Append many commands in one go (one AppendEntries per follower); returns the first index."""
        return self.raft.propose(datas)

    def propose_conf_change(self, cc: ConfChange, data: bytes) -> int:
        """Append a membership change the owner encoded as data (Raft.propose_conf_change); returns its
        index. Every node switches to the new membership as it appends the entry."""
        return self.raft.propose_conf_change(cc, data)

    def conf_state(self) -> ConfState:
        """The membership: the latest in the log, committed or not."""
        return self.raft.conf_state()

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; it comes back as a ReadState carrying context.

        context must be unique across the cluster while the read is outstanding.
        """
        if not context:
            raise ValueError("a read needs a non-empty context")
        if self.raft.lead == NONE:
            raise ProposalDropped("no leader known")
        self.raft.step(Message(MsgType.READ_INDEX, context=context))

    def transfer_leader(self, target: int) -> None:
        self.raft.step(Message(MsgType.TRANSFER_LEADER, frm=target))

    def abort_transfer(self, target: int) -> None:
        """Give up a leadership transfer to target (a no-op when none to target is under way)."""
        self.raft.abort_transfer(target)

    def report_unreachable(self, node: int) -> None:
        self.raft.step(Message(MsgType.UNREACHABLE, frm=node))

    def report_snapshot(self, node: int, ok: bool) -> None:
        self.raft.step(Message(MsgType.SNAP_STATUS, frm=node, reject=not ok))

    def compact(self, index: int) -> None:
        """The owner has a snapshot covering index: drop the log up to it. The log's snapshot records the
        membership as of index (SnapshotMeta.conf), and a follower that installs it takes that membership."""
        self.raft.compact(index)

    def conf_at(self, index: int) -> ConfState:
        """The membership as of index (at or after the log's snapshot, at most the applied index): what a
        snapshot of the state at index must carry, so that the follower installing it takes it."""
        return self.raft.conf_at(index)

    def snapshot_meta(self) -> SnapshotMeta:
        """The position and membership of the log's snapshot: what the owner stores with its image."""
        return self.raft.log.snapshot_meta

    # -- output -------------------------------------------------------------------------------------
    def has_ready(self) -> bool:
        r = self.raft
        return bool(
            r.soft_state() != self._prev_soft
            or r.hard_state() != self._prev_hard
            or r.msgs
            or r.read_states
            or r.log.pending_snapshot
            or r.log.stabled < r.log.last_index()
            or r.log.applied < r.log.committed
        )

    def ready(self) -> Ready:
        """Take the pending work. Call advance() with it before the next ready()."""
        if self._pending is not None:
            raise RuntimeError("ready() called again before advance()")
        r = self.raft
        soft, hard = r.soft_state(), r.hard_state()
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=r.log.unstable_entries(),
            snapshot=r.log.pending_snapshot,
            committed_entries=r.log.next_committed_entries(),
            messages=r.msgs,
            read_states=r.read_states,
            # A leader's messages depend on nothing this Ready persists: its term and vote are durable
            # already, and its own new entries count toward commit only after advance().
            send_early=r.role is Role.LEADER
            and (hard.term, hard.vote) == (self._prev_hard.term, self._prev_hard.vote),
        )
        r.msgs = []
        r.read_states = []
        self._pending = rd
        return rd

    def advance(self) -> None:
        """The last Ready is done: its state is durable, its messages sent, its entries applied."""
        rd = self._pending
        if rd is None:
            raise RuntimeError("advance() without a ready()")
        self._pending = None
        log = self.raft.log
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            log.pending_snapshot = None
            log.applied_to(rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
            self.raft.on_persisted()
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)

    def status(self) -> Status:
        r = self.raft
        match = {p: pr.match for p, pr in r.prs.items()} if r.role is Role.LEADER else {}
        return Status(r.id, r.role, r.term, r.lead, r.log.committed, r.log.applied, r.log.last_index(), match)

    @property
    def soft_state(self) -> SoftState:
        return self.raft.soft_state()

    # Cheap reads for the driver's hot paths, where status() would copy the leader's match map.
    @property
    def id(self) -> int:
        return self.raft.id

    @property
    def snapshot_index(self) -> int:
        """The last index the log's snapshot covers: entries up to it are compacted away."""
        return self.raft.log.snapshot_meta.index

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def lead(self) -> int:
        return self.raft.lead

    @property
    def role(self) -> Role:
        return self.raft.role

    @property
    def applied(self) -> int:
        return self.raft.log.applied

    @property
    def committed(self) -> int:
        return self.raft.log.committed

    def log_term(self, index: int) -> int | None:
        """The term of the entry at index, or None when the log no longer (or does not yet) hold it."""
        return self.raft.log.term(index)

    def entry(self, index: int) -> Entry | None:
        """The entry at index, or None when the log no longer (or does not yet) hold it: for checkers
        (raftd.sim) that compare logs across nodes."""
        log = self.raft.log
        if index < log.first_index() or index > log.last_index():
            return None
        return log.entry(index)
