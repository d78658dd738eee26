"""The key-value state machine replicated by Raft."""

from .command import Command, CommandError, Op
from .image import Image, ImageError, decode, encode, encode_to, verify
from .store import KVStore, Result, StateMachine

__all__ = [
    "Command",
    "CommandError",
    "Image",
    "ImageError",
    "KVStore",
    "Op",
    "Result",
    "StateMachine",
    "decode",
    "encode",
    "encode_to",
    "verify",
]
