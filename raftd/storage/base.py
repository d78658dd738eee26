"""What every storage backend shares: the loaded state, the error type, and the rules a save must keep.

The rules live here, not in each backend, so the in-memory twin refuses exactly what sqlite refuses and a
test written against one holds for the other.
"""

from __future__ import annotations

import json
import secrets
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from raftd.core.types import Entry, HardState, Snapshot, SnapshotMeta


class StorageError(Exception):
    """The stored state cannot be used or written; str() is one line naming the database."""


@dataclass(frozen=True)
class PersistedState:
    """Everything a node restarts from; RawNode takes these three as they are."""

    hard_state: HardState
    snapshot: Snapshot | None  # None until the first snapshot is saved
    entries: list[Entry]  # contiguous, starting right after the snapshot's index (or at 1)


@dataclass(frozen=True)
class DirRecord:
    """What a data directory knows of its place in the cluster, beside the log (raftd.node):

    incarnation: drawn when the directory is made (or first opened by a release that has them), so a
    wiped node that comes back under its old id is told apart from the member that held it;
    voters: the cluster's bootstrap voters, the membership the log starts from (None until recorded);
    removed: this node was removed from the cluster, and stays out;
    joined: how a node that joined a running cluster found it (raftd.join), for its restarts."""

    incarnation: str = field(default_factory=lambda: secrets.token_hex(8))
    voters: tuple[int, ...] | None = None
    removed: bool = False
    joined: dict[str, object] | None = None

    def dump(self) -> str:
        """The stored form: a crc32 of the JSON before it, so damage is caught on reading."""
        doc = json.dumps(
            {
                "incarnation": self.incarnation,
                "voters": self.voters,
                "removed": self.removed,
                "joined": self.joined,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return f"{zlib.crc32(doc.encode()):08x}:{doc}"

    @classmethod
    def load(cls, text: str) -> DirRecord:
        """ValueError when damaged."""
        crc, _, doc = text.partition(":")
        if not crc or f"{zlib.crc32(doc.encode()):08x}" != crc:
            raise ValueError("checksum mismatch")
        d = json.loads(doc)
        voters = d["voters"]
        if not isinstance(d["incarnation"], str) or not isinstance(d["removed"], bool):
            raise ValueError("malformed")
        if voters is not None and not all(isinstance(v, int) for v in voters):
            raise ValueError("malformed voters")
        joined = d["joined"]
        if joined is not None and not isinstance(joined, dict):
            raise ValueError("malformed join record")
        return cls(d["incarnation"], tuple(voters) if voters is not None else None, d["removed"], joined)


class Storage(Protocol):
    cluster_name: str  # the name the store was created with
    cluster_id: str  # raftd.identity's id, "" until recorded
    record: DirRecord  # this directory's place in the cluster

    def save_record(self, record: DirRecord) -> None:
        """Durable when this returns."""

    def load(self) -> PersistedState: ...

    def record_cluster_id(self, cluster_id: str) -> None: ...

    def save(
        self,
        hard_state: HardState | None,
        entries: list[Entry],
        snapshot: Snapshot | SnapshotMeta | None = None,
    ) -> None:
        """snapshot: an image with its data, or the meta of one written ahead by stage_image."""

    def stage_image(self, meta: SnapshotMeta, write: Callable[[BinaryIO], int]) -> int:
        """Have write() put the image of meta where a later save(snapshot=meta) adopts it; its size.

        The image goes to its destination as it is encoded, so it is never held whole in memory.
        """

    def load_snapshot(self) -> Snapshot | None: ...

    def reclaim(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LogShape:
    """The few facts about the stored log that validate a save without reading the log."""

    snapshot_index: int = 0
    snapshot_term: int = 0
    last_index: int = 0  # snapshot_index when no entries follow it
    last_term: int = 0
    commit: int = 0


def plan_save(
    shape: LogShape,
    hard_state: HardState | None,
    entries: Sequence[Entry],
    meta: SnapshotMeta | None,
    stored_term: Callable[[int], int | None],
) -> tuple[LogShape, bool]:
    """Check a save against the stored log; return the log's shape after it and whether the stored entries
    after the snapshot survive it.

    A snapshot discards every stored entry up to its index. The entries after it survive only when the log
    holds the snapshot's last entry (local compaction); otherwise (a snapshot installed from the leader)
    they do not follow it and go too, so the log restarts empty after the snapshot. stored_term(i) gives
    the term of a stored entry with shape.snapshot_index < i <= shape.last_index.

    Breaking a rule is a bug in the caller, so it raises ValueError and nothing is written.
    """

    def term_at(index: int) -> int | None:
        if index == shape.snapshot_index:
            return shape.snapshot_term
        if index == shape.last_index:
            return shape.last_term
        return stored_term(index) if shape.snapshot_index < index < shape.last_index else None

    snap_index, snap_term = shape.snapshot_index, shape.snapshot_term
    last_index, last_term = shape.last_index, shape.last_term
    keep_tail = True
    if meta is not None:
        if meta.index < snap_index:
            raise ValueError(f"snapshot at {meta.index} is older than the stored snapshot at {snap_index}")
        keep_tail = term_at(meta.index) == meta.term
        snap_index, snap_term = meta.index, meta.term
        if not keep_tail:
            last_index, last_term = meta.index, meta.term
    if entries:
        first = entries[0].index
        if first <= snap_index:
            raise ValueError(f"entry {first} is already covered by the snapshot at {snap_index}")
        if first > last_index + 1:
            raise ValueError(f"entries start at {first}, leaving a gap after the last index {last_index}")
        prev_term = snap_term if first - 1 == snap_index else term_at(first - 1)
        assert prev_term is not None  # snap_index < first - 1 <= last_index: a stored entry
        problem = _entries_problem(entries, first, prev_term)
        if problem:
            raise ValueError(problem)
        last_index, last_term = entries[-1].index, entries[-1].term
    commit = hard_state.commit if hard_state is not None else shape.commit
    if commit > last_index:
        raise ValueError(f"commit index {commit} is beyond the last log index {last_index}")
    return LogShape(snap_index, snap_term, last_index, last_term, commit), keep_tail


def state_problem(state: PersistedState) -> str | None:
    """What breaks the invariants save() keeps, or None: for data read back from disk."""
    meta = state.snapshot.meta if state.snapshot is not None else None
    snap_index, snap_term = (meta.index, meta.term) if meta else (0, 0)
    problem = _entries_problem(state.entries, snap_index + 1, snap_term)
    if problem:
        return problem
    last_index = state.entries[-1].index if state.entries else snap_index
    if state.hard_state.commit > last_index:
        return f"commit index {state.hard_state.commit} is beyond the last log index {last_index}"
    return None


def shape_of(state: PersistedState) -> LogShape:
    meta = state.snapshot.meta if state.snapshot is not None else None
    snap_index, snap_term = (meta.index, meta.term) if meta else (0, 0)
    last = state.entries[-1] if state.entries else None
    return LogShape(
        snap_index,
        snap_term,
        last.index if last else snap_index,
        last.term if last else snap_term,
        state.hard_state.commit,
    )


def _entries_problem(entries: Sequence[Entry], first: int, prev_term: int) -> str | None:
    """Entries must be numbered first, first+1, ... with terms that never go down (Raft's log order)."""
    expect, term = first, prev_term
    for e in entries:
        if e.index != expect:
            return f"entries are not contiguous: expected index {expect}, found {e.index}"
        if e.term < term:
            return f"entry {e.index} has term {e.term}, below the term {term} before it"
        expect, term = e.index + 1, e.term
    return None
