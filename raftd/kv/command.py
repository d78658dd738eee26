"""The log entry format of client commands: a compact binary encoding, cheap on the hot path."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

_HEAD = struct.Struct(">BQHII")  # op and flags, seq, len(client_id), len(key), len(value)
# Flags in the op byte. CHECKED: the entry says whether it is its client's first write (FIRST), and a
# write that is not, on a client the store does not know (its session expired), is refused rather than
# applied. Entries without CHECKED (written before, or while a node of an earlier release is a member, which
# could not decode the flags) keep the earlier rule: an unknown client's write applies.
_CHECKED = 0x80
_FIRST = 0x40
_OP_BITS = 0x3F


class Op(enum.IntEnum):
    PUT = 1
    DELETE = 2
    CLUSTER_ID = 3  # value: the cluster's random id (raftd.identity); the store itself ignores it
    SESSION_LIMIT = 4  # value: how many sessions the store keeps, in decimal (raftd --max-sessions)
    HASH_CHECK = 5  # the replicas hash their state here (raftd.consistency); the store itself ignores it
    MEMBER = 6  # value: a membership change or record (raftd.kv.members)
    MVCC = 7  # value: a write to the etcd keyspace (raftd.kv.mvcc.encode_request)
    # No value: from here on raftd.v1's keys live in the etcd keyspace (raftd.kv.store.KVStore.merge). A
    # log entry, so that every replica moves them at the same index and numbers the same revisions.
    MERGE = 8


def op_of(data: bytes) -> int:
    """The op number of an encoded command, without decoding it (0 for an empty entry)."""
    return data[0] & _OP_BITS if data else 0


class CommandError(ValueError):
    """An entry that does not decode: corrupt data or a foreign writer."""


@dataclass(frozen=True, slots=True)
class Command:
    op: Op
    key: bytes
    value: bytes = b""
    client_id: bytes = b""  # empty: no exactly-once session
    seq: int = 0
    # Whether this is the client's first write (no earlier one may have applied); None: the entry predates
    # the rule (see _CHECKED), and an unknown client's write applies whatever it is.
    first: bool | None = None

    def encode(self) -> bytes:
        head = self.op if self.first is None else self.op | _CHECKED | (_FIRST if self.first else 0)
        return (
            _HEAD.pack(head, self.seq, len(self.client_id), len(self.key), len(self.value))
            + self.client_id
            + self.key
            + self.value
        )

    @classmethod
    def decode(cls, data: bytes) -> Command:
        try:
            head, seq, nc, nk, nv = _HEAD.unpack_from(data)
            body = data[_HEAD.size :]
            if len(body) != nc + nk + nv:
                raise CommandError(f"command length {len(data)} does not match its header")
            first = bool(head & _FIRST) if head & _CHECKED else None
            if head & _FIRST and first is None:
                raise CommandError(f"command flags {head:#x} are not a valid combination")
            return cls(Op(head & _OP_BITS), body[nc : nc + nk], body[nc + nk :], body[:nc], seq, first)
        except (struct.error, ValueError) as e:
            raise CommandError(f"undecodable command: {e}") from e
