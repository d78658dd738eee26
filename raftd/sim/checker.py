"""Safety properties of Figure 3 of the Raft paper, checked incrementally as the simulation runs."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from raftd.core import Entry, RawNode


class Violation(Exception):
    """A safety property does not hold: the simulation found a bug."""


@dataclass
class Checker:
    # Election Safety: term -> the one node that led in it.
    leaders: dict[int, int] = field(default_factory=dict)
    # Log Matching: (index, term) -> (data, term of the entry before it) as first seen in any durable log.
    entries: dict[tuple[int, int], tuple[bytes, int]] = field(default_factory=dict)
    # Entries known committed anywhere: index -> (term, data).
    committed: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    max_committed: int = 0
    # State Machine Safety: index -> (term, data) as first applied anywhere, and the state digest after it.
    applied: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)
    # Reference history for linearizable reads: key -> sorted indices and the values written at them.
    writes: dict[str, tuple[list[int], list[str]]] = field(default_factory=dict)

    def observe_leader(self, node: int, term: int) -> None:
        prev = self.leaders.setdefault(term, node)
        if prev != node:
            raise Violation(f"election safety: nodes {prev} and {node} both lead term {term}")

    def check_leader_completeness(self, raw: RawNode) -> None:
        for index, (term, _) in self.committed.items():
            if index <= raw.snapshot_index:
                continue
            if raw.log_term(index) != term:
                raise Violation(
                    f"leader completeness: node {raw.id}, leader of term {raw.term}, lacks committed "
                    f"entry {index} of term {term} (its log has term {raw.log_term(index)} there)"
                )

    def observe_durable_entries(self, node: int, prev_term: int, entries: list[Entry]) -> None:
        """entries were just persisted contiguously by node; prev_term is the term of the entry before them.

        Recording each entry with its predecessor's term makes Log Matching checkable by induction.
        """
        for e in entries:
            seen = self.entries.setdefault((e.index, e.term), (e.data, prev_term))
            if seen != (e.data, prev_term):
                raise Violation(
                    f"log matching: node {node} has entry {e.index}/{e.term} after term {prev_term}, "
                    f"another log has it after term {seen[1]} (or with other data)"
                )
            prev_term = e.term

    def observe_commit(self, node: int, raw: RawNode, old: int, new: int) -> None:
        for index in range(max(old, raw.snapshot_index) + 1, new + 1):
            e = raw.entry(index)
            if e is None:
                raise Violation(f"node {node} committed {index}, which its log does not hold")
            seen = self.committed.setdefault(index, (e.term, e.data))
            if seen != (e.term, e.data):
                raise Violation(
                    f"state machine safety: node {node} committed {index}/{e.term}, "
                    f"another node committed {index}/{seen[0]}"
                )
        self.max_committed = max(self.max_committed, new)

    def observe_apply(self, node: int, e: Entry, digest: str, write: tuple[str, str] | None) -> None:
        seen = self.applied.setdefault(e.index, (e.term, e.data))
        if seen != (e.term, e.data):
            raise Violation(
                f"state machine safety: node {node} applied {e.index}/{e.term} {e.data!r}, "
                f"another node applied {e.index}/{seen[0]} {seen[1]!r}"
            )
        known = self.digests.setdefault(e.index, digest)
        if known != digest:
            raise Violation(
                f"state machine safety: node {node}'s state after {e.index} differs from another's"
            )
        if write is not None:
            indices, values = self.writes.setdefault(write[0], ([], []))
            if not indices or indices[-1] < e.index:
                indices.append(e.index)
                values.append(write[1])

    def observe_snapshot_install(self, node: int, index: int, digest: str) -> None:
        known = self.digests.get(index)
        if known is not None and known != digest:
            raise Violation(
                f"state machine safety: node {node} installed a snapshot at {index} unlike the log"
            )

    def check_read(
        self, node: int, key: str, must_see: int, read_index: int, applied: int, value: str | None
    ) -> None:
        """A ReadIndex read must cover everything committed before it began, and show the state at applied."""
        if read_index < must_see:
            raise Violation(
                f"linearizability: node {node} read at index {read_index}, but {must_see} was committed "
                f"before the read began (stale read)"
            )
        indices, values = self.writes.get(key, ([], []))
        pos = bisect.bisect_right(indices, applied)
        expected = values[pos - 1] if pos else None
        if value != expected:
            raise Violation(
                f"linearizability: node {node} read {key}={value!r} at applied index {applied}, "
                f"the log says {expected!r}"
            )
