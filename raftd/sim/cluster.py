"""A seeded, deterministic cluster simulation: virtual time, a hostile network, crashes from disk.

One PRNG drives everything (delays, drops, duplicates, partitions, crashes, client traffic), so a seed
replays exactly. Membership changes (MembershipNemesis) draw from a PRNG of their own: a leader adds a
learner under a fresh id, promotes a learner or removes a member, and a member whose removal committed is
shut down for good, as raftd stops one ("removed from the cluster"). Time runs in units; every node
ticks once per UNITS_PER_TICK units, and a message takes one or more units, so deliveries land between
ticks and reorder freely.

Some seeds also get a damaged disk on a minority of nodes (DiskFaults, from a PRNG of its own): bits that
flip at rest, a write torn by a crash, and fsyncs of the log database that lied (lost at the crash; the
term-and-vote record, fsynced on its own, keeps the truth). A node checks its disk at boot as raftd does
(a checksum per entry, the record against the database's term and vote) and stays down when it finds
damage: the run reports that as detected, and a safety violation would be a bug. A lost fsync that leaves
the term and vote as they were is invisible to those checks (docs/operations.md says so); it is injected
only with lost_tail=True (`python -m raftd.sim --lost-tail`), to show what it can cost.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import struct
import zlib
from dataclasses import dataclass, field, replace

from raftd.core import (
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
    Snapshot,
    SnapshotMeta,
    handle_ready,
    quorum,
    run_now,
)

from .checker import Checker, Violation

UNITS_PER_TICK = 4
ELECTION_TICK = 10
KEYS = ("a", "b", "c", "d")


@dataclass(frozen=True)
class Params:
    """The fault mix of one run, drawn from its seed so each seed explores a different weather."""

    nodes: int
    ticks: int
    pre_vote: bool
    check_quorum: bool
    drop: float
    duplicate: float
    long_delay: float
    crash: float
    partition: float
    crash_mid_ready: float
    ready_delay: float
    propose: float
    read: float
    transfer: float
    compact_every: int

    @classmethod
    def draw(cls, rng: random.Random, nodes: int, ticks: int) -> Params:
        return cls(
            nodes=nodes,
            ticks=ticks,
            pre_vote=rng.random() < 0.8,
            check_quorum=rng.random() < 0.8,
            drop=rng.choice([0.0, 0.02, 0.1, 0.25]),
            duplicate=rng.choice([0.0, 0.02, 0.1]),
            long_delay=rng.choice([0.0, 0.02, 0.1]),
            crash=rng.choice([0.0, 0.0005, 0.002]),
            partition=rng.choice([0.0, 0.001, 0.004]),
            crash_mid_ready=rng.choice([0.0, 0.01]),
            ready_delay=rng.choice([0.0, 0.3]),
            propose=rng.choice([0.05, 0.2]),
            read=rng.choice([0.02, 0.1]),
            transfer=rng.choice([0.0, 0.001]),
            compact_every=rng.choice([8, 30, 1000]),
        )


CONF_PREFIX = b"conf:"


def encode_conf_change(cc: ConfChange) -> bytes:
    """The simulator's (and the golden scripts') entry encoding of a membership change."""
    return CONF_PREFIX + f"{cc.type.value}:{cc.node}".encode()


def decode_conf_change(data: bytes) -> ConfChange | None:
    if not data.startswith(CONF_PREFIX):
        return None
    kind, node = data[len(CONF_PREFIX) :].decode().split(":")
    return ConfChange(ConfChangeType(kind), int(node))


def _digest(prev: str, e: Entry) -> str:
    return hashlib.sha256(f"{prev}|{e.index}/{e.term}|".encode() + e.data).hexdigest()[:16]


def _crc(e: Entry) -> int:
    """As raftd.storage.checksum.entry_crc: over the entry's index, term and data."""
    return zlib.crc32(e.data, zlib.crc32(struct.pack(">QQ", e.index, e.term)))


