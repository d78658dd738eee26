"""The state machine's snapshot image: a deterministic, checksummed, fast-to-load byte format.

Layout (all integers little-endian):
    b"RAFTDKV2"  u32 bucket_bits  u32 n_keys  u32 n_sessions  u32 n_used
    u32 bucket_index[n_used]  u32 bucket_len[n_used]  buckets...
        (the packed map's non-empty buckets as they are, in ascending order; see table.py)
    per session: u16 len(client_id) client_id u64 seq u64 index u8 existed   (in LRU order)
    u32 crc32 of everything before it

The buckets are a function of the log (see table.py), so replicas at the same index encode to the same
bytes, and encoding is a copy of memory rather than a walk over a million keys. Loading checks every entry
(its bucket, no key twice, the count): a checksum catches damage, not a writer's bug.

b"RAFTDKV3" is the same with a u32 session limit after the header, written only when the limit is not the
default (an Op.SESSION_LIMIT entry changed it), so that a node of an earlier release, which reads only
RAFTDKV2, can take a snapshot from a newer one for as long as that limit is unchanged.

b"RAFTDKV4" is RAFTDKV3 (its session limit always present) with the membership record (raftd.kv.members)
after the sessions, written only when the cluster has recorded one:
    u32 n_members u64 next_id, per member: u64 id u8 learner u16 len(address) address
    u16 len(incarnation) incarnation
(in ascending id order; next_id: the lowest id never given to a member).

b"RAFTDKV5" is RAFTDKV4 with the multi-version keyspace of the etcd API (raftd.kv.mvcc) after the
sessions: u8 1 when the membership record follows (as in RAFTDKV4), 0 when there is none, then the
keyspace's rows (mvcc.encode_image). It is written only once the keyspace has been written to, so that
until then nodes of the previous release read the images of this one.

b"RAFTDKV6" is RAFTDKV5 once raftd.v1's keys have moved into the keyspace (an Op.MERGE entry applied):
the packed map is empty (no bucket used) and the keyspace is always there, empty or not. It is written
only after every member speaks the protocol that applies Op.MERGE.

Images of earlier versions (b"RAFTDKV1": u32 n_keys u32 n_sessions, u32 key_len[n] u32 value_len[n], keys,
values, in insertion order, then the same sessions and checksum) stay readable: disks and backups hold them.
"""

from __future__ import annotations

import array
import dataclasses
import io
import itertools
import struct
import sys
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from .members import Member
from .mvcc import Copy
from .mvcc import decode_image as decode_keyspace
from .mvcc import image_parts as keyspace_parts
from .table import BUCKET_BITS, N_BUCKETS, PackedMap, bucket_of
from .table import keys as bucket_keys

MAGIC = b"RAFTDKV2"
MAGIC_V1 = b"RAFTDKV1"
MAGIC_V3 = b"RAFTDKV3"
MAGIC_V4 = b"RAFTDKV4"
MAGIC_V5 = b"RAFTDKV5"
MAGIC_V6 = b"RAFTDKV6"
DEFAULT_SESSION_LIMIT = 10_000  # raftd.kv.store.MAX_SESSIONS: an image with another limit is a RAFTDKV3
_LIMIT = struct.Struct("<I")
_HEADER = struct.Struct("<IIII")
_COUNTS_V1 = struct.Struct("<II")
_SESSION = struct.Struct("<QQB")
_MEMBER = struct.Struct("<QB")
_ID = struct.Struct("<Q")
_CRC = struct.Struct("<I")
SLICE = 20_000  # keys per pass when reading an earlier version's image: bounds the offset lists
BUCKET_SLICE = 4_096  # buckets per join when encoding: a few MB at most


class ImageError(ValueError):
    """Bytes that are not a valid state image (corrupt, truncated or foreign)."""


