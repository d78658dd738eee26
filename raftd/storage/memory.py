"""MemoryStorage: the sqlite store's twin for tests, with the same API and the same refusals."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO

from raftd.core.types import Entry, HardState, Snapshot, SnapshotMeta

from .base import DirRecord, LogShape, PersistedState, StorageError, plan_save


class MemoryStorage:
    """Keeps what was saved in this object; "durable" means it survives until the object is dropped."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot: Snapshot | None = None
        self._staged: dict[SnapshotMeta, bytes] = {}
        # Invariant: contiguous, starting at self._shape.snapshot_index + 1.
        self._entries: list[Entry] = []
        self._shape = LogShape()
        self._closed = False
        self.cluster_name = "memory"
        self.cluster_id = ""
        self.record = DirRecord()

    def save_record(self, record: DirRecord) -> None:
        self._check_open()
        self.record = record

    def record_cluster_id(self, cluster_id: str) -> None:
        self._check_open()
        self.cluster_id = cluster_id

    def load(self) -> PersistedState:
        self._check_open()
        return PersistedState(self._hard_state, self._snapshot, list(self._entries))

    def save(
        self,
        hard_state: HardState | None,
        entries: list[Entry],
        snapshot: Snapshot | SnapshotMeta | None = None,
    ) -> None:
        """Same contract as SqliteStorage.save, including which entries a snapshot discards."""
        self._check_open()
        meta = snapshot.meta if isinstance(snapshot, Snapshot) else snapshot
        shape, keep_tail = plan_save(self._shape, hard_state, entries, meta, self._stored_term)
        if isinstance(snapshot, SnapshotMeta):
            if snapshot in self._staged:
                snapshot = Snapshot(snapshot, self._staged[snapshot])
            elif self._snapshot is not None and self._snapshot.meta == snapshot:
                snapshot = self._snapshot  # the current image, as sqlite finds its file
            else:
                raise ValueError(f"no image was staged for the snapshot at {snapshot.index}")
        if snapshot is not None:
            self._staged.clear()  # adopted, or orphaned by a newer snapshot
            offset = snapshot.meta.index - self._shape.snapshot_index
            self._entries = self._entries[offset:] if keep_tail else []
            self._snapshot = snapshot
        if entries:
            del self._entries[entries[0].index - shape.snapshot_index - 1 :]
            self._entries.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state
        self._shape = shape

    def stage_image(self, meta: SnapshotMeta, write: Callable[[BinaryIO], int]) -> int:
        self._check_open()
        out = io.BytesIO()
        size = write(out)
        self._staged[meta] = out.getvalue()
        return size

    def load_snapshot(self) -> Snapshot | None:
        self._check_open()
        return self._snapshot

    def reclaim(self) -> None:
        """Nothing to give back: dropped entries are already garbage."""
        self._check_open()

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("memory storage: the storage is closed")

    def _stored_term(self, index: int) -> int:
        return self._entries[index - self._shape.snapshot_index - 1].term
