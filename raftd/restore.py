"""raftd --restore: seed an empty data directory from a backup file (raftd.backup)."""

from __future__ import annotations

from pathlib import Path

from raftd.backup import Backup, BackupError, unpack
from raftd.core import HardState, Snapshot, SnapshotMeta
from raftd.storage import SqliteStorage


def restore(path: Path, data_dir: Path, cluster: str, node_id: int) -> Backup:
    """Seed an empty data directory from a backup file; refuses a directory that already holds state."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise BackupError(f"{path}: cannot read: {e.strerror or e}") from None
    backup = unpack(raw, str(path))
    storage = SqliteStorage.open(data_dir, cluster, node_id)
    try:
        state = storage.load()
        if state.hard_state != HardState() or state.entries or state.snapshot is not None:
            raise BackupError(
                f"{data_dir}: already holds Raft state; --restore needs an empty data directory"
            )
        snapshot = Snapshot(SnapshotMeta(backup.index, backup.term), backup.image)
        storage.save(HardState(backup.term, 0, backup.index), [], snapshot)
    finally:
        storage.close()
    return backup
