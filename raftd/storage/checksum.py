"""What lets a node tell damaged or lost durable state from good: a checksum on every stored row, and a
separate record of the term and vote.

Checksums are zlib.crc32 (etcd's WAL keeps a CRC per record too) over a row's identity and content, so a
flipped bit in a value, an index or a term is caught when the row is read, and the node stops instead of
serving it.

The vote record (raft.vote, beside raft.db) is written, fsynced, after every save that changes the term or
the vote, which happens at elections only, so writes pay nothing for it. A database that lost writes it
had made durable (its -wal file deleted, an older copy put back) holds an older term, or another vote in
the same term, than the record: the node then refuses to start, where it would otherwise be free to vote
a second time in a term. It cannot see a lost log tail within one term, nor a record lost along with the
database (a missing record is written anew from the database).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from raftd.core.types import HardState

from .base import StorageError

VOTE_FILE = "raft.vote"
# What a damaged file means for the operator: the node is replaced, under a new id (docs/operations.md,
# "Changing the membership"); an empty directory under the old id is refused once the cluster recorded it.
RECOVER = (
    "replace this node: raftctl member remove ID, then raftctl member add HOST:PORT and start the new "
    "node with --join and an empty data directory"
)

_ENTRY = struct.Struct(">QQ")
_HARD = struct.Struct(">QQQ")


def entry_crc(index: int, term: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(_ENTRY.pack(index, term)))


def hard_state_crc(term: int, vote: int, commit: int) -> int:
    return zlib.crc32(_HARD.pack(term, vote, commit))


def snapshot_crc(index: int, term: int) -> int:
    """The snapshot's row (the image file has a checksum of its own: raftd.kv.image)."""
    return zlib.crc32(b"snapshot" + _ENTRY.pack(index, term))


class VoteRecord:
    """raft.vote: "TERM VOTE CRC", replaced atomically (a temporary file, fsync, rename, fsync the
    directory) whenever a save changes the term or the vote."""

    def __init__(self, data_dir: Path, stored: tuple[int, int, int]) -> None:
        self.path = data_dir / VOTE_FILE
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            self.term, self.vote = stored[0], stored[1]
            self._write()
            return
        except OSError as e:
            raise StorageError(f"{self.path}: cannot read: {e.strerror or e}") from e
        try:
            term, vote, crc = (int(x) for x in text.split())
        except ValueError:
            raise StorageError(f"{self.path}: damaged (not 'TERM VOTE CRC'); {RECOVER}") from None
        if crc != hard_state_crc(term, vote, 0):
            raise StorageError(f"{self.path}: damaged (its checksum does not match); {RECOVER}")
        self.term, self.vote = term, vote

    def check(self, hs: HardState) -> None:
        """Refuse a database whose term and vote are older than those it had made durable."""
        if hs.term > self.term or (hs.term == self.term and (self.vote == 0 or hs.vote == self.vote)):
            return
        db = self.path.parent / "raft.db"
        raise StorageError(
            f"{db}: went back in time: it holds term {hs.term} (vote {hs.vote}), but {self.path.name} "
            f"recorded term {self.term} (vote {self.vote}) after an earlier save; the database lost writes "
            f"it had made durable (a deleted -wal file, an old copy?), and this node could vote twice in a "
            f"term; {RECOVER}"
        )

    def record(self, hs: HardState) -> None:
        if (hs.term, hs.vote) == (self.term, self.vote):
            return
        self.term, self.vote = hs.term, hs.vote
        self._write()

    def _write(self) -> None:
        partial = self.path.with_suffix(".partial")
        try:
            with open(partial, "w") as f:
                f.write(f"{self.term} {self.vote} {hard_state_crc(self.term, self.vote, 0)}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, self.path)
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(f"{self.path}: cannot write: {e.strerror or e}") from e
