"""The Ready contract, written once for every driver: the order of its steps, and the one loop that runs them.

The daemon (raftd.node), the core's simulator (raftd.sim.cluster) and the golden-script environment
(tests/core/interaction.py) each carry a Ready out with their own I/O: sqlite and gRPC, a simulated disk and
network, a printed transcript. What they must agree on is the order, which is what keeps Raft safe, so
handle_ready() walks it here and each driver only says how to do a step (a ReadyIO: the logic says what,
the caller does the I/O). The daemon's steps wait for its disk thread; the simulator's and the golden
environment's never wait, so they run the same coroutine to its end at once (run_now). A driver that crashes
a node "between persist and send" raises from its step, and the steps after it never run.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from .types import Ready

T = TypeVar("T")


class Step(enum.Enum):
    SEND = "send"  # the messages
    PERSIST = "persist"  # hard state, snapshot and entries: one durable save
    INSTALL = "install"  # the snapshot, into the state machine
    APPLY = "apply"  # the committed entries, in order
    READS = "reads"  # the confirmed read states
    ADVANCE = "advance"  # RawNode.advance(): the Ready is done


def ready_steps(rd: Ready) -> tuple[Step, ...]:
    """What to do with rd, in order.

    Messages may depend on what is persisted (a vote, an acknowledgement of entries), so they leave after
    the save, except when send_early allows a leader to send while it writes (dissertation 10.2.1: its own
    copy counts toward commit only after advance). Installing and applying come after the save, so a node
    never applies what it could lose in a crash; reads come after applying, so that a read confirmed at an
    index sees the state at that index.
    """
    return _PLANS[
        (
            bool(rd.messages),
            rd.send_early,
            rd.snapshot is not None,
            bool(rd.committed_entries),
            bool(rd.read_states),
        )
    ]


def _plan(messages: bool, early: bool, snapshot: bool, committed: bool, reads: bool) -> tuple[Step, ...]:
    steps = []
    if messages and early:
        steps.append(Step.SEND)
    steps.append(Step.PERSIST)
    if messages and not early:
        steps.append(Step.SEND)
    if snapshot:
        steps.append(Step.INSTALL)
    if committed:
        steps.append(Step.APPLY)
    if reads:
        steps.append(Step.READS)
    steps.append(Step.ADVANCE)
    return tuple(steps)


# Every Ready's plan, made once: the daemon asks for one per Ready, thousands a second.
_PLANS = {key: _plan(*key) for key in itertools.product((False, True), repeat=5)}


class ReadyIO(Protocol):
    """How one driver carries out each step of a Ready (handle_ready calls them in the contract's order)."""

    async def persist(self, rd: Ready) -> None:
        """Hard state, snapshot and entries, durable when this returns."""

    async def send(self, rd: Ready) -> None:
        """rd.messages, handed to the network."""

    async def install(self, rd: Ready) -> None:
        """rd.snapshot, into the state machine."""

    def apply(self, rd: Ready) -> None:
        """rd.committed_entries, in order."""

    def reads(self, rd: Ready) -> None:
        """rd.read_states, confirmed: serve them once applied that far."""

    def advance(self, rd: Ready) -> None:
        """The Ready is done: RawNode.advance() (after the driver's own bookkeeping)."""


async def handle_ready(rd: Ready, io: ReadyIO) -> None:
    """Carry rd out through io, step by step in ready_steps' order."""
    for step in ready_steps(rd):  # the commonest steps first: the daemon handles thousands a second
        if step is _PERSIST:
            await io.persist(rd)
        elif step is _SEND:
            await io.send(rd)
        elif step is _APPLY:
            io.apply(rd)
        elif step is _ADVANCE:
            io.advance(rd)
        elif step is _READS:
            io.reads(rd)
        else:
            await io.install(rd)


_PERSIST, _SEND, _APPLY, _ADVANCE, _READS = Step.PERSIST, Step.SEND, Step.APPLY, Step.ADVANCE, Step.READS


def run_now(work: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits (a simulated driver's steps), without an event loop."""
    try:
        work.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    work.close()
    raise RuntimeError("a step of a driver without an event loop waited for something")
