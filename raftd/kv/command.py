"""The log entry format of client commands: a compact binary encoding, cheap on the hot path."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

_HEAD = struct.Struct(">BQHII")  # op, seq, len(client_id), len(key), len(value)


class Op(enum.IntEnum):
    PUT = 1
    DELETE = 2
    CLUSTER_ID = 3  # value: the cluster's random id (raftd.identity); the store itself ignores it


class CommandError(ValueError):
    """An entry that does not decode: corrupt data or a foreign writer."""


@dataclass(frozen=True, slots=True)
class Command:
    op: Op
    key: bytes
    value: bytes = b""
    client_id: bytes = b""  # empty: no exactly-once session
    seq: int = 0

    def encode(self) -> bytes:
        return (
            _HEAD.pack(self.op, self.seq, len(self.client_id), len(self.key), len(self.value))
            + self.client_id
            + self.key
            + self.value
        )

    @classmethod
    def decode(cls, data: bytes) -> Command:
        try:
            op, seq, nc, nk, nv = _HEAD.unpack_from(data)
            body = data[_HEAD.size :]
            if len(body) != nc + nk + nv:
                raise CommandError(f"command length {len(data)} does not match its header")
            return cls(Op(op), body[nc : nc + nk], body[nc + nk :], body[:nc], seq)
        except (struct.error, ValueError) as e:
            raise CommandError(f"undecodable command: {e}") from e
