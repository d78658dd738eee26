"""Backup files: a state image plus where it stands in the log, checked before anything uses it.

Layout: b"RAFTDBAK", u32 little-endian header length, a JSON header {"format": 1, "cluster", "index",
"term"}, then the state image (raftd.kv.image, itself checksummed).

As etcd's Maintenance.Snapshot sends it (for `etcdctl snapshot save`, which wants a file of 512-byte
sectors and a SHA-256 of them at its end): the header also gives the image's length ("size"), zeros pad
the image to a multiple of 512 bytes, and the SHA-256 of all that follows. unpack() takes both.

The format alone: raftctl reads it without the node's core or storage (raftd.restore seeds a node).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from raftd.kv.image import ImageError, verify

MAGIC = b"RAFTDBAK"
FORMAT = 1
_LEN = struct.Struct("<I")


class BackupError(Exception):
    """A file that is not a usable raftd backup; the message is for the user, one line."""


@dataclass(frozen=True)
class Backup:
    cluster: str  # the cluster it was taken from (informational: restoring seeds a new cluster)
    index: int  # the last log entry the image holds, and its term
    term: int
    image: bytes


SECTOR = 512  # etcdctl snapshot save's check: a file of whole sectors plus a SHA-256
_SHA = hashlib.sha256().digest_size


def pack(cluster: str, index: int, term: int, image: bytes) -> bytes:
    header = json.dumps({"format": FORMAT, "cluster": cluster, "index": index, "term": term}).encode()
    return MAGIC + _LEN.pack(len(header)) + header + image


def pack_for_etcd(backup: Backup) -> bytes:
    """The backup as etcd's Snapshot stream carries it (module docstring)."""
    fields = {"format": FORMAT, "cluster": backup.cluster, "index": backup.index, "term": backup.term}
    header = json.dumps({**fields, "size": len(backup.image)}).encode()
    body = MAGIC + _LEN.pack(len(header)) + header + backup.image
    body += bytes(-len(body) % SECTOR)
    return body + hashlib.sha256(body).digest()


def unpack(raw: bytes, source: str = "backup") -> Backup:
    if len(raw) % SECTOR == _SHA and raw.startswith(MAGIC):
        if hashlib.sha256(raw[:-_SHA]).digest() != raw[-_SHA:]:
            raise BackupError(f"{source}: the file's SHA-256 does not match: it is damaged")
        raw = raw[:-_SHA]  # etcdctl snapshot save's file
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + _LEN.size:
        raise BackupError(f"{source}: not a raftd backup file")
    (size,) = _LEN.unpack_from(raw, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    try:
        header = json.loads(raw[start : start + size])
        fmt, cluster, index, term = header["format"], header["cluster"], header["index"], header["term"]
    except (ValueError, KeyError, TypeError) as e:
        raise BackupError(f"{source}: damaged backup header ({e})") from None
    if fmt != FORMAT:
        raise BackupError(f"{source}: backup format {fmt} is not one this raftd reads ({FORMAT})")
    if not (isinstance(index, int) and isinstance(term, int) and index >= 0 and term >= 0):
        raise BackupError(f"{source}: damaged backup header (index {index!r}, term {term!r})")
    image = raw[start + size :]
    if "size" in header:
        length = header["size"]
        if not isinstance(length, int) or not 0 <= length <= len(image) or any(image[length:]):
            raise BackupError(f"{source}: damaged backup header (size {length!r})")
        image = image[:length]
    try:
        verify(image)
    except ImageError as e:
        raise BackupError(f"{source}: {e}") from None
    return Backup(str(cluster), index, term, image)
