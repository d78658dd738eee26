"""The key-value state machine replicated by Raft."""

from .command import Command, CommandError, Op
from .store import KVStore, Result

__all__ = ["Command", "CommandError", "KVStore", "Op", "Result"]