@dataclass(frozen=True)
class Image:
    """The state at one applied index, safe to encode off the event loop: the bucket list is a copy and
    the buckets themselves never change (a write replaces its bucket)."""

    buckets: list[bytes]
    count: int
    sessions: OrderedDict[bytes, tuple[int, int, bool]]  # client -> (seq, index, existed), LRU order
    session_limit: int = DEFAULT_SESSION_LIMIT
    members: dict[int, Member] = dataclasses.field(default_factory=dict)
    next_member_id: int = 0  # the lowest id never given to a member (raftd.kv.members.next_id)
    # The keyspace, as mvcc.serialize() copied it (a view of its file on a node); b"": never written to.
    # A decoded image holds serialize()'s bytes.
    keyspace: Copy = b""
    # raftd.v1's keys are in the keyspace (Op.MERGE applied), and buckets are all empty.
    merged: bool = False

    @classmethod
    def of(
        cls,
        data: Mapping[bytes, bytes],
        sessions: OrderedDict[bytes, tuple[int, int, bool]] | None = None,
    ) -> Image:
        """The image of a map, its keys put in the map's order (for tools and tests)."""
        m = PackedMap()
        for key, value in data.items():
            m.put(key, value)
        return cls(m.buckets, m.count, OrderedDict() if sessions is None else sessions)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return PackedMap(self.buckets, self.count).items()


def _u32(values: list[int]) -> bytes:
    arr = array.array("I", values)
    if arr.itemsize != 4:
        raise RuntimeError("this platform has no 4-byte unsigned int array type")
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def _read_u32(raw: bytes | memoryview, count: int) -> array.array[int]:
    if len(raw) != 4 * count:
        raise ImageError("truncated length table")
    arr = array.array("I")
    arr.frombytes(raw)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr


def encode(image: Image) -> bytes:
    """The image as bytes (encode_to an in-memory file)."""
    out = io.BytesIO()
    encode_to(image, out)
    return out.getvalue()  # no copy: BytesIO hands over its buffer


def encode_to(image: Image, out: BinaryIO) -> int:
    """Write the image to out; return its size.

    Meant for a worker thread: it joins buckets in slices so that no single C call holds the GIL for long
    (the event loop, with its heartbeats, must keep running meanwhile). Each slice goes straight into out,
    so written to a file the image is never held whole in memory (it is about 40 MB at a million keys).
    """
    buckets = image.buckets
    if len(buckets) != N_BUCKETS:
        raise ValueError(f"{len(buckets)} buckets, not {N_BUCKETS}")
    used = list(itertools.compress(range(N_BUCKETS), buckets))  # the non-empty ones
    crc = size = 0

    def put(part: bytes) -> None:
        nonlocal crc, size
        crc = zlib.crc32(part, crc)
        size += out.write(part)

    if image.merged and used:
        raise ValueError("a merged image with keys outside its keyspace")
    header = _HEADER.pack(BUCKET_BITS, image.count, len(image.sessions), len(used))
    with_keyspace = bool(image.keyspace) or image.merged
    if image.merged:
        put(MAGIC_V6 + header + _LIMIT.pack(image.session_limit))
    elif image.keyspace:
        put(MAGIC_V5 + header + _LIMIT.pack(image.session_limit))
    elif image.members:
        put(MAGIC_V4 + header + _LIMIT.pack(image.session_limit))
    elif image.session_limit == DEFAULT_SESSION_LIMIT:
        put(MAGIC + header)
    else:
        put(MAGIC_V3 + header + _LIMIT.pack(image.session_limit))
    put(_u32(used))
    put(_u32([len(buckets[b]) for b in used]))
    for start in range(0, len(used), BUCKET_SLICE):
        put(b"".join([buckets[b] for b in used[start : start + BUCKET_SLICE]]))
    put(_encode_sessions(image.sessions))
    if with_keyspace:
        put(b"\x01" if image.members else b"\x00")
    if image.members:
        put(_encode_members(image.members, image.next_member_id))
    if with_keyspace:
        for part in keyspace_parts(image.keyspace):
            put(part)
    return size + out.write(_CRC.pack(crc))


def _encode_sessions(sessions: OrderedDict[bytes, tuple[int, int, bool]]) -> bytes:
    return b"".join(
        struct.pack("<H", len(client)) + client + _SESSION.pack(seq, index, existed)
        for client, (seq, index, existed) in sessions.items()
    )


