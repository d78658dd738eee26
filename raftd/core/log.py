"""The in-memory Raft log: entries after the last snapshot, plus the commit/apply/stable cursors.

The whole uncompacted tail lives in memory. That is a deliberate simplification over etcd's Storage
interface: the log is compacted every few thousand entries, so the tail stays small, and the core never has
to reach into storage.
"""

from __future__ import annotations

from .types import ConfState, Entry, Snapshot, SnapshotMeta


class LogError(Exception):
    """A caller broke the log's contract (a bug in the core or its owner, never a network condition)."""


class RaftLog:
    def __init__(self, snapshot: SnapshotMeta | None = None, entries: list[Entry] | None = None) -> None:
        self.snapshot_meta = snapshot or SnapshotMeta()
        # Invariant: entries[k].index == snapshot_meta.index + 1 + k, and terms never decrease.
        self.entries: list[Entry] = list(entries or [])
        for k, e in enumerate(self.entries):
            if e.index != self.snapshot_meta.index + 1 + k:
                raise LogError(f"log entries are not contiguous at position {k}: index {e.index}")
        # Invariant: snapshot_meta.index <= applied <= committed <= last_index().
        self.committed = self.snapshot_meta.index
        self.applied = self.snapshot_meta.index
        # Invariant: every entry up to stabled (and the snapshot) is on disk; entries after it are not.
        self.stabled = self.last_index()
        self.pending_snapshot: Snapshot | None = None

    # -- reading -----------------------------------------------------------------------------------
    def first_index(self) -> int:
        return self.snapshot_meta.index + 1

    def last_index(self) -> int:
        return self.snapshot_meta.index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_meta.term

    def term(self, index: int) -> int | None:
        """Term of the entry at index, or None when it is compacted away or beyond the end."""
        if index == self.snapshot_meta.index:
            return self.snapshot_meta.term
        if index < self.snapshot_meta.index or index > self.last_index():
            return None
        return self.entries[index - self.snapshot_meta.index - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot_meta.index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries lo..hi-1; with max_bytes, the longest prefix under it (but always at least one)."""
        if lo < self.first_index() or hi > self.last_index() + 1 or lo > hi:
            raise LogError(f"slice [{lo}, {hi}) out of range [{self.first_index()}, {self.last_index()}]")
        base = self.snapshot_meta.index + 1
        out = self.entries[lo - base : hi - base]
        if max_bytes is None:
            return out
        size = 0
        for k, e in enumerate(out):
            size += len(e.data)
            if size > max_bytes and k > 0:
                return out[:k]
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Section 5.4.1: a candidate's log is at least as up-to-date as ours."""
        return last_term > self.last_term() or (
            last_term == self.last_term() and last_index >= self.last_index()
        )

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry that is new or conflicts with ours, or 0 if all are present."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest index <= index whose term is <= term, with that term: the fast-backtracking probe point."""
        index = min(index, self.last_index())
        while index > self.snapshot_meta.index:
            t = self.term(index)
            if t is not None and t <= term:
                return index, t
            index -= 1
        return self.snapshot_meta.index, self.snapshot_meta.term

    def unstable_entries(self) -> list[Entry]:
        if self.stabled >= self.last_index():
            return []
        return self.slice(max(self.stabled + 1, self.first_index()), self.last_index() + 1)

    def next_committed_entries(self) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        if self.committed < lo:
            return []
        return self.slice(lo, self.committed + 1)

    # -- writing -----------------------------------------------------------------------------------
    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> int:
        """Append entries, truncating any of ours from entries[0].index on. Never truncates committed ones."""
        if not entries:
            return self.last_index()
        first = entries[0].index
        if first <= self.committed:
            raise LogError(f"append at {first} would overwrite committed index {self.committed}")
        if first > self.last_index() + 1:
            raise LogError(f"append at {first} leaves a gap after {self.last_index()}")
        del self.entries[first - self.snapshot_meta.index - 1 :]
        self.entries.extend(entries)
        self.stabled = min(self.stabled, first - 1)
        return self.last_index()

    def maybe_append(self, index: int, log_term: int, commit: int, entries: tuple[Entry, ...]) -> int | None:
        """The follower's AppendEntries: None on a (index, log_term) mismatch, else the last new index."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise LogError(f"entry {conflict} conflicts with committed index {self.committed}")
            self.append(list(entries[conflict - index - 1 :]))
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise LogError(f"commit {index} is beyond the last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Advance commit to index only if that entry is of term (the leader's current-term rule, 5.4.2)."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index:
            if index > self.committed or index < self.applied:
                raise LogError(f"applied {index} is outside [{self.applied}, {self.committed}]")
            self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        """Mark entries up to index durable, unless they were replaced since they were handed out."""
        if self.term(index) == term and index > self.stabled:
            self.stabled = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot received from the leader."""
        self.snapshot_meta = snapshot.meta
        self.entries = []
        self.committed = snapshot.meta.index
        self.stabled = snapshot.meta.index
        self.pending_snapshot = snapshot

    def compact(self, index: int, conf: ConfState | None = None) -> None:
        """Drop entries up to index, which the owner has covered with a snapshot of its state machine."""
        if index <= self.snapshot_meta.index:
            return
        if index > self.applied:
            raise LogError(f"compact {index} is beyond the applied index {self.applied}")
        term = self.term(index)
        assert term is not None
        del self.entries[: index - self.snapshot_meta.index]
        self.snapshot_meta = SnapshotMeta(index, term, conf)
