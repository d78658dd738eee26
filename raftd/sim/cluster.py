"""A seeded, deterministic cluster simulation: virtual time, a hostile network, crashes from disk.

One PRNG drives everything (delays, drops, duplicates, partitions, crashes, client traffic), so a seed
replays exactly. Time runs in units; every node ticks once per UNITS_PER_TICK units, and a message takes
one or more units, so deliveries land between ticks and reorder freely.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from dataclasses import dataclass, field

from raftd.core import (
    Config,
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


def _digest(prev: str, e: Entry) -> str:
    return hashlib.sha256(f"{prev}|{e.index}/{e.term}|".encode() + e.data).hexdigest()[:16]


@dataclass
class Disk:
    """What survives a crash: exactly what was persisted from Readies."""

    hard: HardState = HardState()
    snapshot: Snapshot = Snapshot(SnapshotMeta(), json.dumps({"kv": {}, "digest": ""}).encode())
    entries: list[Entry] = field(default_factory=list)

    def term_at(self, index: int) -> int:
        if index == self.snapshot.meta.index:
            return self.snapshot.meta.term
        return self.entries[index - self.snapshot.meta.index - 1].term


@dataclass
class PendingRead:
    key: str
    must_see: int  # highest index known committed anywhere when the read began


class SimNode:
    def __init__(self, node_id: int, params: Params, peers: tuple[int, ...], seed: int) -> None:
        self.id = node_id
        self.config = Config(
            node_id,
            peers,
            random.Random(seed * 1009 + node_id),
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
        self.raw: RawNode | None = None
        self.kv: dict[str, str] = {}
        self.digest = ""
        self.reads: dict[bytes, PendingRead] = {}
        self.confirmed: list[tuple[int, bytes]] = []  # (read index, context) waiting for apply
        self.seen_leading = -1
        self.start()

    def start(self) -> None:
        """Boot from disk only: everything volatile is rebuilt, nothing remembered."""
        d = self.disk
        self.raw = RawNode(
            self.config, d.hard, d.snapshot.meta, list(d.entries), applied=d.snapshot.meta.index
        )
        self._load_snapshot(d.snapshot)
        self.reads.clear()
        self.confirmed.clear()
        self.seen_leading = -1

    def _load_snapshot(self, snap: Snapshot) -> None:
        image = json.loads(snap.data)
        self.kv = dict(image["kv"])
        self.digest = image["digest"]

    @property
    def alive(self) -> bool:
        return self.raw is not None


class Simulation:
    def __init__(self, seed: int, nodes: int, ticks: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.params = Params.draw(self.rng, nodes, ticks)
        peers = tuple(range(1, nodes + 1))
        self.nodes = {i: SimNode(i, self.params, peers, seed) for i in peers}
        self.check = Checker()
        self.now = 0
        self.queue: list[tuple[int, float, int, Message]] = []
        self.seq = 0
        self.blocked: set[tuple[int, int]] = set()
        self.heal_at = -1
        self.restart_at: dict[int, int] = {}
        self.counter = 0
        self.stats = {"proposed": 0, "reads_ok": 0, "crashes": 0, "partitions": 0, "snapshots_sent": 0}

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
            dst = self.nodes[m.to]
            if dst.raw is None or (m.frm, m.to) in self.blocked:
                self._lost(m)
                continue
            dst.raw.step(m)
            sender = self.nodes[m.frm].raw
            if m.type is MsgType.SNAP and sender is not None:
                sender.report_snapshot(m.to, ok=True)

    # -- one node's Ready ---------------------------------------------------------------------------
    def _process_ready(self, n: SimNode) -> None:
        assert n.raw is not None
        raw = n.raw
        old_commit = n.disk.hard.commit
        rd = raw.ready()
        if rd.send_early:
            # A leader sends while it writes; a crash here loses the write after the messages left.
            for m in rd.messages:
                self._send(n, m)
            if self.rng.random() < self.params.crash_mid_ready:
                self._crash(n)
                return
        self._persist(n, rd)
        if rd.hard_state is not None and rd.hard_state.commit > old_commit:
            self.check.observe_commit(n.id, raw.raft, old_commit, rd.hard_state.commit)
        if self.rng.random() < self.params.crash_mid_ready:
            self._crash(n)  # durable, but (unless sent early) no message sent and nothing applied
            return
        if not rd.send_early:
            for m in rd.messages:
                self._send(n, m)
        self._apply(n, rd)
        raw.advance()
        self._maybe_compact(n)

    def _persist(self, n: SimNode, rd: Ready) -> None:
        d = n.disk
        if rd.snapshot is not None:
            d.snapshot = rd.snapshot
            d.entries = []
        if rd.entries:
            first = rd.entries[0].index
            prev_term = d.term_at(first - 1)
            del d.entries[first - d.snapshot.meta.index - 1 :]
            d.entries.extend(rd.entries)
            self.check.observe_durable_entries(n.id, prev_term, rd.entries)
        if rd.hard_state is not None:
            d.hard = rd.hard_state

    def _apply(self, n: SimNode, rd: Ready) -> None:
        if rd.snapshot is not None:
            n._load_snapshot(rd.snapshot)
            self.check.observe_snapshot_install(n.id, rd.snapshot.meta.index, n.digest)
        for e in rd.committed_entries:
            write = None
            if e.data:
                key, _, value = e.data.decode().partition("=")
                n.kv[key] = value
                write = (key, value)
            n.digest = _digest(n.digest, e)
            self.check.observe_apply(n.id, e, n.digest, write)
        waiting = {ctx for _, ctx in n.confirmed}
        for rs in rd.read_states:
            # A duplicated request can be confirmed twice; the first answer serves it.
            if rs.context in n.reads and rs.context not in waiting:
                waiting.add(rs.context)
                n.confirmed.append((rs.index, rs.context))
        assert n.raw is not None
        applied = rd.committed_entries[-1].index if rd.committed_entries else n.raw.raft.log.applied
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
        log = n.raw.raft.log
        if log.applied - log.snapshot_meta.index < self.params.compact_every:
            return
        meta = SnapshotMeta(log.applied, log.term(log.applied) or 0)
        d = n.disk
        del d.entries[: meta.index - d.snapshot.meta.index]
        d.snapshot = Snapshot(meta, json.dumps({"kv": n.kv, "digest": n.digest}).encode())
        n.raw.compact(meta.index)

    # -- faults and clients -------------------------------------------------------------------------
    def _crash(self, n: SimNode) -> None:
        n.raw = None
        self.stats["crashes"] += 1
        self.restart_at[n.id] = self.now + self.rng.randrange(1, 30 * UNITS_PER_TICK * ELECTION_TICK // 10)

    def _random_events(self) -> None:
        p, rng = self.params, self.rng
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
        for node_id, at in list(self.restart_at.items()):
            if at <= self.now:
                del self.restart_at[node_id]
                self.nodes[node_id].start()
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
            if n.raw is not None and n.raw.raft.role is Role.LEADER:
                term = n.raw.raft.term
                self.check.observe_leader(n.id, term)
                if n.seen_leading != term:
                    n.seen_leading = term
                    self.check.check_leader_completeness(n.raw.raft)

    def run(self) -> dict[str, int]:
        """Run the faulty phase, then heal everything and demand progress. Raises Violation on a bug."""
        for _ in range(self.params.ticks * UNITS_PER_TICK):
            self._unit(faults=True)
        self._heal_and_check_progress()
        return self.stats

    def _heal_and_check_progress(self) -> None:
        self.blocked.clear()
        for n in self.nodes.values():
            if n.raw is None:
                n.start()
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
            leaders = [n.raw.raft for n in live if n.raw is not None and n.raw.raft.role is Role.LEADER]
            still_leading = any((r.id, r.term) == proposer for r in leaders)
            if leaders and not still_leading:
                # First try, or the proposer lost leadership (its entry may be lost with it): ask the new one.
                try:
                    tried.append(leaders[0].propose([marker]))
                    proposer = (leaders[0].id, leaders[0].term)
                except ProposalDropped:
                    pass
            min_applied = min(n.raw.raft.log.applied for n in live if n.raw is not None)
            if any(i <= min_applied and self.check.applied.get(i, (0, b""))[1] == marker for i in tried):
                return
        raise Violation(
            f"liveness: no leader committed a new entry on every node within {bound // UNITS_PER_TICK} "
            "ticks after all faults healed"
        )
