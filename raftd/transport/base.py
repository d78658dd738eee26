"""What the node asks of a transport: one sender per peer. The gRPC one is raftd.transport.peer; the
in-memory twin, raftd.transport.memory, connects nodes of one process for tests of the real node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from raftd.consistency import StateHashes
from raftd.core import Message
from raftd.identity import Identity
from raftd.settings import Limits, Tuning


class Peer(Protocol):
    """The sender to one peer. Sending never blocks and never fails: a message that cannot go is dropped
    (Raft retries), and on_unreachable tells the node that a peer stopped taking entries."""

    reachable: bool  # False since a send to it failed, until one succeeds
    dropped: int  # messages dropped because the queue to it was full
    address: str  # HOST:PORT
    # The sender's data directory, sent with its traffic; and who to tell when the peer refuses that
    # traffic for good (raftd.errors.REMOVED, WRONG_INCARNATION). Set by the node after making the peer.
    incarnation: str
    on_refused: Callable[[str], None]

    def start(self) -> None: ...

    def send(self, m: Message) -> None: ...

    def clear(self) -> None:
        """Forget queued messages (a suspended node must not speak with its old state)."""

    async def send_snapshot(self, m: Message) -> bool:
        """A SNAP message with its image; True once the peer has taken all of it."""

    async def close(self) -> None: ...


class Transport(Protocol):
    """Makes the node's senders: one per peer, for the peer's core id and its map address, with the node's
    settings (the bound on a peer's queue, the timings and sizes of its writes)."""

    def __call__(
        self,
        peer: int,
        address: str,
        identity: Identity,
        on_unreachable: Callable[[int], None],
        hashes: StateHashes,
        limits: Limits,
        tuning: Tuning,
    ) -> Peer: ...