@dataclass(frozen=True)
class DiskFaults:
    """How a damaged disk misbehaves; drawn per seed, for the nodes of a minority only."""

    lie: float  # a save's fsync of the log database is lost, until a later honest one
    flip: float  # per unit, a bit flips in a stored entry of one such node
    tear: float  # at a crash, the last entry written is torn
    lost_tail: bool  # lies that leave the term and vote as they were (invisible at boot) are allowed

    @classmethod
    def draw(cls, rng: random.Random, lost_tail: bool) -> DiskFaults | None:
        if not lost_tail and rng.random() >= 0.3:
            return None
        return cls(
            lie=rng.choice([0.05, 0.2]), flip=rng.choice([0.0005, 0.002]), tear=rng.choice([0.2, 0.5]),
            lost_tail=lost_tail,
        )  # fmt: skip


@dataclass
class Disk:
    """What survives a crash: exactly what was persisted from Readies, unless the disk is damaged."""

    hard: HardState = HardState()
    snapshot: Snapshot = Snapshot(SnapshotMeta(), json.dumps({"kv": {}, "digest": ""}).encode())
    entries: list[Entry] = field(default_factory=list)
    crcs: list[int] = field(default_factory=list)  # one per entry, written with it
    vote: tuple[int, int] = (0, 0)  # raftd's raft.vote: fsynced on its own whenever a save changes them
    # The database as of its last honest fsync, while later saves sit only in the page cache.
    synced: tuple[HardState, Snapshot, list[Entry], list[int]] | None = None

    def term_at(self, index: int) -> int:
        if index == self.snapshot.meta.index:
            return self.snapshot.meta.term
        return self.entries[index - self.snapshot.meta.index - 1].term

    def checkpoint(self) -> tuple[HardState, Snapshot, list[Entry], list[int]]:
        return (self.hard, self.snapshot, list(self.entries), list(self.crcs))

    def damage(self) -> str | None:
        """What raftd's checks at start find wrong (checksums, the vote record; raftd.storage), if any."""
        for e, crc in zip(self.entries, self.crcs, strict=True):
            if _crc(e) != crc:
                return f"log entry {e.index} is damaged"
        term, vote = self.vote
        if self.hard.term < term or (self.hard.term == term and self.hard.vote != vote):
            return f"went back in time: term {self.hard.term} vote {self.hard.vote}, recorded {term} {vote}"
        return None


@dataclass
class PendingRead:
    key: str
    must_see: int  # highest index known committed anywhere when the read began


class SimNode:
    def __init__(self, node_id: int, params: Params, conf: ConfState, seed: int) -> None:
        """conf: the membership it starts with (the cluster's first, or the one it was added under)."""
        self.id = node_id
        self.config = Config(
            node_id,
            conf.voters,
            random.Random(seed * 1009 + node_id),
            learners=conf.learners,
            conf_change_of=decode_conf_change,
            election_tick=ELECTION_TICK,
            heartbeat_tick=1,
            pre_vote=params.pre_vote,
            check_quorum=params.check_quorum,
            max_inflight=4,
            max_inflight_bytes=96,
            max_entries_per_msg=3,
            max_bytes_per_msg=64,
        )
        self.disk = Disk()
        self.damaged = ""  # what the boot check found: the node stays down
        self.raw: RawNode | None = None
        self.kv: dict[str, str] = {}
        self.digest = ""
        self.reads: dict[bytes, PendingRead] = {}
        self.confirmed: list[tuple[int, bytes]] = []  # (read index, context) waiting for apply
        self.seen_leading = -1
        self.removed = False  # its removal committed: shut down for good
        self.start()

    def start(self) -> bool:
        """Boot from disk only: everything volatile is rebuilt, nothing remembered. False: the disk is
        damaged, and the node stays down as raftd would (it stops with the one-line error)."""
        d = self.disk
        self.damaged = self.damaged or d.damage() or ""
        if self.damaged:
            return False
        self.raw = RawNode(
            self.config, d.hard, d.snapshot.meta, list(d.entries), applied=d.snapshot.meta.index
        )
        self._load_snapshot(d.snapshot)
        self.reads.clear()
        self.confirmed.clear()
        self.seen_leading = -1
        return True

    def _load_snapshot(self, snap: Snapshot) -> None:
        image = json.loads(snap.data)
        self.kv = dict(image["kv"])
        self.digest = image["digest"]

    @property
    def alive(self) -> bool:
        return self.raw is not None