def _encode_members(members: dict[int, Member], next_member_id: int) -> bytes:
    parts = [_LIMIT.pack(len(members)), _ID.pack(next_member_id)]
    for node, m in sorted(members.items()):
        address, incarnation = m.address.encode(), m.incarnation.encode()
        parts.append(_MEMBER.pack(node, m.learner) + struct.pack("<H", len(address)) + address)
        parts.append(struct.pack("<H", len(incarnation)) + incarnation)
    return b"".join(parts)


def verify(raw: bytes) -> None:
    """Check the magic and the checksum without decoding: cheap enough to run before accepting an image."""
    known = (MAGIC, MAGIC_V1, MAGIC_V3, MAGIC_V4, MAGIC_V5, MAGIC_V6)
    if len(raw) < len(MAGIC) + _COUNTS_V1.size + _CRC.size or not raw.startswith(known):
        raise ImageError("not a raftd state image")
    if zlib.crc32(memoryview(raw)[: -_CRC.size]) != _CRC.unpack(raw[-_CRC.size :])[0]:
        raise ImageError("checksum mismatch: the image is corrupt")


def decode(raw: bytes) -> Image:
    """Meant for a worker thread, like encode: a million keys take a second or two to check."""
    verify(raw)
    end = len(raw) - _CRC.size
    try:
        if raw.startswith(MAGIC_V1):
            return _decode_v1(raw, end)
        return _decode_v2(raw, end)
    except (struct.error, IndexError) as e:
        raise ImageError(f"malformed image: {e}") from e


def _decode_v2(raw: bytes, end: int) -> Image:
    """A RAFTDKV2, RAFTDKV3, RAFTDKV4, RAFTDKV5 or RAFTDKV6 image."""
    view = memoryview(raw)[:end]  # in place: a copy of the body would cost the image's size again
    pos = len(MAGIC)
    bits, count, n_sessions, n_used = _HEADER.unpack_from(view, pos)
    pos += _HEADER.size
    session_limit = DEFAULT_SESSION_LIMIT
    merged = raw.startswith(MAGIC_V6)
    with_keyspace = merged or raw.startswith(MAGIC_V5)
    if raw.startswith((MAGIC_V3, MAGIC_V4, MAGIC_V5, MAGIC_V6)):
        (session_limit,) = _LIMIT.unpack_from(view, pos)
        pos += _LIMIT.size
        if session_limit == 0:
            raise ImageError("a session limit of 0")
    if bits != BUCKET_BITS:
        raise ImageError(f"an image of 2**{bits} buckets; this version uses 2**{BUCKET_BITS}")
    if n_used > N_BUCKETS or (merged and n_used):
        raise ImageError(f"{n_used} buckets used of {0 if merged else N_BUCKETS}")
    used = _read_u32(view[pos : pos + 4 * n_used], n_used)
    pos += 4 * n_used
    lengths = _read_u32(view[pos : pos + 4 * n_used], n_used)
    pos += 4 * n_used
    if any(a >= b for a, b in itertools.pairwise(used)) or (n_used and used[-1] >= N_BUCKETS):
        raise ImageError("bucket numbers out of order or range")
    bounds = list(itertools.accumulate(lengths, initial=pos))
    if bounds[-1] > end:
        raise ImageError("truncated buckets")
    buckets = [b""] * N_BUCKETS
    seen = 0
    for b, (start, stop) in zip(used, itertools.pairwise(bounds), strict=True):
        buckets[b] = bucket = raw[start:stop]
        seen += _check_bucket(b, bucket)
    if seen != count:
        raise ImageError(f"{seen} keys where the header says {count}")
    sessions, pos = _decode_sessions(raw, view, bounds[-1], end, n_sessions)
    if len(sessions) > session_limit:
        raise ImageError(f"{len(sessions)} sessions where the limit is {session_limit}")
    members: dict[int, Member] = {}
    next_member_id = 0
    keyspace = b""
    with_members = raw.startswith(MAGIC_V4)
    if with_keyspace:
        flag = view[pos]
        pos += 1
        if flag > 1:
            raise ImageError("a malformed membership flag")
        with_members = bool(flag)
    if with_members:
        members, next_member_id, pos = _decode_members(raw, view, pos)
    if with_keyspace:
        try:
            keyspace, pos = decode_keyspace(view, pos)
        except ValueError as e:
            raise ImageError(f"malformed keyspace: {e}") from None
    if pos != end:
        raise ImageError(f"{end - pos} unexpected trailing bytes")
    return Image(buckets, count, sessions, session_limit, members, next_member_id, keyspace, merged)


