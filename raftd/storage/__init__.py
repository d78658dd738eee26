"""Durable Raft state: hard state, log and snapshot. SqliteStorage for nodes, MemoryStorage for tests."""

from .base import DirRecord, PersistedState, Storage, StorageError
from .memory import MemoryStorage
from .sqlite import SqliteStorage

__all__ = ["DirRecord", "MemoryStorage", "PersistedState", "SqliteStorage", "Storage", "StorageError"]