class _Crashed(Exception):
    """A node crashed in the middle of a Ready: the steps after the crash never run."""


class _SimIO:
    """One node's steps of a Ready (raftd.core.handle_ready): the simulated disk and network, and a crash,
    now and then, right after the save (durable, but nothing sent or applied unless sent early) or right
    after a leader's early send (the messages left, its own write is lost)."""

    def __init__(self, sim: Simulation, n: SimNode, old_commit: int) -> None:
        self.sim = sim
        self.n = n
        self.old_commit = old_commit

    async def persist(self, rd: Ready) -> None:
        sim, n = self.sim, self.n
        assert n.raw is not None
        sim._persist(n, rd)
        if rd.hard_state is not None and rd.hard_state.commit > self.old_commit:
            sim.check.observe_commit(n.id, n.raw, self.old_commit, rd.hard_state.commit)
        self._maybe_crash()

    async def send(self, rd: Ready) -> None:
        for m in rd.messages:
            self.sim._send(self.n, m)
        if rd.send_early:
            self._maybe_crash()

    async def install(self, rd: Ready) -> None:
        assert rd.snapshot is not None
        self.n._load_snapshot(rd.snapshot)
        self.sim.check.observe_snapshot_install(self.n.id, rd.snapshot.meta.index, self.n.digest)

    def apply(self, rd: Ready) -> None:
        self.sim._apply(self.n, rd)

    def reads(self, rd: Ready) -> None:
        self.sim._note_reads(self.n, rd)

    def advance(self, rd: Ready) -> None:
        self.sim._release_reads(self.n, rd)
        assert self.n.raw is not None
        self.n.raw.advance()

    def _maybe_crash(self) -> None:
        if self.sim.rng.random() < self.sim.params.crash_mid_ready:
            self.sim._crash(self.n)
            raise _Crashed