def _decode_members(raw: bytes, view: memoryview, pos: int) -> tuple[dict[int, Member], int, int]:
    (n,) = _LIMIT.unpack_from(view, pos)
    pos += _LIMIT.size
    (next_member_id,) = _ID.unpack_from(view, pos)
    pos += _ID.size
    members: dict[int, Member] = {}

    def text() -> str:
        nonlocal pos
        (size,) = struct.unpack_from("<H", view, pos)
        pos += 2
        start, pos = pos, pos + size
        if pos > len(view):
            raise ImageError("truncated member")
        try:
            return raw[start:pos].decode()
        except UnicodeDecodeError as e:
            raise ImageError(f"malformed member: {e}") from e

    for _ in range(n):
        node, learner = _MEMBER.unpack_from(view, pos)
        pos += _MEMBER.size
        address = text()
        if learner > 1 or (members and node <= next(reversed(members))):  # ascending, each id once
            raise ImageError("malformed membership")
        members[node] = Member(address, bool(learner), text())
    if not members:
        raise ImageError("an empty membership record")
    if next_member_id <= next(reversed(members)):
        raise ImageError("a membership record that would give a member's id again")
    return members, next_member_id, pos


def _check_bucket(b: int, bucket: bytes) -> int:
    """How many entries bucket b holds, after checking each is well formed, in its key's bucket, and there
    once: a checksum catches damage, not a writer's bug."""
    try:
        keys = list(bucket_keys(bucket))
    except ValueError as e:
        raise ImageError(f"bucket {b}: {e}") from e
    if not keys:
        raise ImageError(f"bucket {b} is listed but empty")
    if any(bucket_of(key) != b for key in keys):
        raise ImageError(f"bucket {b} holds a key that belongs elsewhere")
    if len(set(keys)) != len(keys):
        raise ImageError("duplicate keys")
    return len(keys)


def _decode_sessions(
    raw: bytes, view: memoryview, pos: int, end: int, n_sessions: int
) -> tuple[OrderedDict[bytes, tuple[int, int, bool]], int]:
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
        if client in sessions or existed > 1:
            raise ImageError("malformed sessions")
        sessions[client] = (seq, index, bool(existed))
    return sessions, pos


def _decode_v1(raw: bytes, end: int) -> Image:
    """An earlier version's image, put into a packed map in its order."""
    view = memoryview(raw)[:end]
    pos = len(MAGIC_V1)
    n, n_sessions = _COUNTS_V1.unpack_from(view, pos)
    pos += _COUNTS_V1.size
    key_lens = _read_u32(view[pos : pos + 4 * n], n)
    pos += 4 * n
    value_lens = _read_u32(view[pos : pos + 4 * n], n)
    pos += 4 * n
    key_start = pos
    value_start = key_start + sum(key_lens)
    pos = value_start + sum(value_lens)
    if pos > end:
        raise ImageError("truncated key/value data")
    m = PackedMap()
    for start in range(0, n, SLICE):
        key_ends = list(itertools.accumulate(key_lens[start : start + SLICE], initial=key_start))
        value_ends = list(itertools.accumulate(value_lens[start : start + SLICE], initial=value_start))
        key_start, value_start = key_ends[-1], value_ends[-1]
        pairs = zip(itertools.pairwise(key_ends), itertools.pairwise(value_ends), strict=True)
        for (ka, kb), (va, vb) in pairs:
            m.put(raw[ka:kb], raw[va:vb])
    if len(m) != n:
        raise ImageError("duplicate keys")
    sessions, pos = _decode_sessions(raw, view, pos, end, n_sessions)
    if pos != end:
        raise ImageError(f"{end - pos} unexpected trailing bytes")
    return Image(m.buckets, m.count, sessions)
