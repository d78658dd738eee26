"""The in-memory transport: nodes of one process, connected through the event loop.

It stands in for gRPC where a test runs several real RaftNodes in one process (hashicorp/raft's
InmemTransport plays the same part): a message reaches its node one loop turn after it was sent, as
the peer service would hand it over, unless the network cuts either end off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from raftd.consistency import StateHashes
from raftd.core import Message, MsgType
from raftd.identity import Identity
from raftd.settings import Limits, Tuning
from raftd.transport.peer import PROTOCOL_VERSION


class Receiver(Protocol):
    """What the peer service calls on a node (raftd.server.PeerService)."""

    identity: Identity

    def deliver(self, messages: list[Message]) -> None: ...

    def deliver_snapshot(self, m: Message, cluster_id: str) -> None: ...

    def peer_speaks(self, core_id: int, version: int) -> None: ...

    def peer_state_hash(self, core_id: int, index: int, value: int) -> None: ...

    def peer_refusal(self, core_id: int, incarnation: str) -> str | None: ...


class MemoryNetwork:
    """The nodes by core id, and which of them are cut off from every other."""

    def __init__(self) -> None:
        self.nodes: dict[int, Receiver] = {}
        self.cut: set[int] = set()

    def attach(self, core_id: int, node: Receiver) -> None:
        self.nodes[core_id] = node

    def detach(self, core_id: int) -> None:
        """The node is gone (crashed): what is on its way to it is lost."""
        self.nodes.pop(core_id, None)

    def transport(self, sender: int) -> Callable[..., MemoryPeer]:
        """The transport for the node with core id sender (a raftd.transport.base.Transport)."""

        def make(
            peer: int,
            address: str,
            identity: Identity,
            on_unreachable: Callable[[int], None],
            hashes: StateHashes,
            limits: Limits,
            tuning: Tuning,
        ) -> MemoryPeer:
            # No queue to bound and no writes to time: a batch goes at the next turn of the loop.
            return MemoryPeer(self, sender, peer, identity, on_unreachable, hashes, address)

        return make

    def reaches(self, frm: int, to: int) -> bool:
        return frm not in self.cut and to not in self.cut and to in self.nodes

    def copies(self, frm: int, to: int) -> list[float]:
        """The delays after which copies of a batch arrive: none when it is lost. One, at once, unless a
        subclass (the simulator's network) says otherwise."""
        return [0.0] if self.reaches(frm, to) else []


class MemoryPeer:
    def __init__(
        self,
        network: MemoryNetwork,
        sender: int,
        peer: int,
        identity: Identity,
        on_unreachable: Callable[[int], None],
        hashes: StateHashes,
        address: str = "",
    ) -> None:
        self.network = network
        self.address = address
        self.incarnation = ""
        self.on_refused: Callable[[str], None] = lambda why: None
        self.sender = sender
        self.peer = peer
        self.identity = identity
        self.on_unreachable = on_unreachable
        self.hashes = hashes
        self.reachable = True
        self.dropped = 0
        self._queued: list[Message] = []
        self._flush: asyncio.Handle | None = None

    def start(self) -> None:
        pass

    def send(self, m: Message) -> None:
        self._queued.append(m)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._deliver)

    def clear(self) -> None:
        self._queued.clear()

    def _deliver(self) -> None:
        """One batch per loop turn, as the gRPC sender writes what queued meanwhile."""
        self._flush = None
        batch, self._queued = self._queued, []
        if not batch:
            return
        delays = self.network.copies(self.sender, self.peer)
        if not delays:
            self.reachable = False
            if any(m.type is MsgType.APP for m in batch):
                self.on_unreachable(self.peer)
            return
        self.reachable = True
        hashed = self.hashes.latest
        loop = asyncio.get_running_loop()
        for delay in delays:
            if delay > 0:
                loop.call_later(delay, self._arrive, batch, hashed)
            else:
                self._arrive(batch, hashed)

    def _arrive(self, batch: list[Message], hashed: tuple[int, int]) -> None:
        node = self.network.nodes.get(self.peer)
        if node is None:  # it crashed meanwhile
            return
        refusal = node.peer_refusal(self.sender, self.incarnation)
        if refusal is not None:
            self.on_refused(refusal)
            return
        node.peer_speaks(self.sender, PROTOCOL_VERSION)
        if hashed[0]:
            node.peer_state_hash(self.sender, *hashed)
        node.deliver(batch)

    async def send_snapshot(self, m: Message) -> bool:
        delays = self.network.copies(self.sender, self.peer)
        if not delays:
            return False
        await asyncio.sleep(delays[0])
        node = self.network.nodes.get(self.peer)
        if node is None:
            return False
        node.deliver_snapshot(m, self.identity.id)
        return True

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._queued.clear()
