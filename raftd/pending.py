"""Every client request a node holds, and the one rule for failing them.

A request is in one of these places, and where it is decides what a failure may say:
- a write not yet proposed (`proposals`): refused, it never applies (Unavailable);
- a write in the log (`waiting`, by index): its fate is no longer this node's to know, so it fails as
  OutcomeUnknown, unless an entry of another term is seen to take its index (then it never applied);
- a read (`reads`, then `read_wait` by ReadIndex round, then `confirmed` until applied): a read changes
  nothing, so any failure is a plain Unavailable that is safe to retry;
- a leadership transfer waiting for the new leader (`leader_waiters`).

Adding a kind of request means adding its place here and to fail_all(), nowhere else.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from raftd import testhooks
from raftd.core import Entry, ReadState
from raftd.errors import LeaderChanging, OutcomeUnknown, SessionExpired, Unavailable
from raftd.kv import Result


@dataclass
class Proposal:
    data: bytes
    future: asyncio.Future[Result]


def _settle(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)


def _fail(futures: list[Any], error: Exception) -> None:
    for f in futures:
        if not f.done():
            f.set_exception(error)


class Pending:
    def __init__(self) -> None:
        self.proposals: list[Proposal] = []
        self.proposals_since = 0.0  # when the oldest of them came (gathering)
        self.waiting: dict[int, tuple[int, asyncio.Future[Result]]] = {}  # index: (term, future)
        self.reads: list[asyncio.Future[int]] = []
        self.reads_since = 0.0  # when the oldest of them came (gathering)
        self.read_wait: dict[bytes, list[asyncio.Future[int]]] = {}  # by the round's context
        self.read_deadlines: deque[tuple[float, bytes]] = deque()  # (when to give up, context), in order
        self.round: bytes | None = None  # the context of the newest ReadIndex round
        self.round_started = 0.0
        self.confirmed: list[tuple[int, list[asyncio.Future[int]]]] = []  # (read index, futures)
        self.leader_waiters: list[asyncio.Future[int]] = []
        self.changes: list[Proposal] = []  # membership changes not yet proposed (refused on failure)

    # -- writes -------------------------------------------------------------------------------------
    def add_write(self, data: bytes, now: float) -> tuple[asyncio.Future[Result], bool]:
        """A write to propose; also whether it is the first waiting (a new gathering starts with it)."""
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        first = not self.proposals
        if first:
            self.proposals_since = now
        self.proposals.append(Proposal(data, fut))
        return fut, first

    def take_proposals(self, max_bytes: int) -> list[Proposal]:
        """The proposals waiting, up to max_bytes (at least one); the rest wait for the next turn."""
        n = size = 0
        for p in self.proposals:
            size += len(p.data)
            if n and size > max_bytes:
                break
            n += 1
        batch, self.proposals = self.proposals[:n], self.proposals[n:]
        return batch

    @staticmethod
    def refuse(batch: list[Proposal], error: Exception) -> None:
        """Writes the core would not take into its log: they never apply."""
        _fail([p.future for p in batch], error)

    def proposed(self, batch: list[Proposal], first_index: int, term: int) -> None:
        for k, p in enumerate(batch):
            self.waiting[first_index + k] = (term, p.future)

    def applied(self, e: Entry, result: Result | None) -> None:
        """Answer the write waiting for index e.index, if this node proposed one."""
        waiter = self.waiting.pop(e.index, None)
        if waiter is None:
            return
        term, fut = waiter
        if fut.done():
            return
        if e.term != term or result is None:
            # Another leader's entry took this index: ours was never committed.
            fut.set_exception(Unavailable("leadership changed before the write committed; retry"))
        elif result.expired:
            fut.set_exception(SessionExpired())
        elif testhooks.ANSWER_DELAY_S:
            asyncio.get_running_loop().call_later(testhooks.ANSWER_DELAY_S, _settle, fut, result)
        else:
            fut.set_result(result)

    def leadership_lost(self, reason: str, committed: int) -> None:
        """A write in our log may yet be committed by the next leader, or overwritten: say so now rather
        than at the caller's deadline, so that it can retry (with its session) or read. One committed
        already is answered when it applies here, as it will: a leader that removed itself steps down as
        the removal commits, which may be before this node applies it (found by bench/membership.py: the
        removal came back "may have applied")."""
        lost = {i: w for i, w in self.waiting.items() if i > committed}
        self.waiting = {i: w for i, w in self.waiting.items() if i <= committed}
        _fail([f for _, f in lost.values()], OutcomeUnknown(f"{reason}; the write may have applied"))

    def add_change(self, data: bytes) -> asyncio.Future[Result]:
        """A membership change to propose at the loop's next turn (RaftNode._propose_change); once proposed
        it waits in `waiting` as a write does."""
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.changes.append(Proposal(data, fut))
        return fut

    def take_changes(self) -> list[Proposal]:
        changes, self.changes = self.changes, []
        return changes

    # -- reads --------------------------------------------------------------------------------------
    def add_read(self, now: float) -> tuple[asyncio.Future[int], bool]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        first = not self.reads
        if first:
            self.reads_since = now
        self.reads.append(fut)
        return fut, first

    def start_round(self, ctx: bytes, now: float, give_up_at: float) -> None:
        """Every read asked since the last round shares this one."""
        self.read_wait[ctx], self.reads = self.reads, []
        self.round, self.round_started = ctx, now
        self.read_deadlines.append((give_up_at, ctx))

    def refuse_reads(self, error: Exception) -> None:
        reads, self.reads = self.reads, []
        _fail(reads, error)

    def round_in_flight(self, now: float, hold_s: float) -> bool:
        """Whether the newest round is still unanswered and young enough to wait for."""
        return self.round in self.read_wait and now - self.round_started < hold_s

    def expire_reads(self, now: float, error: Exception) -> None:
        """Fail the reads past their deadline, and drop the deadlines of rounds already settled from the
        head, so that the loop's timer (which wakes for the first deadline) wakes only for a live one."""
        while self.read_deadlines:
            deadline, ctx = self.read_deadlines[0]
            if ctx in self.read_wait and deadline > now:
                return
            self.read_deadlines.popleft()
            _fail(self.read_wait.pop(ctx, []), error)

    def confirm(self, states: list[ReadState], applied: int) -> None:
        for rs in states:
            futures = self.read_wait.pop(rs.context, None)
            if futures is None:
                continue
            if rs.index <= applied:
                _release(futures, applied)
            else:
                self.confirmed.append((rs.index, futures))

    def release(self, applied: int) -> None:
        """Answer the confirmed reads whose index the state machine has reached."""
        if not self.confirmed:
            return
        ready = [fs for i, fs in self.confirmed if i <= applied]
        self.confirmed = [(i, fs) for i, fs in self.confirmed if i > applied]
        for futures in ready:
            _release(futures, applied)

    # -- leadership ---------------------------------------------------------------------------------
    def add_leader_waiter(self) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.leader_waiters.append(fut)
        return fut

    def leader_changed(self, leader: int | None) -> None:
        """Reads in flight were tied to the old leader's round: fail them so that clients retry. Transfers
        waiting learn the new leader (config id; None while none is known)."""
        rounds, self.read_wait = self.read_wait, {}
        _fail(
            [f for fs in rounds.values() for f in fs],
            LeaderChanging("leadership changed during the read; retry"),
        )
        if leader is not None:
            waiters, self.leader_waiters = self.leader_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(leader)

    # -- everything ---------------------------------------------------------------------------------
    def fail_all(self, reason: str) -> None:
        """Fail every pending request by the rule: writes in the log as unknown, the rest as refused."""
        self.leadership_lost(reason, 0)  # none kept: nothing will be answered here
        futures: list[asyncio.Future[Any]] = [p.future for p in self.proposals]
        futures += self.reads
        futures += [f for fs in self.read_wait.values() for f in fs]
        futures += [f for _, fs in self.confirmed for f in fs]
        futures += self.leader_waiters
        futures += [c.future for c in self.changes]
        self.changes = []
        self.proposals = []
        self.reads = []
        self.read_wait = {}
        self.read_deadlines.clear()
        self.confirmed = []
        self.leader_waiters = []
        _fail(futures, Unavailable(reason))


def _release(futures: list[asyncio.Future[int]], applied: int) -> None:
    for f in futures:
        if not f.done():
            f.set_result(applied)