class Simulation:
    def __init__(self, seed: int, nodes: int, ticks: int, lost_tail: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.params = Params.draw(self.rng, nodes, ticks)
        # Disk faults have a PRNG of their own: seeds without them run exactly as they did before them.
        self.disk_rng = random.Random(seed * 7919 + 1)
        self.disk_faults = DiskFaults.draw(self.disk_rng, lost_tail)
        peers = tuple(range(1, nodes + 1))
        self.nodes = {i: SimNode(i, self.params, ConfState(peers), seed) for i in peers}
        self.faulty = set(peers[: (nodes - 1) // 2]) if self.disk_faults else set()
        # Membership changes have a PRNG of their own, as disk faults do.
        self.members = MembershipNemesis(random.Random(seed * 104729 + 3), nodes, self.faulty)
        self.check = Checker()
        self.now = 0
        self.queue: list[tuple[int, float, int, Message]] = []
        self.seq = 0
        self.blocked: set[tuple[int, int]] = set()
        self.heal_at = -1
        self.restart_at: dict[int, int] = {}
        self.counter = 0
        self.stats = {
            "proposed": 0, "reads_ok": 0, "crashes": 0, "partitions": 0, "snapshots_sent": 0,
            "disk_lies": 0, "bit_flips": 0, "torn_writes": 0, "damage_detected": 0,
            "conf_changes": 0, "conf_refused": 0, "removed": 0,
        }  # fmt: skip

    # -- the network --------------------------------------------------------------------------------
    def _send(self, src: SimNode, m: Message) -> None:
        p, rng = self.params, self.rng
        if m.type is MsgType.SNAP:
            held = src.disk.snapshot
            assert held is not None and m.snapshot is not None and held.meta == m.snapshot.meta, (
                "leader sent a snapshot it does not hold"
            )
            m = Message(m.type, m.to, m.frm, m.term, snapshot=src.disk.snapshot)
            self.stats["snapshots_sent"] += 1
        if rng.random() < p.drop:
            self._lost(m)
            return
        copies = 2 if rng.random() < p.duplicate else 1
        for _ in range(copies):
            delay = 1 + rng.randrange(UNITS_PER_TICK)
            if rng.random() < p.long_delay:
                delay += rng.randrange(ELECTION_TICK * UNITS_PER_TICK)
            self.seq += 1
            heapq.heappush(self.queue, (self.now + delay, rng.random(), self.seq, m))

    def _lost(self, m: Message) -> None:
        """Tell the sender what its transport would notice: a failed stream or snapshot."""
        src = self.nodes[m.frm]
        if src.raw is None:
            return
        if m.type is MsgType.SNAP:
            src.raw.report_snapshot(m.to, ok=False)
        elif m.type is MsgType.APP:
            src.raw.report_unreachable(m.to)

    def _deliver_due(self) -> None:
        while self.queue and self.queue[0][0] <= self.now:
            *_, m = heapq.heappop(self.queue)
            dst = self.nodes.get(m.to)  # None: a member added by a change that was undone
            if dst is None or dst.raw is None or (m.frm, m.to) in self.blocked:
                self._lost(m)
                continue
            dst.raw.step(m)
            sender = self.nodes[m.frm].raw
            if m.type is MsgType.SNAP and sender is not None:
                sender.report_snapshot(m.to, ok=True)

    # -- one node's Ready ---------------------------------------------------------------------------
    def _process_ready(self, n: SimNode) -> None:
        assert n.raw is not None
        io = _SimIO(self, n, n.disk.hard.commit)
        try:
            run_now(handle_ready(n.raw.ready(), io))  # the Ready contract, as the daemon follows it
        except _Crashed:
            return
        self._maybe_compact(n)

    def _persist(self, n: SimNode, rd: Ready) -> None:
        d = n.disk
        before = d.checkpoint()
        if rd.snapshot is not None:
            d.snapshot = rd.snapshot
            d.entries, d.crcs = [], []
        if rd.entries:
            first = rd.entries[0].index
            prev_term = d.term_at(first - 1)
            del d.entries[first - d.snapshot.meta.index - 1 :]
            del d.crcs[first - d.snapshot.meta.index - 1 :]
            d.entries.extend(rd.entries)
            d.crcs.extend(_crc(e) for e in rd.entries)
            self.check.observe_durable_entries(n.id, prev_term, rd.entries)
        if rd.hard_state is not None:
            d.hard = rd.hard_state
        self._fsync(n, before)

    def _fsync(self, n: SimNode, before: tuple[HardState, Snapshot, list[Entry], list[int]]) -> None:
        """The save's fsync, honest or (on a faulty disk) lost; then raft.vote, which is always honest."""
        d, faults = n.disk, self.disk_faults
        changes_vote = (d.hard.term, d.hard.vote) != d.vote
        lies = faults is not None and n.id in self.faulty and self.disk_rng.random() < faults.lie
        if lies and (changes_vote or (faults is not None and faults.lost_tail) or d.synced is not None):
            if d.synced is None:
                d.synced = before
            self.stats["disk_lies"] += 1
        else:
            d.synced = None  # an honest fsync makes every earlier save durable too
        if changes_vote:
            d.vote = (d.hard.term, d.hard.vote)

    def _apply(self, n: SimNode, rd: Ready) -> None:
        for e in rd.committed_entries:
            write = None
            if e.data and not e.data.startswith(CONF_PREFIX):
                key, _, value = e.data.decode().partition("=")
                n.kv[key] = value
                write = (key, value)
            n.digest = _digest(n.digest, e)
            self.check.observe_apply(n.id, e, n.digest, write)

    def _note_reads(self, n: SimNode, rd: Ready) -> None:
        waiting = {ctx for _, ctx in n.confirmed}
        for rs in rd.read_states:
            # A duplicated request can be confirmed twice; the first answer serves it.
            if rs.context in n.reads and rs.context not in waiting:
                waiting.add(rs.context)
                n.confirmed.append((rs.index, rs.context))

    def _release_reads(self, n: SimNode, rd: Ready) -> None:
        """Serve the confirmed reads whose index this node has applied."""
        assert n.raw is not None
        applied = rd.committed_entries[-1].index if rd.committed_entries else n.raw.applied
        if rd.snapshot is not None:
            applied = max(applied, rd.snapshot.meta.index)
        still = []
        for index, ctx in n.confirmed:
            if index <= applied:
                read = n.reads.pop(ctx)
                self.check.check_read(n.id, read.key, read.must_see, index, applied, n.kv.get(read.key))
                self.stats["reads_ok"] += 1
            else:
                still.append((index, ctx))
        n.confirmed = still

    def _maybe_compact(self, n: SimNode) -> None:
        assert n.raw is not None
        raw = n.raw
        if raw.applied - raw.snapshot_index < self.params.compact_every:
            return
        d = n.disk
        old = d.snapshot.meta.index
        raw.compact(raw.applied)
        meta = raw.snapshot_meta()  # with the membership as of its index
        del d.entries[: meta.index - old]
        del d.crcs[: meta.index - old]
        d.snapshot = Snapshot(meta, json.dumps({"kv": n.kv, "digest": n.digest}).encode())
        d.synced = None  # raftd fsyncs an image and the database that adopts it

    # -- faults and clients -------------------------------------------------------------------------
    def _crash(self, n: SimNode) -> None:
        n.raw = None
        self.stats["crashes"] += 1
        d, faults = n.disk, self.disk_faults
        if d.synced is not None:  # what the lying fsyncs had not written is gone; raft.vote stays
            d.hard, d.snapshot, d.entries, d.crcs = d.synced
            d.synced = None
        if faults is not None and n.id in self.faulty and d.entries and self.disk_rng.random() < faults.tear:
            last = d.entries[-1]
            d.entries[-1] = replace(last, data=last.data[: len(last.data) // 2] + b"\x00")
            self.stats["torn_writes"] += 1
        self.restart_at[n.id] = self.now + self.rng.randrange(1, 30 * UNITS_PER_TICK * ELECTION_TICK // 10)

    def _random_events(self) -> None:
        p, rng = self.params, self.rng
        self._membership()
        live = [n for n in self.nodes.values() if n.alive]
        if live and rng.random() < p.propose:
            n = rng.choice(live)
            if n.raw is not None and n.raw.soft_state.role is Role.LEADER:
                self.counter += 1
                try:
                    n.raw.propose(f"{rng.choice(KEYS)}={self.counter}".encode())
                    self.stats["proposed"] += 1
                except ProposalDropped:
                    pass
        if live and rng.random() < p.read:
            n = rng.choice(live)
            self.counter += 1
            ctx = f"{n.id}:{self.counter}".encode()
            try:
                assert n.raw is not None
                n.raw.read_index(ctx)
                n.reads[ctx] = PendingRead(rng.choice(KEYS), self.check.max_committed)
            except ProposalDropped:
                pass
        if live and rng.random() < p.crash:
            self._crash(rng.choice(live))
        self._flip_a_bit()
        for node_id, at in list(self.restart_at.items()):
            if at <= self.now:
                del self.restart_at[node_id]
                if not self.nodes[node_id].removed:
                    self._boot(self.nodes[node_id])
        if self.heal_at >= 0 and self.now >= self.heal_at:
            self.blocked.clear()
            self.heal_at = -1
        elif self.heal_at < 0 and len(self.nodes) > 1 and rng.random() < p.partition:
            self._partition()
        if len(self.nodes) > 1 and rng.random() < p.transfer:
            leaders = [n for n in live if n.raw is not None and n.raw.soft_state.role is Role.LEADER]
            if leaders:
                leader = leaders[0]
                assert leader.raw is not None
                leader.raw.transfer_leader(rng.choice([i for i in self.nodes if i != leader.id]))

    def _membership(self) -> None:
        """Now and then the leader proposes a change; a node it adds starts empty with the leader's
        membership (as `raftd --join` would); a member whose removal committed is shut down for good."""
        leaders = [n.raw for n in self.nodes.values() if n.raw is not None and n.raw.role is Role.LEADER]
        if not leaders:
            return
        leader = max(leaders, key=lambda r: r.term)
        conf = leader.conf_state()
        for n in self.nodes.values():
            if n.id not in conf.voters + conf.learners and not n.removed and self.members.gone(n.id, leader):
                n.removed = True
                n.raw = None
                self.restart_at.pop(n.id, None)
                self.stats["removed"] += 1
        cc = self.members.next_change(conf)
        if cc is None:
            return
        try:
            index = leader.propose_conf_change(cc, encode_conf_change(cc))
        except (ConfChangeRefused, ProposalDropped):
            self.stats["conf_refused"] += 1
            return
        self.stats["conf_changes"] += 1
        self.members.proposed(cc, index)
        if cc.type is ConfChangeType.ADD_LEARNER:
            self.nodes[cc.node] = SimNode(cc.node, self.params, leader.conf_state(), self.seed)

    def _flip_a_bit(self) -> None:
        """Damage at rest: seen when the node next boots (a running node serves from memory)."""
        faults = self.disk_faults
        if faults is None or self.disk_rng.random() >= faults.flip:
            return
        d = self.nodes[self.disk_rng.choice(sorted(self.faulty))].disk
        if not d.entries:
            return
        k = self.disk_rng.randrange(len(d.entries))
        data = bytearray(d.entries[k].data or b"\x00")
        data[self.disk_rng.randrange(len(data))] ^= 1 << self.disk_rng.randrange(8)
        d.entries[k] = replace(d.entries[k], data=bytes(data))
        self.stats["bit_flips"] += 1

    def _boot(self, n: SimNode) -> None:
        if not n.start():
            self.stats["damage_detected"] += 1

    def _partition(self) -> None:
        rng, ids = self.rng, list(self.nodes)
        kind = rng.choice(["isolate", "split", "one-way"])
        if kind == "isolate":
            victim = rng.choice(ids)
            self.blocked = {(a, b) for a in ids for b in ids if (a == victim) != (b == victim)}
        elif kind == "split":
            rng.shuffle(ids)
            cut = rng.randrange(1, len(ids))
            side = set(ids[:cut])
            self.blocked = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
        else:
            a, b = rng.sample(ids, 2)
            self.blocked = {(a, b)}
        self.stats["partitions"] += 1
        self.heal_at = self.now + rng.randrange(5, 60) * UNITS_PER_TICK

    # -- the main loop ------------------------------------------------------------------------------
    def _unit(self, faults: bool) -> None:
        self.now += 1
        if self.now % UNITS_PER_TICK == 0:
            for n in self.nodes.values():
                if n.raw is not None:
                    n.raw.tick()
        self._deliver_due()
        if faults:
            self._random_events()
        for n in self.nodes.values():
            if n.raw is not None and n.raw.has_ready():
                if faults and self.rng.random() < self.params.ready_delay:
                    continue  # a slow disk: this Ready waits, unpersisted, at risk of a crash
                self._process_ready(n)
        self._check_leaders()

    def _check_leaders(self) -> None:
        for n in self.nodes.values():
            if n.raw is not None and n.raw.role is Role.LEADER:
                term = n.raw.term
                self.check.observe_leader(n.id, term)
                if n.seen_leading != term:
                    n.seen_leading = term
                    self.check.check_leader_completeness(n.raw)

    def run(self) -> dict[str, int]:
        """Run the faulty phase, then heal everything and demand progress. Raises Violation on a bug."""
        for _ in range(self.params.ticks * UNITS_PER_TICK):
            self._unit(faults=True)
        self._heal_and_check_progress()
        return self.stats

    def _heal_and_check_progress(self) -> None:
        self.blocked.clear()
        for n in self.nodes.values():
            if n.raw is None and not n.damaged and not n.removed:
                self._boot(n)
        self.restart_at.clear()
        self.params = Params(
            **{
                **self.params.__dict__,
                "drop": 0.0,
                "duplicate": 0.0,
                "long_delay": 0.0,
                "crash_mid_ready": 0.0,
            }
        )
        bound = 40 * ELECTION_TICK * UNITS_PER_TICK
        marker = f"probe={self.seed}".encode()
        proposer: tuple[int, int] | None = None  # (node, term) that last proposed the probe
        tried: list[int] = []
        for _ in range(bound):
            self._unit(faults=False)
            live = [n for n in self.nodes.values() if n.raw is not None]
            leaders = [n.raw for n in live if n.raw is not None and n.raw.role is Role.LEADER]
            still_leading = any((r.id, r.term) == proposer for r in leaders)
            if leaders and not still_leading:
                # First try, or the proposer lost leadership (its entry may be lost with it): ask the new one.
                try:
                    tried.append(leaders[0].propose(marker))
                    proposer = (leaders[0].id, leaders[0].term)
                except ProposalDropped:
                    pass
            # Every member of the newest leader's membership; a node removed, or added by a change that was
            # undone, is left behind, as it should be.
            newest = max(leaders, key=lambda r: r.term) if leaders else None
            conf = newest.conf_state() if newest is not None else None
            members = [n for n in live if conf is None or n.id in conf.voters + conf.learners]
            min_applied = min(n.raw.applied for n in members if n.raw is not None)
            if any(i <= min_applied and self.check.applied.get(i, (0, b""))[1] == marker for i in tried):
                return
        raise Violation(
            f"liveness: no leader committed a new entry on every node within {bound // UNITS_PER_TICK} "
            "ticks after all faults healed"
        )


class MembershipNemesis:
    """Which change a leader tries next: add a learner under an id never used, promote a learner, or remove
    a member, each now and then at a rate drawn per seed (none for a third of the seeds)."""

    def __init__(self, rng: random.Random, nodes: int, faulty: set[int]) -> None:
        """faulty: the nodes whose damaged disks may keep them down for good; the voters left healthy must
        stay a quorum, or no run could make progress once healed."""
        self.rng = rng
        self.faulty = faulty
        self.rate = rng.choice([0.0, 0.002, 0.01])
        self.next_id = nodes + 1
        self.max_ids = nodes + 3  # a run adds at most three nodes
        self.removals: dict[int, int] = {}  # node -> index of its newest proposed removal

    def next_change(self, conf: ConfState) -> ConfChange | None:
        rng = self.rng
        if self.rate == 0.0 or rng.random() >= self.rate:
            return None
        kind = rng.choice(list(ConfChangeType))
        if kind is ConfChangeType.ADD_LEARNER:
            if self.next_id > self.max_ids:
                return None
            return ConfChange(kind, self.next_id)
        if kind is ConfChangeType.ADD_VOTER:
            return ConfChange(kind, rng.choice(conf.learners)) if conf.learners else None
        # Never below three voters, and never so that the damaged ones could be half of them: a run must
        # stay able to lose a node and go on.
        voters = [
            v
            for v in conf.voters
            if len(conf.voters) > 3
            and len([w for w in conf.voters if w != v and w not in self.faulty])
            >= quorum.majority(len(conf.voters) - 1)
        ]
        candidates = list(conf.learners) + voters
        return ConfChange(kind, rng.choice(candidates)) if candidates else None

    def proposed(self, cc: ConfChange, index: int) -> None:
        if cc.type is ConfChangeType.ADD_LEARNER:
            self.next_id += 1
        elif cc.type is ConfChangeType.REMOVE:
            self.removals[cc.node] = index

    def gone(self, node: int, leader: RawNode) -> bool:
        """Whether node's removal is committed, as far as this leader knows (it does not name node)."""
        index = self.removals.get(node)
        return index is not None and leader.committed >= index
