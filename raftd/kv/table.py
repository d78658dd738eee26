"""The key-value map, packed: a fixed array of buckets, each a bytes object holding its entries in a row.

Why not a dict: a dict of a million 16-byte values costs ~147 MB of Python objects (a bytes object per key
and per value plus the table), where the data itself is ~30 MB. Here an entry costs its bytes plus an 8-byte
header, and a bucket one object: a million keys take ~48 MB. The price is a short scan of one bucket per
operation (a few entries at a million keys) and a rewrite of that bucket per write.

Deterministic: the bucket is a checksum of the key (not Python's salted hash), an update keeps the entry's
place and a new key goes to the end of its bucket, so replicas applying the same log hold the same buckets,
byte for byte, and the buckets are the snapshot image as they are.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

BUCKET_BITS = 17
N_BUCKETS = 1 << BUCKET_BITS
_MASK = N_BUCKETS - 1
ENTRY = struct.Struct("<II")  # key length, value length; then the key, then the value


def bucket_of(key: bytes) -> int:
    return zlib.crc32(key) & _MASK


class PackedMap:
    """A bytes -> bytes map. Buckets are immutable bytes objects, so a copy of the bucket list is a
    consistent snapshot of the map that costs a million times less than copying the entries."""

    __slots__ = ("buckets", "count")

    def __init__(self, buckets: list[bytes] | None = None, count: int = 0) -> None:
        self.buckets = [b""] * N_BUCKETS if buckets is None else buckets
        self.count = count

    def __len__(self) -> int:
        return self.count

    def get(self, key: bytes) -> bytes | None:
        bucket = self.buckets[bucket_of(key)]
        _, value_start, end = _find(bucket, key)
        return None if value_start < 0 else bucket[value_start:end]

    def put(self, key: bytes, value: bytes) -> None:
        b = bucket_of(key)
        bucket = self.buckets[b]
        start, value_start, end = _find(bucket, key)
        entry = ENTRY.pack(len(key), len(value)) + key + value
        if value_start < 0:
            self.buckets[b] = bucket + entry
            self.count += 1
        else:
            self.buckets[b] = bucket[:start] + entry + bucket[end:]

    def delete(self, key: bytes) -> bool:
        """Whether the key was there."""
        b = bucket_of(key)
        bucket = self.buckets[b]
        start, value_start, end = _find(bucket, key)
        if value_start < 0:
            return False
        self.buckets[b] = bucket[:start] + bucket[end:]
        self.count -= 1
        return True

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """In bucket order, each bucket in its own order: the order the snapshot image holds."""
        for bucket in self.buckets:
            yield from entries(bucket)


def _find(bucket: bytes, key: bytes) -> tuple[int, int, int]:
    """(entry start, value start, entry end) of key in bucket; value start is -1 when it is absent.

    A C-level search finds where the key's bytes occur (it settles every miss, and each new key is one);
    the walk over entry headers only checks that an occurrence is a whole key rather than part of another
    entry."""
    at = bucket.find(key)
    pos, want, header = 0, len(key), ENTRY.size
    while at >= 0:
        while pos + header < at:
            key_len, value_len = ENTRY.unpack_from(bucket, pos)
            pos += header + key_len + value_len
        if pos + header == at:
            key_len, value_len = ENTRY.unpack_from(bucket, pos)
            if key_len == want:
                return pos, at + key_len, at + key_len + value_len
            pos += header + key_len + value_len
        # The next search starts at the next key: occurrences inside a value (a megabyte of them, say)
        # are skipped by the C-level search, not visited one by one here.
        at = bucket.find(key, pos + header)
    return -1, -1, -1


def entries(bucket: bytes) -> Iterator[tuple[bytes, bytes]]:
    """A bucket's entries in order. Raises ValueError when the bucket is malformed."""
    for key_start, value_start, end in _spans(bucket):
        yield bucket[key_start:value_start], bucket[value_start:end]


def keys(bucket: bytes) -> Iterator[bytes]:
    """A bucket's keys in order, without copying its values (checking a loaded image needs only these)."""
    for key_start, value_start, _ in _spans(bucket):
        yield bucket[key_start:value_start]


def _spans(bucket: bytes) -> Iterator[tuple[int, int, int]]:
    """(key start, value start, end) of each entry. Raises ValueError when the bucket is malformed."""
    pos, size = 0, len(bucket)
    while pos < size:
        if pos + ENTRY.size > size:
            raise ValueError("truncated entry header")
        key_len, value_len = ENTRY.unpack_from(bucket, pos)
        key_start = pos + ENTRY.size
        value_start = key_start + key_len
        pos = value_start + value_len
        if pos > size:
            raise ValueError("entry runs past its bucket")
        yield key_start, value_start, pos
