"""Snapshot policy and transfer: when a node compacts its log, taking an image without stalling the loop,
sending its image to a peer, and installing the leader's.

Split from the loop (raftd.node) so that each can be read alone. It reads the node's core and state
machine through the node, since both are replaced when a node boots again after a suspension.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import TYPE_CHECKING

from raftd import malloc
from raftd.core import Message, Snapshot, SnapshotMeta
from raftd.errors import FatalError
from raftd.kv import ImageError, StateMachine, encode_to
from raftd.settings import TUNING
from raftd.transport.base import Peer

if TYPE_CHECKING:
    from raftd.node import RaftNode

log = logging.getLogger("raftd.node")


def snapshot_due(
    entries: int, log_bytes: int, image_bytes: int, every: int, floor: int = TUNING.min_snapshot_log_bytes
) -> bool:
    """Compact after `every` entries, or sooner once the log since the last snapshot outweighs the image:
    a large state overwritten fast would otherwise keep a log many times its own size. The floor
    (Tuning.min_snapshot_log_bytes) keeps a small state from being snapshotted several times a second."""
    return entries >= every or log_bytes >= max(image_bytes, floor)


class Snapshots:
    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self.index = 0  # of the newest snapshot stored or being saved
        self.image_bytes = 0  # its size
        self.log_bytes = (
            0  # log bytes applied since it (those replayed at boot count too: they are in the log)
        )
        self.taking = False
        # Peers' transfers that ended, (core id, delivered), for the loop to report to the core.
        self.reports: list[tuple[int, bool]] = []
        self._sender: tuple[SnapshotMeta, str] | None = None  # offered()

    def reset(self, snapshot: Snapshot | None) -> None:
        """At (re)boot: the stored snapshot is the newest."""
        self.index = snapshot.meta.index if snapshot is not None else 0
        self.image_bytes = len(snapshot.data) if snapshot is not None else 0
        self.log_bytes = 0

    def applied(self, nbytes: int) -> None:
        self.log_bytes += nbytes

    def saving(self, meta: SnapshotMeta) -> None:
        """A leader's snapshot is about to be saved: a local one taken meanwhile must see that it is older."""
        self.index = max(self.index, meta.index)

    def offered(self, meta: SnapshotMeta, cluster_id: str) -> None:
        """A peer sent an image with its cluster id, which this node takes if it installs that image and has
        none yet (the entry that named the cluster may be inside the image)."""
        self._sender = (meta, cluster_id)

    def maybe_take(self) -> None:
        """Start a snapshot in the background if the policy says one is due and none is under way."""
        node = self.node
        if self.taking or node.stopping:
            return
        entries = node.kv.applied - self.index
        every, floor = node.limits.snapshot_entries, node.tuning.min_snapshot_log_bytes
        if snapshot_due(entries, self.log_bytes, self.image_bytes, every, floor):
            self.taking = True
            node.spawn(self._take())

    async def _take(self) -> None:
        """Compact the log behind a fresh image of the state, without stalling the loop.

        The copy is taken here, at a consistent applied index; encoding into the image's file runs on a
        worker thread; the save that adopts the file runs on the disk thread, the Readies of that time
        queued behind it; only then is the log compacted.
        """
        node = self.node
        loop = asyncio.get_running_loop()
        try:
            index = node.kv.applied
            covered = self.log_bytes
            term = node.raw.log_term(index)
            assert term is not None
            meta = SnapshotMeta(index, term)
            # Encoded straight into its file beside the database, so the image is never held whole in
            # memory (about 40 MB at a million keys) and Readies keep being saved meanwhile.
            write = functools.partial(encode_to, node.kv.image())
            size = await loop.run_in_executor(node.cpu, node.storage.stage_image, meta, write)
            del write  # the image's view of the keyspace's file closes (mvcc.Frozen)
            stale = index <= self.index or node.raw.applied < index
            if node.suspended or node.stopping or stale:
                return  # rebooted, or a leader's snapshot overtook this one: it is of no use now
            await node.on_disk(node.storage.save, None, [], meta)
            node.raw.compact(index)
            self.index = max(self.index, index)
            self.image_bytes = size
            self.log_bytes -= covered
            await node.on_disk(node.storage.reclaim)
            log.debug("snapshot at index %d (%d bytes); log compacted", index, size)
            # The encoding's working buffers are gone: hand the pages they left in the heaps back.
            await loop.run_in_executor(node.cpu, malloc.trim)
        finally:
            self.taking = False

    async def send(self, client: Peer, m: Message) -> None:
        """Stream our latest stored snapshot (at least as new as the one the core asked for)."""
        node = self.node
        # On the disk thread, so that no snapshot save drops the file between its row and its read; not
        # counted as busy: it holds the storage's lock for the row only, so Readies go on being saved on the
        # loop while a large image is read.
        snapshot = await asyncio.get_running_loop().run_in_executor(node.disk, node.storage.load_snapshot)
        if snapshot is not None:
            # Storage keeps the position alone; the membership as of it goes with the image, or the
            # follower would keep the one it had (a joining node: the bootstrap voters, long gone maybe).
            meta = dataclasses.replace(snapshot.meta, conf=node.raw.conf_at(snapshot.meta.index))
            snapshot = dataclasses.replace(snapshot, meta=meta)
        ok = snapshot is not None and await client.send_snapshot(dataclasses.replace(m, snapshot=snapshot))
        self.reports.append((m.to, ok))
        node.wake.set()

    async def install(self, snapshot: Snapshot) -> StateMachine:
        """A snapshot from the leader replaced our log: the state machine that follows it (decoded off the
        loop)."""
        node = self.node

        def restored() -> StateMachine:
            kv = node.new_state()
            kv.restore(snapshot.meta.index, snapshot.data)
            return kv

        try:
            kv = await asyncio.get_running_loop().run_in_executor(node.cpu, restored)
        except ImageError as e:
            raise FatalError(f"the leader sent an unusable snapshot: {e}") from e
        self.image_bytes = len(snapshot.data)
        self.log_bytes = 0
        log.info("Installed a snapshot at index %d", snapshot.meta.index)
        sender, self._sender = self._sender, None
        if sender is not None and sender[0] == snapshot.meta:
            node.adopt_cluster_id(sender[1])
        return kv
