"""The single driver loop: tick -> step -> propose -> ready -> persist -> send -> apply -> advance.

Only this loop touches the Raft core and the state machine; gRPC handlers hand it work through lists and
futures and wake it with an event. A Ready is saved on the loop's own thread: handing each save to a
worker thread and back cost more CPU and latency than the fsync it waits for
(docs/performance-history.md). Whatever arrives during one save waits in gRPC and is taken into the next
Ready together (group commit). Snapshots, the compaction after them and loading are large, so they run
on the disk thread; while it is busy, Readies are saved there too, queued behind it, so the loop never
stalls on the storage's lock.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import grpc

from raftd import malloc
from raftd.config import ClusterConfig, NodeAddr
from raftd.consistency import StateHashes, state_hash
from raftd.core import (
    NONE,
    ConfChange,
    ConfChangeRefused,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
    handle_ready,
)
from raftd.errors import (
    REMOVED,
    WRONG_INCARNATION,
    FatalError,
    LeaderChanging,
    NotCapable,
    NotLeader,
    Removed,
    TargetUnreachable,
    Unavailable,
)
from raftd.events import NodeEvents, OriginalLines
from raftd.identity import Identity, new_cluster_id
from raftd.kv import Command, CommandError, Image, ImageError, KVStore, Op, Result, StateMachine, encode
from raftd.kv.command import op_of
from raftd.kv.members import Change, Member, MemberChange
from raftd.kv.mvcc import CompactRequest, Keyspace, KeyspaceCorrupt, encode_request, why_unwritable
from raftd.pending import Pending, Proposal
from raftd.settings import DEFAULTS, TUNING, Limits, Tuning
from raftd.snapshots import Snapshots
from raftd.storage import PersistedState, Storage, StorageError
from raftd.storage.checksum import RECOVER
from raftd.transport.base import Peer, Transport
from raftd.transport.peer import PeerClient

MERGE_PROTOCOL = 6  # the peer protocol that applies Op.MERGE (raftd.transport.peer.PROTOCOL_VERSION)

log = logging.getLogger("raftd.node")

T = TypeVar("T")


MAX_SUSPEND_S = 3600


def to_core(node_id: int) -> int:
    """Config ids start at 0 (the original format); inside the core 0 means "nobody"."""
    return node_id + 1


def from_core(core_id: int) -> int:
    return core_id - 1


_CORE_CHANGES = {
    Change.ADD_LEARNER: ConfChangeType.ADD_LEARNER,
    Change.ADD_VOTER: ConfChangeType.ADD_VOTER,
    Change.REMOVE: ConfChangeType.REMOVE,
}


def conf_change_of(data: bytes) -> ConfChange | None:
    """Config.conf_change_of: what an Op.MEMBER entry changes of who votes or listens, in core ids. An entry
    that does not decode changes nothing here: applying it stops the node as corrupt."""
    if op_of(data) != Op.MEMBER:
        return None
    try:
        mc = MemberChange.decode(Command.decode(data))
    except CommandError:
        return None
    kind = _CORE_CHANGES.get(mc.change)
    return ConfChange(kind, to_core(mc.node)) if kind is not None else None


def node_addr(node_id: int, address: str) -> NodeAddr:
    """A member's HOST:PORT as the cluster map's entry would be."""
    host, _, port = address.rpartition(":")
    return NodeAddr(node_id, host.strip("[]") if host.startswith("[") else host, int(port))


_CORE_NODE = re.compile(r"\b(node|learner) (\d+)\b")
_CORE_LIST = re.compile(r"reachable \(([\d, ]*)\)")


def in_config_ids(message: str) -> str:
    """A core refusal's message with the config ids users know ("node 1" in the core is node 0)."""
    message = _CORE_NODE.sub(lambda m: f"{m[1]} {from_core(int(m[2]))}", message)
    return _CORE_LIST.sub(
        lambda m: "reachable ({})".format(", ".join(str(from_core(int(i))) for i in m[1].split(", ") if i)),
        message,
    )


def conf_of(members: dict[int, Member]) -> ConfState | None:
    """The core's membership for a recorded one (None when none is recorded: the cluster map stands)."""
    if not members:
        return None
    voters = tuple(to_core(i) for i, m in members.items() if not m.learner)
    return ConfState(voters, tuple(to_core(i) for i, m in members.items() if m.learner))


@dataclass(frozen=True)
class NodeStatus:
    """What the services may know of the node: its own view, in config ids."""

    id: int
    address: str
    role: str  # follower, pre-candidate, candidate, leader, or suspended
    term: int
    leader_id: int  # -1: none known
    commit_index: int
    applied_index: int
    last_log_index: int
    suspended: bool
    peers: tuple[tuple[int, str, int], ...]  # (id, address, match index; 0 unless this node leads), members
    cluster: str
    cluster_id: str
    alarms: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemberView:
    """One member as the services show it (config ids)."""

    id: int
    address: str
    learner: bool
    incarnation: str
    match_index: int


def ticks_to_count(owed: int, due: int, waited: int) -> int:
    """How many of the ticks owed since the last count to deliver now (never past the one due).

    Time spent waiting counts in full, time spent busy in the loop for one tick at most: when the node is
    starved of CPU, time runs slow for it rather than firing elections it cannot help, and a leader does
    not step down (check-quorum) before reading the answers that wait for it. What a leader does not count
    still runs its heartbeat clock (RawNode.tick_heartbeat): its followers' clocks run in real time, and
    80 puts of 1 MiB at once cost an election when a busy leader's heartbeats came late.
    """
    return min(owed, due, waited + 1)


class _NodeIO:
    """The daemon's steps of a Ready: sqlite (on the disk thread when busy), gRPC senders, the KV store.
    The core walks them in the contract's order (raftd.core.handle_ready), as it does the simulator's."""

    __slots__ = ("node",)

    def __init__(self, node: RaftNode) -> None:
        self.node = node

    async def persist(self, rd: Ready) -> None:
        await self.node._persist(rd)

    async def send(self, rd: Ready) -> None:
        self.node._send(rd.messages)
        if rd.entries if rd.send_early else rd.committed_entries:
            # Early (dissertation 10.2.1): the senders put the appends on the wire before the save blocks
            # this thread, so followers write their copies while the leader writes its own. Late: a
            # follower's acknowledgement of the entries just written must not wait for it to apply the
            # previous batch.
            await asyncio.sleep(0)

    async def install(self, rd: Ready) -> None:
        assert rd.snapshot is not None
        node = self.node
        old, node.kv = node.kv, await node.snapshots.install(rd.snapshot)
        old.discard()
        node._learn(node.kv.members.items(), ())
        node._sync_peers()
        node._keyspace_changed()

    def apply(self, rd: Ready) -> None:
        self.node._apply(rd.committed_entries)

    def reads(self, rd: Ready) -> None:
        self.node.pending.confirm(rd.read_states, self.node.kv.applied)

    def advance(self, rd: Ready) -> None:
        node = self.node
        if rd.soft_state is not None:
            node._on_soft_state(rd.soft_state)
        if rd.hard_state is not None:
            node._on_hard_state(rd.hard_state)
        node.raw.advance()


