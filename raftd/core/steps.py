"""The Ready contract as an ordered list of steps, written once for every driver.

The daemon (raftd.node), the core's simulator (raftd.sim.cluster) and the golden-script environment
(tests/core/interaction.py) each carry a Ready out with their own I/O: sqlite and gRPC, a simulated disk and
network, a printed transcript. What they must agree on is the order, which is what keeps Raft safe, so the
order comes from here and each driver only says how to do a step (the logic returns actions, the caller does
the I/O). A driver that crashes a node "between persist and send" stops iterating after PERSIST.
"""

from __future__ import annotations

import enum
import itertools

from .types import Ready


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
