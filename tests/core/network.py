"""A deterministic in-memory network of RawNodes for the core's unit tests.

Why: the paper and feature tests need several nodes that elect, replicate and read without sockets, clocks
or threads, and they need to cut links, drop chosen messages, crash nodes and restart them from what they
persisted. Delivery is FIFO and every node's RNG is seeded, so a failing test replays exactly.

The network also acts as a strict owner of each node: it persists every Ready before "sending" its
messages and checks the Ready contract on the way (a granted vote or an acknowledgement never leaves a node
before the state it depends on is durable; committed entries are durable and applied in order).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from raftd.core import (
    Config,
    Entry,
    HardState,
    Message,
    MsgType,
    RawNode,
    ReadState,
    Ready,
    Role,
)

MessageFilter = Callable[[Message], bool]


@dataclass
class Storage:
    """What one node has made durable: the only thing a restart may use."""

    hard_state: HardState = HardState()
    entries: list[Entry] = field(default_factory=list)
    applied: int = 0

    def persist(self, rd: Ready) -> None:
        """Write a Ready's hard state and entries, as one durable transaction would."""
        if rd.snapshot is not None:
            raise AssertionError("these tests never compact, so no snapshot should be handed out")
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        if rd.entries:
            first = rd.entries[0].index
            if first > len(self.entries) + 1:
                raise AssertionError(f"Ready entries start at {first}, a gap after {len(self.entries)}")
            del self.entries[first - 1 :]
            self.entries.extend(rd.entries)

    def term_at(self, index: int) -> int | None:
        if index == 0:
            return 0
        if index > len(self.entries):
            return None
        return self.entries[index - 1].term


def log_of(terms: Iterable[int], start: int = 1) -> list[Entry]:
    """Entries start, start+1, ... with the given terms; handy to describe a persisted log compactly."""
    return [Entry(start + k, t, f"e{start + k}t{t}".encode()) for k, t in enumerate(terms)]