class RaftNode:
    def __init__(
        self,
        cluster: ClusterConfig,
        node_id: int,
        storage: Storage,
        limits: Limits = DEFAULTS,
        transport: Transport = PeerClient,
        tuning: Tuning = TUNING,
        state_machine: Callable[[], StateMachine] = KVStore,
        rng: random.Random | None = None,
        executors: tuple[Executor, Executor] | None = None,
    ) -> None:
        """transport: the gRPC one, or raftd.transport.memory's for nodes of one process. rng (the election
        timeouts' randomness) and executors (the disk's and the snapshot encoder's) are the simulator's to
        choose (raftd.sim.realnode): seeded, and run inline on its virtual clock."""
        self.cluster = cluster
        self.limits = limits
        self.tuning = tuning
        self.new_state = state_machine  # the replicated state (raftd.kv.StateMachine), empty
        tick_s = tuning.tick_s
        self.me = cluster.node(node_id)
        self.id = to_core(node_id)
        self.storage = storage
        self.identity = Identity(storage.cluster_name, storage.cluster_id)
        # Where each node known to this one listens, by core id: the map's, then the membership record's
        # and its entries' as they are appended (_learn). Who is a member is the core's to say.
        self.addresses = {to_core(n.id): n for n in cluster.nodes}
        # The membership the log starts from: the cluster's bootstrap voters as this data directory
        # recorded them (raftd.server), not whatever the map says at this restart.
        record = storage.record
        voters = record.voters if record.voters is not None else tuple(n.id for n in cluster.nodes)
        # Who watches the record's addresses (the peer gate, raftd.transport.gate).
        self.on_addresses: list[Callable[[list[str]], None]] = []
        lo, hi = cluster.election_timeout_ms
        # How long a read waits for a leader to be elected (raftd.api.common): two elections' worth, so that
        # a client is not refused during a routine one, nor held long by a node cut off from a quorum.
        self.leader_wait_s = 2 * hi / 1000
        self.config = Config(
            self.id,
            tuple(to_core(v) for v in voters),
            # Seeded from the clock: ties between nodes' timeouts must differ between runs and nodes.
            rng or random.Random(time.time_ns() ^ self.id),
            election_tick=max(1, round(lo / 1000 / tick_s)),
            max_election_tick=max(2, round(hi / 1000 / tick_s)),
            heartbeat_tick=max(1, round(cluster.heartbeat_interval_ms / 1000 / tick_s)),
            conf_change_of=conf_change_of,
            max_learner_lag=limits.max_learner_lag,
        )
        self.transport = transport
        self.peers: dict[int, Peer] = {}
        self.wake = asyncio.Event()
        self.inbox: list[Message] = []
        self.pending = Pending()
        # Unary client calls in progress here, counted by the services: with more than one, Readies are
        # saved off the loop (_busy) and requests gather (Tuning.gather_*).
        self.unary_calls = 0
        self.last_call_at = 0.0  # when the newest of them came
        # The most calls in progress at once lately: once that many are in progress again, every caller
        # there is has come, and a gathering has nobody left to wait for.
        self.calls_peak = 0
        self.peak_at = 0.0
        self.transfers: list[int] = []
        self.suspend_request: float | None = None
        self.suspended = False
        self.stopping = False
        # Who watches the node's events (raftd.events): the original project's log lines, the health service.
        self.observers: list[NodeEvents] = [OriginalLines()]
        self.unreachable: set[int] = set()
        self.aborted_transfers: list[int] = []  # targets whose transfer_leader() gave up
        self._background: set[asyncio.Task[None]] = set()
        self._fatal: FatalError | Removed | None = None  # why run() must end, set off the loop
        self._runner: asyncio.Task[None] | None = None  # the task in run()
        self._alarm: asyncio.TimerHandle | None = None  # when run() wakes without input (_set_alarm)
        # The disk's thread, and one to encode large images: CPU work that must not run on the loop
        # (heartbeats would stall).
        self.disk, self.cpu = executors or (
            ThreadPoolExecutor(1, thread_name_prefix="raftd-disk"),
            ThreadPoolExecutor(1, thread_name_prefix="raftd-snapshot"),
        )
        self._disk_jobs = 0  # calls on the disk thread not finished yet
        # Called with each entry as it applies (index, term, data): the simulator's checkers.
        self.on_apply: list[Callable[[Entry], None]] = []
        self._read_ids = itertools.count(1)
        # The peer protocol version (MessageBatch.version) each peer's traffic showed, by core id: an entry
        # of a newer kind is proposed only once every peer can apply it, so a rolling upgrade never stops
        # a node of the previous release on an entry it cannot read.
        self._peer_versions: dict[int, int] = {}
        self._id_proposed = 0  # the term in which this node last proposed a cluster id
        self._merge_proposed = 0  # the term in which this node last proposed Op.MERGE
        self._record_proposed = 0  # the term in which it last proposed the bootstrap membership record
        self._map_checked = False  # the map against the record: once, at start (not again at a resume)
        # Each peer's data directory, from its traffic (for the bootstrap record), and the term in which
        # this node last proposed recording one.
        self._incarnations: dict[int, str] = {self.id: storage.record.incarnation}
        self._incarnation_proposed: dict[int, int] = {}
        self._synced_conf: ConfState | None = None  # the membership the peer senders were last made for
        self._leaving = False  # this node's removal applied: it stops shortly (_leave)
        self._next_probe = 0.0  # when a node outside the membership next asks whether it was removed
        self._limit_proposed = 0  # the term in which it last proposed a session limit
        self._compaction_proposed = 0  # the keyspace compaction this leader proposed last (0: none pending)
        # (time, keyspace revision) every tenth of --auto-compaction-period, the oldest first: how old each
        # revision is, for compaction by age (etcd's periodic mode), on every node so a new leader knows.
        self._revision_samples: collections.deque[tuple[float, int]] = collections.deque()
        self._next_sample = 0.0
        self._aged_revision: int | None = None  # the newest revision at least the period old, if known
        self._keyspace_moved: asyncio.Future[None] | None = None  # keyspace_moved()
        # The cross-node consistency check (raftd.consistency).
        self.hashes = StateHashes(self.tuning.state_hashes_kept)
        self._io = _NodeIO(self)  # how this node carries out a Ready's steps (raftd.core.handle_ready)
        self._next_hash_check = 0.0  # when the leader next proposes one
        self._hashing = False  # a hash of the state is being taken (_may_hash)
        self.snapshots = Snapshots(self)  # policy and transfer (raftd.snapshots)
        self._boot(*self._load())

    # -- lifecycle ----------------------------------------------------------------------------------
    def _load(self) -> tuple[PersistedState, StateMachine]:
        """What a (re)boot starts from: the stored state, and the state machine restored from its image
        (the log after it is replayed later). Safe off the loop: a resume runs it on the disk thread."""
        state = self.storage.load()
        kv = self.new_state()
        if state.snapshot is not None:
            try:
                kv.restore(state.snapshot.meta.index, state.snapshot.data)
            except ImageError as e:
                raise FatalError(f"the stored snapshot is unusable: {e}") from e
        return state, kv

    def _boot(self, state: PersistedState, kv: StateMachine) -> None:
        """(Re)build all volatile state from what _load read: at start and when a suspension ends."""
        snap = state.snapshot.meta if state.snapshot is not None else None
        if snap is not None and snap.conf is None:
            # The image's membership record is the membership as of its index (storage keeps the position
            # alone; the image is checksummed with everything else the snapshot holds).
            snap = dataclasses.replace(snap, conf=conf_of(kv.members))
        hard_state = state.hard_state
        if snap is not None and hard_state.commit < snap.index:
            # A local snapshot is saved without the commit index, whose save is deferred to the next write
            # (_persist): the stored one can lag it. An image holds committed entries only, so the commit
            # index is at least its index. (Found by the simulator of this node, raftd/sim/realnode.py.)
            hard_state = dataclasses.replace(hard_state, commit=snap.index)
        self.raw = RawNode(self.config, hard_state, snap, state.entries, applied=0)
        old: StateMachine | None = getattr(self, "kv", None)  # a resume replaces the state machine
        self.kv = kv
        if old is not None and old is not kv:
            old.discard()
        recorded = self._learn(kv.members.items(), state.entries)
        if self.cluster.addresses_given:
            # The map at this start wins for the nodes it lists: it is how an operator moves a node
            # while the cluster is down (raftctl member update is the way while it runs, and what makes
            # the move known to every node, joined ones included: hence the warning).
            for n in self.cluster.nodes:
                known = recorded.get(to_core(n.id), "")
                if known not in ("", n.address) and not self._map_checked:
                    log.warning(
                        "The cluster map has node %d at %s, the cluster has it at %s: if it moved, run "
                        "raftctl member update %d %s",
                        n.id,
                        n.address,
                        known,
                        n.id,
                        n.address,
                    )
                if to_core(n.id) != self.id:
                    self.addresses[to_core(n.id)] = n
            self._map_checked = True
        # The state machine holds only the image until the log after it is applied again: no read is
        # served before it reaches the commit index this node had stored ("possibly stale" must never
        # mean "empty").
        self._replay_to = state.hard_state.commit
        self.snapshots.reset(state.snapshot)
        self._soft = SoftState()
        self._vote = state.hard_state.vote
        self._saved = state.hard_state  # the hard state on disk
        self._unsaved: HardState | None = None  # newer than _saved in its commit index only

    async def run(self) -> None:
        self._runner = asyncio.current_task()
        if self.storage.record.removed:
            raise Removed()
        self._sync_peers()
        for observer in self.observers:
            observer.started(self.raw.term)
        self.spawn(self._trim_memory())
        self.wake.set()  # apply the stored log at once, not at the first tick or message
        loop = asyncio.get_running_loop()
        # Time is counted from ticked_at in whole ticks, but the loop only wakes for a tick when the core
        # says one is due (a heartbeat, an election timeout): waking every 10 ms would cost an idle node
        # more CPU than its heartbeats do. Ticks that only count are delivered late, all at once.
        ticked_at = loop.time()
        tick_s = self.tuning.tick_s
        while not self.stopping:
            due = self.raw.ticks_until_due()
            wake_at = ticked_at + due * tick_s
            pending = self.pending
            if pending.read_deadlines:
                wake_at = min(wake_at, pending.read_deadlines[0][0])
            if pending.reads:
                start = loop.time() + self.gather_delay(pending.reads_since)
                if self._round_in_flight():
                    start = max(start, pending.round_started + self.tuning.read_round_hold_s)
                wake_at = min(wake_at, start)
            if pending.proposals:
                wake_at = min(wake_at, loop.time() + self.gather_delay(pending.proposals_since))
            self._set_alarm(wake_at)
            waited_from = loop.time()
            await self.wake.wait()
            self.wake.clear()
            if self._fatal is not None:
                raise self._fatal
            if self.suspend_request is not None:
                self._cancel_alarm()  # a suspended node keeps no time
                await self._suspend(self.suspend_request)
                ticked_at = loop.time()
                continue
            now = loop.time()
            owed = int((now - ticked_at) / tick_s)
            ticks = ticks_to_count(owed, due, int((now - waited_from) / tick_s))
            # The due tick itself waits for the messages that arrived meanwhile: a heartbeat held up behind
            # a stall of the loop must reach the election timer before that tick fires it.
            hold = ticks == due and bool(self.inbox)
            for _ in range(ticks - hold):
                self.raw.tick()
            dropped = owed - ticks > 1  # time the clock gives up rather than owes
            if dropped:
                self.raw.tick_heartbeat(owed - ticks)  # a leader's only; see ticks_to_count
            ticked_at = now if dropped else ticked_at + ticks * tick_s
            self._take_input()
            self._expire_reads(now)
            if hold and self.raw.ticks_until_due() == 1:
                self.raw.tick()
            await self._drain_ready()
            self._maybe_propose_hash_check(now)
            self._sample_revision(now)
            if now >= self._next_probe:
                self._probe_if_outside(now)

    async def _trim_memory(self) -> None:
        """Every Tuning.trim_interval_s, hand the heap pages freed meanwhile back to the system.

        glibc keeps freed memory inside its heaps: after 2,000 connections came and went, the buffers
        they had held kept the node's RSS at twice its level for good. A trim takes a few ms on a worker
        thread, so a node does it every few seconds rather than waiting for a snapshot to do it.
        """
        loop = asyncio.get_running_loop()
        while not self.stopping:
            await asyncio.sleep(self.tuning.trim_interval_s)
            await loop.run_in_executor(self.cpu, malloc.trim)

    def _set_alarm(self, when: float) -> None:
        """Wake the loop by `when`, keeping the armed timer when it rings no later than that.

        Under load the loop wakes for input hundreds of times per tick, and a gathering's end moves with
        every call. A fresh timer per wake, cancelled at once, left thousands of dead entries in the event
        loop's timer heap, and every push into it paid for them (docs/performance-history.md). Ringing
        early costs one turn of the loop, which then arms for the new time.
        """
        if self._alarm is not None:
            # No later than asked, but for float rounding (ticked_at moves by a tick at a time): 0.1 ms.
            if self._alarm.when() - when < self.tuning.tick_s / 100:
                return
            self._alarm.cancel()
        self._alarm = asyncio.get_running_loop().call_at(when, self._ring)

    def _ring(self) -> None:
        self._alarm = None
        self.wake.set()

    def _cancel_alarm(self) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None

    async def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self._cancel_alarm()
        for observer in self.observers:
            observer.changed()
        self.pending.fail_all("the node is shutting down")
        for client in self.peers.values():
            await client.close()
        if self._runner is not None and self._runner is not asyncio.current_task():
            # The loop finishes the Ready it is in (and takes no other): it may still need the threads.
            await asyncio.wait({self._runner}, timeout=self.tuning.stop_wait_s)
        # Left pending, asyncio.run would cancel them after the server stopped, among gRPC's own tasks.
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.tuning.stop_wait_s)
        self.disk.shutdown(wait=True)
        self.cpu.shutdown(wait=True, cancel_futures=True)
        self.kv.discard()  # the keyspace's file is rebuilt at the next start anyway

    def halt(self) -> None:
        """Stop at once, as a crash stops a process (the simulator's crashes, raftd.sim.realnode): the
        loop is cancelled wherever it waits, with its timer and background work, and what waits to be
        sent is lost; no hand-over, no answer to callers. What was saved stays, so a new node on the same
        storage is a restart. stop() is the orderly way out."""
        self.stopping = True
        self._cancel_alarm()
        for task in (self._runner, *self._background):
            if task is not None:
                task.cancel()
        for peer in self.peers.values():
            peer.clear()

    # -- input from handlers ------------------------------------------------------------------------
    def deliver(self, messages: list[Message]) -> None:
        if self.suspended or self.suspend_request is not None:
            return
        self.inbox.extend(messages)
        self.wake.set()

    def deliver_snapshot(self, m: Message, cluster_id: str) -> None:
        """A SNAP message with its image, and its sender's cluster id, which this node takes if it installs
        the image and has none yet (the entry that named the cluster may be inside the image)."""
        assert m.snapshot is not None
        self.snapshots.offered(m.snapshot.meta, cluster_id)
        self.deliver([m])

    def _report_unreachable(self, peer: int) -> None:
        self.unreachable.add(peer)

    def _take_input(self) -> None:
        for peer in self.unreachable:
            self.raw.report_unreachable(peer)
        self.unreachable.clear()
        reports, self.snapshots.reports = self.snapshots.reports, []
        for peer, ok in reports:
            self.raw.report_snapshot(peer, ok)
        if self.inbox:
            inbox, self.inbox = self.inbox, []
            for m in inbox:
                self.raw.step(m)
        pending = self.pending
        if pending.proposals and not self.gather_delay(pending.proposals_since):
            # One Ready is saved whole before the loop ticks again: the rest wait for the next turn.
            batch = pending.take_proposals(self.tuning.proposal_batch_bytes)
            if pending.proposals:
                self.wake.set()
            try:
                first = self.raw.propose_batch([p.data for p in batch])
            except ProposalDropped as dropped:
                leader = self.leader()
                # Still the leader but handing over (a transfer): nowhere to forward to yet, so retry.
                error: Exception = (
                    NotLeader(leader)
                    if leader is None or leader.id != self.me.id
                    else Unavailable(f"{dropped}; retry shortly")
                )
                pending.refuse(batch, error)
            else:
                pending.proposed(batch, first, self.raw.term)
        if self._reads_due():
            # One ReadIndex round confirms every read that arrived since the last one.
            ctx = f"{self.id}:{next(self._read_ids)}".encode()
            try:
                self.raw.read_index(ctx)
            except ProposalDropped:
                pending.refuse_reads(LeaderChanging("no leader known"))
            else:
                now = asyncio.get_running_loop().time()
                pending.start_round(ctx, now, now + self.tuning.read_confirm_s)
        for change in pending.take_changes():
            self._propose_change(change)
        for target in self.transfers:
            self.raw.transfer_leader(target)
        self.transfers.clear()
        for target in self.aborted_transfers:
            self.raw.abort_transfer(target)
        self.aborted_transfers.clear()

    def _reads_due(self) -> bool:
        """Whether the reads asked for start their ReadIndex round now: not while the round before is in
        flight (they share the next one, as in etcd's read loop), nor while they gather (Tuning.gather_*)."""
        pending = self.pending
        return (
            bool(pending.reads) and not self._round_in_flight() and not self.gather_delay(pending.reads_since)
        )

    def call_started(self) -> None:
        """A unary call came (the services count them): while more than one is in progress, requests
        gather and Readies are saved off the loop."""
        self.unary_calls += 1
        now = self.last_call_at = asyncio.get_running_loop().time()
        if self.unary_calls >= self.calls_peak or now - self.peak_at > self.tuning.gather_peak_window_s:
            self.calls_peak, self.peak_at = self.unary_calls, now

    def call_ended(self) -> None:
        self.unary_calls -= 1

    def gather_delay(self, since: float) -> float:
        """How much longer requests waiting since `since` wait for more callers to share their batch (0:
        none; Tuning.gather_*). run() wakes for it; a follower's forwarding stream waits it (raftd.pipe).

        Not while every caller seen lately is in progress: with as many calls as the peak, no other caller
        is left to come, and waiting out the quiet only delays them all.
        """
        calls = self.unary_calls
        if calls <= 1 or calls >= self.calls_peak:
            return 0.0
        until = min(self.last_call_at + self.tuning.gather_quiet_s, since + self.tuning.gather_max_s)
        return max(0.0, until - asyncio.get_running_loop().time())

    def _wake_for(self, first: bool, since: float) -> None:
        """Wake the loop for a new request, unless it joins a batch that is gathering: the loop's alarm is
        already set for that batch's end (a gathering ends no sooner as calls come). A turn of the loop per
        call, only to find that the batch waits on, cost 64 unary writers about a tenth of their rate."""
        if first or not self.gather_delay(since):
            self.wake.set()

    def _round_in_flight(self) -> bool:
        """Whether the newest ReadIndex round is still unanswered and young enough to wait for."""
        return self.pending.round_in_flight(asyncio.get_running_loop().time(), self.tuning.read_round_hold_s)

    # -- the Ready cycle ----------------------------------------------------------------------------
    async def _drain_ready(self) -> None:
        # Not once stopping: stop() waits for this loop to end, then shuts the threads down, and the server
        # closes the storage.
        while not self.stopping and self.raw.has_ready():
            rd = self.raw.ready()
            if rd.entries:
                # Before anything is sent: a learner is replicated to as soon as its addition is appended.
                self._learn((), rd.entries)
            self._sync_peers()
            await handle_ready(rd, self._io)
        if self._reads_due():
            self.wake.set()  # the round they waited for is over: start theirs
        self.snapshots.maybe_take()

    def _send(self, messages: list[Message]) -> None:
        for m in messages:
            client = self.peers.get(m.to)
            if client is None:
                continue
            if m.type is MsgType.SNAP:
                self.spawn(self.snapshots.send(client, m))
            else:
                client.send(m)

    def spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        """A failed background job (a snapshot that could not be saved) stops the node like any disk error."""
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._fatal = FatalError(f"background work failed: {task.exception()}")
            self.wake.set()

    async def on_disk(self, work: Callable[..., T], *args: object) -> T:
        """Run work that holds the storage's lock for long on the disk thread, counted: while any is there,
        Ready saves queue behind it there rather than block the loop on the lock."""
        self._disk_jobs += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.disk, work, *args)
        finally:
            self._disk_jobs -= 1

    async def _persist(self, rd: Ready) -> None:
        hs = rd.hard_state
        durable = bool(rd.entries) or rd.snapshot is not None
        if hs is not None and not durable and (hs.term, hs.vote) == (self._saved.term, self._saved.vote):
            # Only the commit index moved. Raft needs no durable commit index (a restarted node learns it
            # from the leader again), so it rides along with the next write instead of costing an fsync.
            self._unsaved, hs = hs, None
        elif hs is None and durable:
            hs = self._unsaved
        if hs is None and not durable:
            return
        if rd.snapshot is not None:
            # Before the save is queued: a local snapshot queued after it must see that it is older.
            self.snapshots.saving(rd.snapshot.meta)
        try:
            if rd.snapshot is None and not self._disk_jobs and not self._busy(rd):
                self.storage.save(hs, rd.entries)
            else:
                await self.on_disk(self.storage.save, hs, rd.entries, rd.snapshot)
        except Exception as e:
            raise FatalError(f"cannot persist Raft state: {e}") from e
        if hs is not None:
            self._saved, self._unsaved = hs, None

    def _busy(self, rd: Ready) -> bool:
        """Whether clients keep this node busy beyond the Ready being saved; then it is saved on the disk
        thread, and the loop goes on taking requests meanwhile, to share the next save.

        grpc.aio accepts one new call, and reads one message of a stream, per turn of the event loop, so a
        save that blocks the loop caps those at one per fsync, each save carrying one write
        (docs/performance-history.md, issue 16). A lone client's write is saved on the loop, which is cheaper.
        """
        return self.unary_calls > 1 or len(self.pending.waiting) > len(rd.entries)

    def _apply(self, entries: list[Entry]) -> None:
        pending = self.pending
        size = 0
        moved = False  # the keyspace changed: its watchers are woken once, after the batch
        revision = self.kv.keyspace.revision  # raftd.v1 writes move it too, once merged
        for e in entries:
            for observe in self.on_apply:
                observe(e)
            size += len(e.data)
            try:
                cmd = Command.decode(e.data) if e.data else None
                result = self.kv.apply(e.index, cmd) if cmd is not None else None
            except CommandError as err:
                raise FatalError(f"log entry {e.index} is corrupt: {err}") from err
            except KeyspaceCorrupt as err:
                raise FatalError(f"{err}; {RECOVER}") from err
            except sqlite3.Error as err:
                raise FatalError(self._unwritable(err)) from err
            if cmd is not None and cmd.op is Op.MVCC:
                moved = True
            elif cmd is not None and cmd.op is Op.CLUSTER_ID:
                self.adopt_cluster_id(cmd.value.decode(errors="replace"))
            elif cmd is not None and cmd.op is Op.MEMBER:
                self._synced_conf = None  # a removal applied: its sender goes (_sync_peers)
                mc = MemberChange.decode(cmd)
                if mc.change is Change.REMOVE and mc.node == self.me.id and self.kv.members:
                    self._leave()
            elif cmd is not None and cmd.op is Op.HASH_CHECK and self._may_hash():
                self._hashing = True
                # The copy now, at this index: the task starts only after the whole batch has applied.
                self.spawn(self._hash_state(e.index, self.kv.image()))
            if result is None:
                self.kv.skip(e.index)
            if pending.waiting:  # a follower's are empty: no call per entry
                pending.applied(e, result)
        try:
            self.kv.keyspace.flush()  # the batch's buffered keyspace rows, in one INSERT (raftd.kv.mvcc)
        except sqlite3.Error as err:
            raise FatalError(self._unwritable(err)) from err
        self.snapshots.applied(size)
        self._maybe_propose_session_limit()
        self._maybe_propose_record()
        self._maybe_compact_keyspace()
        self._maybe_merge()
        if moved or self.kv.keyspace.revision != revision:
            self._keyspace_changed()
        self.pending.release(self.kv.applied)

    def _unwritable(self, err: sqlite3.Error) -> str:
        return f"cannot write the keyspace's file: {err}{why_unwritable(self.kv.keyspace)}"

    def _expire_reads(self, now: float) -> None:
        if not self.pending.read_deadlines:  # every turn of the loop: no error built for nothing
            return
        limit = self.tuning.read_confirm_s
        self.pending.expire_reads(now, Unavailable(f"the read was not confirmed within {limit:g}s; retry"))

    def _on_hard_state(self, hs: HardState) -> None:
        if hs.vote != self._vote and hs.vote != NONE:
            for observer in self.observers:
                observer.voted(from_core(hs.vote))
        self._vote = hs.vote

    def _on_soft_state(self, soft: SoftState) -> None:
        prev, self._soft = self._soft, soft
        if prev.role is Role.LEADER and soft.role is not Role.LEADER:
            self.pending.leadership_lost("leadership was lost before the write committed", self.raw.committed)
        if soft.role is not prev.role:
            for observer in self.observers:
                observer.became(prev.role, soft.role, self.raw.term)
            if soft.role is Role.LEADER:
                self._maybe_propose_cluster_id()
        if soft.lead != prev.lead:
            self.pending.leader_changed(from_core(soft.lead) if soft.lead != NONE else None)
        for observer in self.observers:
            observer.changed()

    def peer_speaks(self, core_id: int, version: int) -> None:
        """A peer's traffic carried this protocol version: 1 applies cluster id entries, 2 session checks,
        3 hash checks, 4 membership entries, 5 keyspace entries (Op.MVCC), 6 Op.MERGE."""
        if core_id not in self.addresses or self._peer_versions.get(core_id, 0) >= version:
            return
        self._peer_versions[core_id] = version
        self._maybe_propose_cluster_id()
        self._maybe_propose_session_limit()
        self._maybe_propose_record()
        self._maybe_merge()

    def _peers_speak(self, version: int) -> bool:
        if version <= MERGE_PROTOCOL and self.kv.merged:
            # The log says so for good: Op.MERGE was proposed only once every member spoke it. A new leader
            # hears from its peers only as they answer it (a follower hears from the leader alone), and
            # one that is down may never answer: without this, a failover with a node down would refuse
            # every etcd write as "not capable".
            return True
        conf = self.raw.conf_state()
        return all(
            self._peer_versions.get(p, 0) >= version for p in conf.voters + conf.learners if p != self.id
        )

    def _maybe_propose_cluster_id(self) -> None:
        """A new (or upgraded) cluster's leader names it (raftd.identity), once every peer has shown that
        it can apply the entry: a node of the previous release would stop on it, so a rolling upgrade
        commits the id only when its last node is upgraded. Should the leader lose leadership before the
        entry commits, the next one proposes again: the first such entry applied wins everywhere."""
        if self.identity.id or not self.is_leader() or self._id_proposed == self.raw.term:
            return
        if not self._peers_speak(1):
            return
        self._id_proposed = self.raw.term
        try:
            fut = self.propose_nowait(Command(Op.CLUSTER_ID, b"", new_cluster_id().encode()))
        except (NotLeader, Unavailable):
            return
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _maybe_merge(self) -> None:
        """The leader moves raftd.v1's keys into the keyspace (Op.MERGE) once every member can apply the
        entry: until then a node of the previous release could neither apply it nor read the snapshots
        taken after it. A fresh cluster merges at its first leader's first applies (nothing to move). One
        proposal per term; a lost one is proposed again by the next leader."""
        if self.kv.merged or not self.is_leader() or self._merge_proposed == self.raw.term:
            return
        if not self._peers_speak(MERGE_PROTOCOL) or self.raw.committed > self.kv.applied:
            return
        self._merge_proposed = self.raw.term
        try:
            fut = self.propose_nowait(Command(Op.MERGE, b""))
        except (NotLeader, Unavailable):
            return
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _sample_revision(self, now: float) -> None:
        """Every tenth of --auto-compaction-period, note the keyspace's revision, so that the revisions at
        least the period old are known (the newest such sample's and those below it)."""
        period = self.limits.auto_compaction_period_s
        if not period:
            return
        samples = self._revision_samples
        if now >= self._next_sample:
            self._next_sample = now + period / 10
            samples.append((now, self.kv.keyspace.revision))
        while len(samples) > 1 and samples[1][0] <= now - period:
            samples.popleft()
        self._aged_revision = samples[0][1] if samples and samples[0][0] <= now - period else None
        self._maybe_compact_keyspace()

    def _maybe_compact_keyspace(self) -> None:
        """Keep the keyspace's history to its last --auto-compaction-retention revisions (etcd's revision
        mode) and --auto-compaction-period seconds (its periodic mode), so that a client's writes cannot
        make every node hold their history without bound. The leader proposes a compaction through the
        log; by count once the history is a tenth past the retention, so that one entry compacts many
        revisions; by age at most once a tenth of the period. With both, it keeps enough for both. One
        at a time: the next waits for it to apply."""
        keep = self.limits.auto_compaction_retention
        period = self.limits.auto_compaction_period_s
        ks = self.kv.keyspace
        if not (keep or period) or not self.is_leader():
            return
        targets = []
        if keep:
            if ks.revision - ks.compact_revision < keep + max(1, keep // 10):
                return
            targets.append(ks.revision - keep)
        if period:
            if self._aged_revision is None:
                return
            targets.append(self._aged_revision)
        target = min(targets)
        if target <= ks.compact_revision or self._compaction_proposed > ks.compact_revision:
            return
        if not self._peers_speak(5):
            return
        try:
            fut = self.propose_nowait(Command(Op.MVCC, b"", encode_request(CompactRequest(target))))
        except (NotLeader, Unavailable):
            return
        self._compaction_proposed = target

        def done(f: asyncio.Future[Result]) -> None:
            if f.cancelled() or f.exception() is not None:
                self._compaction_proposed = 0  # not applied, or not known to be: the next apply tries again

        fut.add_done_callback(done)

    def _maybe_propose_session_limit(self) -> None:
        """Make this leader's --max-sessions the cluster's (an Op.SESSION_LIMIT entry), once per term, once
        every peer can apply it. Checked after applying, so that the state it compares with is current
        (a new leader has applied all before its term once its first entry applied)."""
        want = self.limits.max_sessions
        if want == self.kv.session_limit or self._limit_proposed == self.raw.term or not self.is_leader():
            return
        if not self._peers_speak(2) or self.raw.committed > self.kv.applied:
            return
        self._limit_proposed = self.raw.term
        try:
            fut = self.propose_nowait(Command(Op.SESSION_LIMIT, b"", str(want).encode()))
        except (NotLeader, Unavailable):
            return
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    # -- membership ---------------------------------------------------------------------------------
    def _learn(self, members: Iterable[tuple[int, Member]], entries: Iterable[Entry]) -> dict[int, str]:
        """Take members' addresses from a record and from Op.MEMBER entries as they are appended: a node
        added is reached before its entry applies (it must catch up first). Returns them all (this node's
        own too), by core id."""
        learned = {to_core(i): m.address for i, m in members}
        for e in entries:
            if e.data and op_of(e.data) == Op.MEMBER:
                try:
                    mc = MemberChange.decode(Command.decode(e.data))
                except CommandError:
                    continue  # applying it stops the node as corrupt
                learned.update((to_core(i), m.address) for i, m in mc.members)
                if mc.address:
                    learned[to_core(mc.node)] = mc.address
        changed = False
        for core_id, address in learned.items():
            known = self.addresses.get(core_id)
            if core_id != self.id and address and (known is None or known.address != address):
                try:
                    self.addresses[core_id] = node_addr(from_core(core_id), address)
                except ValueError:
                    continue
                changed = True
        if changed:
            self._synced_conf = None  # a sender's address may have moved
            hosts = [a.host for a in self.addresses.values()]
            for watch in self.on_addresses:
                watch(hosts)
        return learned

    def _sync_peers(self) -> None:
        """One sender per member but this node, made and dropped as the membership changes. A member
        removed keeps its sender until the removal applies: a leader that removed itself leads until the
        change commits, and needs its followers' answers for that. A node that is no member in its own
        view (one that joins: its log does not hold its addition yet) has a sender to every node it knows
        of, since the leader that adds it may be none of the bootstrap voters its core starts from."""
        conf = self.raw.conf_state()
        if conf == self._synced_conf:
            return
        self._synced_conf = conf
        members = {*conf.voters, *conf.learners, *(to_core(i) for i in self.kv.members)}
        if self.id not in members:
            members.update(self.addresses)
        want = {p for p in members if p != self.id and p in self.addresses}
        for core_id, client in list(self.peers.items()):
            if core_id not in want or client.address != self.addresses[core_id].address:
                del self.peers[core_id]
                self.spawn(client.close())
        for core_id in sorted(want - set(self.peers)):
            client = self.transport(
                core_id,
                self.addresses[core_id].address,
                self.identity,
                self._report_unreachable,
                self.hashes,
                self.limits,
                self.tuning,
            )
            client.incarnation = self.storage.record.incarnation
            client.on_refused = self._refused
            client.start()
            self.peers[core_id] = client

    def is_member(self, core_id: int) -> bool:
        conf = self.raw.conf_state()
        return core_id in conf.voters or core_id in conf.learners

    def peer_refusal(self, core_id: int, incarnation: str) -> str | None:
        """Why a peer's traffic is refused for good, or None to take it (per batch: cheap).

        A member whose id the record gives another data directory (a wiped node back under its old id:
        it might vote twice in a term), or a node the cluster removed (it never got the entry that
        removed it, and would otherwise campaign on). The refused node stops (_refused)."""
        members = self.kv.members
        if not members:
            if incarnation and self.is_member(core_id):  # members only: a bounded map
                self._incarnations[core_id] = incarnation  # for the bootstrap record
            return None
        node = from_core(core_id)
        member = members.get(node)
        if member is None:
            return REMOVED if node < self.kv.next_member_id else None
        if incarnation and member.incarnation != incarnation:
            if member.incarnation:
                return WRONG_INCARNATION
            self._maybe_record_incarnation(node, incarnation)
        return None

    def _probe_if_outside(self, now: float) -> None:
        """A node that appended its own removal never campaigns, and its leader sends it nothing more, so
        it would never hear that the removal committed: while outside the membership, it says a word to
        each member now and then (an answer the core drops from a non-member), and a member that applied
        the removal refuses it (peer_refusal), which stops it. A node that joins says the same words, to
        no effect, until its addition reaches it; and if it is removed before anything reached it (its
        leader could not reach it), the same words are how it learns."""
        self._next_probe = now + self.leader_wait_s
        if self.is_member(self.id) or self.suspended:
            return
        if not self.kv.members and self.storage.record.joined is None:
            return  # no record yet: a map's node, which the map makes a member
        for core_id, client in self.peers.items():
            client.send(Message(MsgType.HEARTBEAT_RESP, to=core_id, frm=self.id, term=self.raw.term))

    def _refused(self, why: str) -> None:
        """A peer refused this node's traffic for good (peer_refusal)."""
        if self._fatal is not None or self.stopping:
            return
        if why.startswith(REMOVED):
            try:
                self._record_removed()
            except FatalError as e:
                self._fatal = e
            else:
                self._fatal = Removed()
        else:
            self._fatal = FatalError(WRONG_INCARNATION)
        self.wake.set()

    def damaged(self, e: Exception) -> None:
        """A service read damaged state: the node stops with the message, and serves none of it."""
        if self._fatal is None:
            self._fatal = FatalError(f"{e}; {RECOVER}")
        self.wake.set()

    def _record_removed(self) -> None:
        record = self.storage.record
        if not record.removed:
            try:
                self.storage.save_record(dataclasses.replace(record, removed=True))
            except StorageError as e:
                raise FatalError(str(e)) from e

    def _leave(self) -> None:
        """This node's removal applied: say so on disk, then stop once the messages of this Ready are out
        (a leader that removed itself hands over first: raftd.core)."""
        if self._leaving:
            return
        self._leaving = True
        self._record_removed()
        log.warning("This node was removed from the cluster; it stops")

        def stop() -> None:
            if self._fatal is None:
                self._fatal = Removed()
            self.wake.set()

        asyncio.get_running_loop().call_later(self.tuning.leave_grace_s, stop)

    def _maybe_propose_record(self) -> None:
        """The first leader that can records the cluster's membership (Change.BOOTSTRAP): the map's,
        which the core runs on until then, with each member's address and data directory. Only once every
        member speaks protocol 4: a node of the previous release would stop on the entry. Changes wait
        for it (change_member)."""
        if self.kv.members or not self.is_leader() or self._record_proposed == self.raw.term:
            return
        if not self._peers_speak(4) or self.raw.committed > self.kv.applied:
            return
        conf = self.raw.conf_state()
        members = tuple(
            (
                from_core(p),
                Member(self.addresses[p].address, p in conf.learners, self._incarnations.get(p, "")),
            )
            for p in sorted(conf.voters + conf.learners)
        )
        self._record_proposed = self.raw.term
        try:
            fut = self.propose_nowait(MemberChange(Change.BOOTSTRAP, members=members).command())
        except (NotLeader, Unavailable):
            return
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _maybe_record_incarnation(self, node: int, incarnation: str) -> None:
        """A member's first traffic since the record names no data directory for it (a bootstrap member
        the record was made without, a new member's first words): the leader records it, once."""
        term = self.raw.term
        if not self.is_leader() or self._incarnation_proposed.get(node) == term:
            return
        self._incarnation_proposed[node] = term
        try:
            fut = self.propose_nowait(
                MemberChange(Change.INCARNATION, node, incarnation=incarnation).command()
            )
        except (NotLeader, Unavailable):
            return
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def members(self) -> list[MemberView]:
        """The membership as this node's core has it, with the record's addresses and data directories."""
        st = self.raw.status()
        conf = self.raw.conf_state()
        out = []
        for core_id in sorted(conf.voters + conf.learners):
            node = from_core(core_id)
            addr = self.addresses.get(core_id)
            recorded = self.kv.members.get(node)
            out.append(
                MemberView(
                    node,
                    addr.address if addr is not None else "",
                    core_id in conf.learners,
                    recorded.incarnation if recorded is not None else "",
                    st.match.get(core_id, 0),
                )
            )
        return out

    def membership_recorded(self) -> bool:
        """Whether the cluster's membership record has applied here (changes are refused until then)."""
        return bool(self.kv.members)

    def bootstrap_voters(self) -> tuple[int, ...]:
        return tuple(from_core(p) for p in self.config.peers)

    def new_member_id(self) -> int:
        """An id never given to a member of this cluster (the record's high-water mark), nor named by this
        node's map."""
        known = [from_core(p) for p in self.addresses] + list(self.bootstrap_voters())
        return max(self.kv.next_member_id, max(known, default=-1) + 1)

    async def change_member(self, change: Change, node: int, address: str = "") -> int:
        """Propose one membership change on this leader and wait until it applies here; the member's id
        (for an addition: node, or with node -1 the lowest id never given).

        Refused before it is proposed (it never applies): NotLeader, Unavailable, ConfChangeRefused. Once
        proposed, a failure is OutcomeUnknown, as a write's is."""
        self._check_serving()
        if not self.is_leader():
            raise NotLeader(self.leader())
        if not self.kv.members:
            raise ConfChangeRefused(
                "the cluster has not recorded its membership yet (its leader does once every member runs a "
                "release that can); retry shortly"
            )
        members = self.kv.members
        if change is Change.ADD_LEARNER:
            lowest = self.new_member_id()
            if 0 <= node < lowest:
                raise ConfChangeRefused(
                    f"node id {node} was given already (ids are never reused); the lowest free is {lowest}",
                    invalid=True,
                )
            taken = [m for m in self.members() if m.address == address]
            if taken:
                raise ConfChangeRefused(f"node {taken[0].id} listens at {address} already", invalid=True)
            node = node if node >= 0 else lowest
        elif change in (Change.UPDATE, Change.ADD_VOTER) and node not in members:
            # A promotion of no member would add a voter that nothing runs (raftd adds learners only).
            raise ConfChangeRefused(f"node {node} is not a member", invalid=True)
        elif change is Change.ADD_VOTER:
            address = members[node].address
        mc = MemberChange(change, node, address)
        data = mc.command().encode()
        fut = self.pending.add_change(data)
        self.wake.set()
        await fut
        return node

    def _propose_change(self, change: Proposal) -> None:
        """On the loop: a membership change into the log, or refused (it never applies)."""
        conf = conf_change_of(change.data)
        try:
            if conf is not None:
                index = self.raw.propose_conf_change(conf, change.data)
            else:
                index = self.raw.propose_batch([change.data])
        except ConfChangeRefused as e:
            self.pending.refuse([change], ConfChangeRefused(in_config_ids(str(e)), invalid=e.invalid))
        except ProposalDropped:
            self.pending.refuse([change], NotLeader(self.leader()))
        else:
            self.pending.proposed([change], index, self.raw.term)

    def _maybe_propose_hash_check(self, now: float) -> None:
        """Every --corrupt-check-interval, the leader has every replica hash its state at one index."""
        interval = self.limits.corrupt_check_interval_s
        if not interval or now < self._next_hash_check or not self.is_leader() or not self._peers_speak(3):
            return
        self._next_hash_check = now + interval
        try:
            fut = self.propose_nowait(Command(Op.HASH_CHECK, b""))
        except (NotLeader, Unavailable):
            return
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _may_hash(self) -> bool:
        """One hash at a time, and none while a restarted node replays its stored log: an idle cluster logs a
        check a minute, and hashing each one met on the way (the whole state each time) would take hours.
        Peers compare the indexes hashed; the ones skipped are simply not compared."""
        return not self._hashing and self.kv.applied >= self._replay_to

    async def _hash_state(self, index: int, image: Image) -> None:
        """Hash the state as it stood after applying index (image, copied then), on a worker thread."""
        try:
            value = await asyncio.get_running_loop().run_in_executor(self.cpu, state_hash, image)
        finally:
            self._hashing = False
        for peer, alarm in self.hashes.record(index, value):
            log.error(
                "%s: this node or node %d is corrupt; replace the one whose state is wrong", alarm, peer
            )

    def peer_state_hash(self, core_id: int, index: int, value: int) -> None:
        """A peer's newest hash of its state, from its traffic."""
        if core_id not in self.addresses:
            return
        peer = from_core(core_id)
        alarm = self.hashes.report(peer, index, value)
        if alarm is not None:
            log.error(
                "%s: this node or node %d is corrupt; replace the one whose state is wrong", alarm, peer
            )

    def adopt_cluster_id(self, cluster_id: str) -> None:
        """Take the cluster's id, from the log or from a snapshot's sender; the first one is kept for good."""
        if self.identity.id or not cluster_id:
            return
        try:
            self.storage.record_cluster_id(cluster_id)
        except StorageError as e:
            raise FatalError(str(e)) from e
        self.identity.id = cluster_id
        log.info("Cluster id %s", cluster_id)

    # -- suspension ---------------------------------------------------------------------------------
    async def _suspend(self, seconds: float) -> None:
        """Leave the cluster: no ticks, no traffic, no clients; then come back from disk only."""
        self.suspend_request = None
        self.suspended = True
        for observer in self.observers:
            observer.suspending(seconds)
        self.pending.fail_all("the node is suspended")
        self.inbox.clear()
        self.unreachable.clear()
        for client in self.peers.values():
            client.clear()
        for observer in self.observers:
            observer.changed()
        deadline = asyncio.get_running_loop().time() + seconds
        while not self.stopping:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), remaining)
            except TimeoutError:
                break
        self.inbox.clear()
        if self.stopping:
            return
        # Restoring a large image takes seconds: off the loop, which keeps answering (UNAVAILABLE) meanwhile.
        loaded = await self.on_disk(self._load)
        if self.stopping:
            return
        self._boot(*loaded)
        self.suspended = False
        self.wake.set()  # apply the stored log at once, not at the first tick or message
        for observer in self.observers:
            observer.started(self.raw.term)
        for observer in self.observers:
            observer.changed()

    # -- the API used by the gRPC services ----------------------------------------------------------
    # They see config ids only (the core's +1 mapping stays here) and never reach into the core.
    def status(self) -> NodeStatus:
        st = self.raw.status()
        return NodeStatus(
            id=self.me.id,
            address=self.me.address,
            role="suspended" if self.suspended else st.role.value,
            term=st.term,
            leader_id=from_core(st.lead) if st.lead != NONE and not self.suspended else -1,
            commit_index=st.commit,
            applied_index=self.kv.applied,
            last_log_index=st.last_index,
            suspended=self.suspended,
            peers=tuple((m.id, m.address, m.match_index) for m in self.members()),
            cluster=self.identity.name,
            cluster_id=self.identity.id,
            alarms=tuple(self.hashes.alarms.values()),
        )

    @property
    def term(self) -> int:
        return self.raw.term

    def member(self, node_id: int) -> NodeAddr | None:
        """Where member node_id listens; None when the cluster has no such member."""
        return self.addresses.get(to_core(node_id)) if self.is_member(to_core(node_id)) else None

    def channel_to(self, node_id: int) -> grpc.aio.Channel:
        """The long-lived channel to another node, which client calls forwarded to it share."""
        peer = self.peers[to_core(node_id)]
        if not isinstance(peer, PeerClient):
            raise LookupError(f"no gRPC channel to node {node_id}: the node runs on another transport")
        return peer.channel

    def leader(self) -> NodeAddr | None:
        if self.suspended or self.stopping:
            return None
        lead = self.raw.lead
        # A leader whose address this node has not learnt yet (its record arrives with the log) is no
        # help to a client: as good as none known.
        return self.addresses.get(lead) if lead != NONE else None

    def is_leader(self) -> bool:
        return not self.suspended and self.raw.role is Role.LEADER

    def _check_serving(self) -> None:
        if self.suspended or self.suspend_request is not None:
            raise Unavailable("the node is suspended")
        if self.stopping:
            raise Unavailable("the node is shutting down")

    def propose_nowait(self, cmd: Command) -> asyncio.Future[Result]:
        """Replicate a write, as a future: a stream serving many writes attaches callbacks to it.

        NotLeader and Unavailable are raised at once; the future resolves once committed and applied here,
        or fails with OutcomeUnknown once this node can no longer tell.
        """
        self._check_serving()
        if not self.is_leader():
            raise NotLeader(self.leader())
        if cmd.first is not None and not self._peers_speak(2):
            cmd = dataclasses.replace(cmd, first=None)
        if cmd.op is Op.MVCC and not self._peers_speak(5):
            raise NotCapable(
                "a member runs an earlier release of raftd; upgrade it to write to this keyspace"
            )
        fut, first = self.pending.add_write(cmd.encode(), asyncio.get_running_loop().time())
        self._wake_for(first, self.pending.proposals_since)
        return fut

    async def read_barrier(self) -> int:
        """Wait until this node's state reflects every write committed before the call (ReadIndex)."""
        return await self.read_barrier_nowait()

    def read_barrier_nowait(self) -> asyncio.Future[int]:
        """read_barrier() as a future, which any number of reads that arrived before it may share."""
        self._check_serving()
        if self.leader() is None:
            raise LeaderChanging("no leader known")
        fut, first = self.pending.add_read(asyncio.get_running_loop().time())
        self._wake_for(first, self.pending.reads_since)
        return fut

    async def wait_for_leader(self, limit: float) -> bool:
        """Whether a leader is known, waiting up to leader_wait_s (or limit, if shorter) for an election."""
        self._check_serving()
        if self.leader() is not None:
            return True
        fut = self.pending.add_leader_waiter()
        try:
            async with asyncio.timeout(min(limit, self.leader_wait_s)):
                await fut
        except TimeoutError:
            return False
        finally:
            fut.cancel()
        return self.leader() is not None

    def keyspace_moved(self) -> asyncio.Future[None]:
        """Resolves at the keyspace's next change (a write applied, a snapshot installed): watchers wait
        on it rather than poll. One future, shared by every waiter until it resolves (so do not cancel
        it): a waiter that gives up holds nothing, however often it asks."""
        if self._keyspace_moved is None:
            self._keyspace_moved = asyncio.get_running_loop().create_future()
        return self._keyspace_moved

    def _keyspace_changed(self) -> None:
        moved, self._keyspace_moved = self._keyspace_moved, None
        if moved is not None and not moved.done():
            moved.set_result(None)

    def keyspace(self) -> Keyspace:
        """The etcd API's keyspace, for a read served here now (after a barrier, for a linearizable one)."""
        self._check_serving()
        if self.kv.applied < self._replay_to:
            raise Unavailable("the node is applying its stored log after a restart; retry shortly")
        return self.kv.keyspace

    def local_read(self, key: bytes) -> tuple[bytes | None, int]:
        self._check_serving()
        if self.kv.applied < self._replay_to:
            raise Unavailable("the node is applying its stored log after a restart; retry shortly")
        return self.kv.get(key), self.kv.applied

    def suspend(self, seconds: float) -> None:
        self._check_serving()
        self.suspend_request = seconds
        self.wake.set()

    async def transfer_leader(self, target: int) -> int:
        """Ask the leader (this node) to hand over to target; returns the new leader's id."""
        self._check_serving()
        if not self.is_leader():
            raise NotLeader(self.leader())
        if not self.is_member(to_core(target)):
            raise ValueError(f"no node {target} in the cluster")
        if to_core(target) == self.id:
            return target
        fut = self.pending.add_leader_waiter()
        self.transfers.append(to_core(target))
        self.wake.set()
        peer = self.peers.get(to_core(target))
        try:
            # An unreachable target never takes over (a whole cluster stopping at once, say): say so as
            # soon as the transport knows, not at the caller's deadline.
            while not fut.done():
                await asyncio.wait({fut}, timeout=self.tuning.transfer_check_s)
                if not fut.done() and peer is not None and not peer.reachable:
                    # The core then takes writes again at once, not after an election timeout.
                    self.aborted_transfers.append(to_core(target))
                    self.wake.set()
                    raise TargetUnreachable(target)
            return fut.result()
        finally:
            fut.cancel()

    async def backup(self) -> tuple[SnapshotMeta, bytes]:
        """An image of the state as of a linearizable read point: every write acknowledged before the call
        is in it. Encoded off the loop, like a snapshot."""
        await self.read_barrier()
        index = self.kv.applied
        term = self.raw.log_term(index)
        if term is None:
            raise Unavailable("the log moved on while the backup was taken; retry")
        # A backup seeds a new cluster (raftd --restore), whose membership is its own map's, as etcd's
        # snapshot restore takes --initial-cluster: the data goes, the membership record does not.
        image = dataclasses.replace(self.kv.image(), members={}, next_member_id=0)
        data = await asyncio.get_running_loop().run_in_executor(self.cpu, encode, image)
        return SnapshotMeta(index, term), data

    def best_transfer_target(self) -> int | None:
        """The most up-to-date voter, for handing over leadership on shutdown (a learner cannot lead)."""
        match = self.raw.status().match
        voters = self.raw.conf_state().voters
        candidates = [(m, p) for p, m in match.items() if p != self.id and p in voters]
        if not candidates:
            return None
        return from_core(max(candidates)[1])
