"""The state machine's snapshot image: a deterministic, checksummed, fast-to-load byte format.

Layout (all integers little-endian):
    b"RAFTDKV1"  u32 n_keys  u32 n_sessions
    u32 key_len[n_keys]  u32 value_len[n_keys]  keys...  values...      (in the map's insertion order)
    per session: u16 len(client_id) client_id u64 seq u64 index u8 existed   (in LRU order)
    u32 crc32 of everything before it

Deterministic without sorting: the insertion order of the map is a function of the log (every replica
applies the same commands in the same order, and a restore keeps the image's order), so replicas at the same
index encode to the same bytes. Not sorting matters: sorting a million keys holds the GIL for ~100 ms, long
enough to delay the leader's heartbeats into an election. Length arrays let a million keys load with a few
C-level passes instead of a Python loop per key.
"""

from __future__ import annotations

import array
import io
import itertools
import struct
import sys
import zlib
from collections import OrderedDict
from dataclasses import dataclass

MAGIC = b"RAFTDKV1"
_COUNTS = struct.Struct("<II")
_SESSION = struct.Struct("<QQB")
_CRC = struct.Struct("<I")
SLICE = 20_000  # items per C-level pass: each holds the GIL for a few ms at most


class ImageError(ValueError):
    """Bytes that are not a valid state image (corrupt, truncated or foreign)."""


@dataclass(frozen=True)
class Image:
    """The state at one applied index, safe to encode off the event loop.

    Two flat lists in the map's order rather than a copy of the map: taking them is as quick on the loop,
    and they are what encoding walks anyway (16 MB at a million keys, where a map copy is 40 MB more).
    """

    keys: list[bytes]
    values: list[bytes]  # values[i] belongs to keys[i]
    sessions: OrderedDict[bytes, tuple[int, int, bool]]  # client -> (seq, index, existed), LRU order

    @classmethod
    def of(
        cls, data: dict[bytes, bytes], sessions: OrderedDict[bytes, tuple[int, int, bool]] | None = None
    ) -> Image:
        """The image of a map and its sessions; the map must not change during the call (or the lists
        would disagree)."""
        return cls(list(data), list(data.values()), OrderedDict() if sessions is None else sessions)


def _u32(values: list[int]) -> bytes:
    arr = array.array("I", values)
    if arr.itemsize != 4:
        raise RuntimeError("this platform has no 4-byte unsigned int array type")
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def _read_u32(raw: bytes | memoryview, count: int) -> array.array[int]:
    arr = array.array("I")
    arr.frombytes(raw)
    if sys.byteorder != "little":
        arr.byteswap()
    if len(arr) != count:
        raise ImageError("truncated length table")
    return arr


def encode(image: Image) -> bytes:
    """Meant for a worker thread: it works in slices so that no single C call holds the GIL for long
    (the event loop, with its heartbeats, must keep running meanwhile). Each part goes straight into the
    output, so the image is held once, not once in parts and again joined."""
    keys, values = image.keys, image.values
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys but {len(values)} values")
    out = io.BytesIO()
    crc = 0

    def put(part: bytes) -> None:
        nonlocal crc
        crc = zlib.crc32(part, crc)
        out.write(part)

    slices = [slice(i, i + SLICE) for i in range(0, len(keys), SLICE)]
    put(MAGIC + _COUNTS.pack(len(keys), len(image.sessions)))
    for s in slices:
        put(_u32([len(k) for k in keys[s]]))
    for s in slices:
        put(_u32([len(v) for v in values[s]]))
    for s in slices:
        put(b"".join(keys[s]))
    for s in slices:
        put(b"".join(values[s]))
    for client, (seq, index, existed) in image.sessions.items():
        put(struct.pack("<H", len(client)) + client + _SESSION.pack(seq, index, existed))
    out.write(_CRC.pack(crc))
    return out.getvalue()  # no copy: BytesIO hands over its buffer


def verify(raw: bytes) -> None:
    """Check the magic and the checksum without decoding: cheap enough to run before accepting an image."""
    if len(raw) < len(MAGIC) + _COUNTS.size + _CRC.size or not raw.startswith(MAGIC):
        raise ImageError("not a raftd state image")
    if zlib.crc32(memoryview(raw)[: -_CRC.size]) != _CRC.unpack(raw[-_CRC.size :])[0]:
        raise ImageError("checksum mismatch: the image is corrupt")


def decode(raw: bytes) -> Image:
    verify(raw)
    try:
        return _decode_body(raw, len(raw) - _CRC.size)
    except (struct.error, IndexError) as e:
        raise ImageError(f"malformed image: {e}") from e


def _decode_body(raw: bytes, end: int) -> Image:
    """Reads raw up to end (the checksum) in place: a copy of the body would cost the image's size again."""
    view = memoryview(raw)[:end]
    pos = len(MAGIC)
    n, n_sessions = _COUNTS.unpack_from(view, pos)
    pos += _COUNTS.size
    key_lens = _read_u32(view[pos : pos + 4 * n], n)
    pos += 4 * n
    value_lens = _read_u32(view[pos : pos + 4 * n], n)
    pos += 4 * n
    key_start = pos
    value_start = key_start + sum(key_lens)
    pos = value_start + sum(value_lens)
    if pos > end:
        raise ImageError("truncated key/value data")
    keys: list[bytes] = []
    values: list[bytes] = []
    # In slices, like encode: no single C call may hold the GIL for long on a node that is serving.
    for start in range(0, n, SLICE):
        key_ends = list(itertools.accumulate(key_lens[start : start + SLICE], initial=key_start))
        value_ends = list(itertools.accumulate(value_lens[start : start + SLICE], initial=value_start))
        key_start, value_start = key_ends[-1], value_ends[-1]
        keys += [raw[a:b] for a, b in itertools.pairwise(key_ends)]
        values += [raw[a:b] for a, b in itertools.pairwise(value_ends)]
    sessions: OrderedDict[bytes, tuple[int, int, bool]] = OrderedDict()
    for _ in range(n_sessions):
        (size,) = struct.unpack_from("<H", view, pos)
        pos += 2
        if pos + size > end:
            raise ImageError("truncated session")
        client = raw[pos : pos + size]
        pos += size
        seq, index, existed = _SESSION.unpack_from(view, pos)
        pos += _SESSION.size
        sessions[client] = (seq, index, bool(existed))
    if pos != end:
        raise ImageError(f"{end - pos} unexpected trailing bytes")
    return Image(keys, values, sessions)