class Network:
    """Nodes 1..n wired together through one FIFO queue, with crash, restart, isolation and filters."""

    def __init__(
        self,
        ids: Iterable[int] = (1, 2, 3),
        *,
        seed: int = 0,
        storages: dict[int, Storage] | None = None,
        **config: object,
    ) -> None:
        self.ids = tuple(ids)
        self.seed = seed
        self.config_overrides = config
        self.storage: dict[int, Storage] = {i: Storage() for i in self.ids}
        if storages:
            self.storage.update(storages)
        self.nodes: dict[int, RawNode] = {}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}
        self.read_states: dict[int, list[ReadState]] = {i: [] for i in self.ids}
        self.queue: deque[Message] = deque()
        self.sent: list[Message] = []  # every message a node handed out, in order
        self.delivered: list[Message] = []  # every message that reached its target, in order
        self.down: set[int] = set()
        self.isolated: set[int] = set()
        self.cut: set[frozenset[int]] = set()
        self.drop: MessageFilter | None = None
        self._boots = 0
        for i in self.ids:
            self._boot(i)

    # -- lifecycle ----------------------------------------------------------------------------------
    def config(self, node_id: int) -> Config:
        """One node's config; a fresh seeded RNG per boot keeps runs reproducible."""
        self._boots += 1
        rng = random.Random(self.seed * 1_000_003 + node_id * 1009 + self._boots)
        return Config(id=node_id, peers=self.ids, rng=rng, **self.config_overrides)  # type: ignore[arg-type]

    def _boot(self, node_id: int) -> None:
        st = self.storage[node_id]
        self.nodes[node_id] = RawNode(
            self.config(node_id), st.hard_state, entries=list(st.entries), applied=st.applied
        )

    def crash(self, node_id: int) -> None:
        """Stop a node: it loses everything not persisted, and messages to it vanish."""
        self.down.add(node_id)
        self.queue = deque(m for m in self.queue if m.to != node_id)

    def restart(self, node_id: int) -> None:
        """Bring a crashed node back from its Storage only."""
        self.down.discard(node_id)
        self._boot(node_id)

    def isolate(self, node_id: int) -> None:
        self.isolated.add(node_id)

    def partition(self, a: int, b: int) -> None:
        self.cut.add(frozenset((a, b)))

    def heal(self) -> None:
        self.isolated.clear()
        self.cut.clear()
        self.drop = None

    # -- the owner's loop ---------------------------------------------------------------------------
    def process(self, node_id: int) -> None:
        """Carry out every pending Ready of one node: persist, check the contract, send, apply, advance."""
        if node_id in self.down:
            return
        node = self.nodes[node_id]
        st = self.storage[node_id]
        while node.has_ready():
            rd = node.ready()
            if rd.send_early:
                # Its messages may leave before this Ready's write: they must hold against the disk as it was.
                self._check_messages(node_id, rd)
            st.persist(rd)
            self._check_messages(node_id, rd)
            self._check_applied(node_id, rd)
            for m in rd.messages:
                assert m.frm == node_id or m.type in (MsgType.READ_INDEX, MsgType.TRANSFER_LEADER), m
                self.sent.append(m)
                self.queue.append(m)
            self.applied[node_id].extend(rd.committed_entries)
            if rd.committed_entries:
                st.applied = rd.committed_entries[-1].index
            self.read_states[node_id].extend(rd.read_states)
            node.advance()

    def _check_messages(self, node_id: int, rd: Ready) -> None:
        """The Ready contract for messages, checked against what is durable when they are sent."""
        st = self.storage[node_id]
        hs = st.hard_state
        for m in rd.messages:
            # A vote must be durable when it leaves, unless a newer durable term already rules out its term.
            if m.type is MsgType.VOTE_RESP and not m.reject:
                assert hs.term > m.term or (hs.term, hs.vote) == (m.term, m.to), f"vote {m} not durable: {hs}"
            if m.type is MsgType.VOTE:
                assert hs.term > m.term or (hs.term, hs.vote) == (m.term, node_id), f"{m} not durable: {hs}"
            if m.type is MsgType.APP_RESP and not m.reject and m.index:
                assert len(st.entries) >= m.index, f"ack {m} sent before entries were durable"
            if m.type not in (MsgType.READ_INDEX, MsgType.TRANSFER_LEADER, MsgType.PRE_VOTE):
                assert m.term <= hs.term or m.type is MsgType.PRE_VOTE_RESP, f"{m} ahead of durable {hs}"

    def _check_applied(self, node_id: int, rd: Ready) -> None:
        """Committed entries are applied in order, only once durable here and committed."""
        st = self.storage[node_id]
        hs = st.hard_state
        prev = st.applied
        for e in rd.committed_entries:
            assert e.index == prev + 1, f"applied out of order: {e} after index {prev}"
            assert e.index <= hs.commit, f"{e} applied beyond the durable commit {hs.commit}"
            assert st.term_at(e.index) == e.term, f"{e} applied but not durable"
            prev = e.index

    def process_all(self) -> None:
        for i in self.ids:
            self.process(i)

    def _blocked(self, m: Message) -> bool:
        if m.to not in self.nodes:  # a member added by a change, not running here
            return True
        if m.to in self.down or m.frm in self.down:
            return True
        if m.to in self.isolated or m.frm in self.isolated:
            return True
        if frozenset((m.frm, m.to)) in self.cut:
            return True
        return self.drop is not None and self.drop(m)

    def deliver(self, only: MessageFilter | None = None, limit: int = 100_000) -> int:
        """Deliver queued messages (those matching `only`, if given) until none is left; returns the count.

        Messages that do not match `only` stay queued, in order, for a later call.
        """
        count = 0
        while True:
            self.process_all()
            m = self._pop(only)
            if m is None:
                return count
            if self._blocked(m):
                continue
            self.delivered.append(m)
            self.nodes[m.to].step(m)
            count += 1
            assert count < limit, "the network did not go quiet: livelock?"

    def deliver_one(self, only: MessageFilter) -> Message:
        """Deliver exactly the first queued message matching `only` (it must exist and not be blocked)."""
        self.process_all()
        m = self._pop(only)
        assert m is not None, "no queued message matches"
        assert not self._blocked(m), f"{m} is blocked"
        self.delivered.append(m)
        self.nodes[m.to].step(m)
        self.process_all()
        return m

    def _pop(self, only: MessageFilter | None) -> Message | None:
        for k, m in enumerate(self.queue):
            if only is None or only(m):
                del self.queue[k]
                return m
        return None

    # -- driving ------------------------------------------------------------------------------------
    def tick(self, node_id: int, n: int = 1) -> None:
        """Tick one node n times without delivering anything."""
        for _ in range(n):
            self.nodes[node_id].tick()
            self.process(node_id)

    def tick_all(self, rounds: int = 1) -> None:
        """Each round: tick every live node once, then deliver until the network is quiet."""
        for _ in range(rounds):
            for i in self.ids:
                if i not in self.down:
                    self.nodes[i].tick()
            self.deliver()

    def elect(self, node_id: int) -> None:
        """Make node_id campaign and deliver everything; it must end up the leader."""
        self.nodes[node_id].campaign()
        self.deliver()
        assert self.role(node_id) is Role.LEADER, f"node {node_id} is {self.role(node_id)}"

    def heartbeat(self, node_id: int) -> None:
        """Tick the leader to its next heartbeat and deliver: how followers learn a new commit index."""
        self.tick(node_id, self.nodes[node_id].raft.cfg.heartbeat_tick)
        self.deliver()

    def propose(self, node_id: int, data: bytes) -> int:
        index = self.nodes[node_id].propose(data)
        self.process(node_id)
        return index

    # -- inspection ---------------------------------------------------------------------------------
    def role(self, node_id: int) -> Role:
        return self.nodes[node_id].raft.role

    def term(self, node_id: int) -> int:
        return self.nodes[node_id].raft.term

    def lead(self, node_id: int) -> int:
        return self.nodes[node_id].raft.lead

    def log(self, node_id: int) -> list[Entry]:
        return list(self.nodes[node_id].raft.log.entries)

    def commit(self, node_id: int) -> int:
        return self.nodes[node_id].raft.log.committed

    def leaders(self) -> list[int]:
        return [i for i in self.ids if i not in self.down and self.role(i) is Role.LEADER]

    def sent_of(self, kind: MsgType, *, frm: int | None = None, to: int | None = None) -> list[Message]:
        return [m for m in self.sent if m.type is kind and frm in (None, m.frm) and to in (None, m.to)]

    def delivered_of(self, kind: MsgType, *, frm: int | None = None, to: int | None = None) -> list[Message]:
        return [m for m in self.delivered if m.type is kind and frm in (None, m.frm) and to in (None, m.to)]

    def queued_of(self, kind: MsgType, *, frm: int | None = None, to: int | None = None) -> list[Message]:
        return [m for m in self.queue if m.type is kind and frm in (None, m.frm) and to in (None, m.to)]
