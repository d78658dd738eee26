"""ReadIndex bookkeeping on the leader (Raft dissertation, section 6.4)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ReadRequest:
    index: int  # the leader's commit index when the read arrived
    context: bytes
    origin: int  # node that asked; NONE for a read issued on the leader itself
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self.pending: dict[bytes, ReadRequest] = {}
        # Invariant: queue holds exactly the keys of pending, in arrival order.
        self.queue: list[bytes] = []

    def add(self, index: int, context: bytes, origin: int) -> bool:
        """Register a read; False when its context is already pending (a duplicate)."""
        if context in self.pending:
            return False
        self.pending[context] = ReadRequest(index, context, origin)
        self.queue.append(context)
        return True

    def ack(self, node: int, context: bytes) -> set[int] | None:
        """Record that node answered the heartbeat carrying context; the ackers so far, or None if unknown."""
        req = self.pending.get(context)
        if req is None:
            return None
        req.acks.add(node)
        return req.acks

    def release(self, context: bytes) -> list[ReadRequest]:
        """Every read up to and including context: a quorum for a later heartbeat confirms earlier reads."""
        if context not in self.pending:
            return []
        pos = self.queue.index(context)
        done = [self.pending.pop(c) for c in self.queue[: pos + 1]]
        del self.queue[: pos + 1]
        return done
