"""The leader's view of one follower: how far it matches, what to send next, and how much is in flight."""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"  # one AppendEntries at a time until we find where the logs match
    REPLICATE = "replicate"  # logs match: stream optimistically, up to the inflight limits ahead
    SNAPSHOT = "snapshot"  # the follower needs a snapshot; wait for it to be installed


class Progress:
    def __init__(self, next_index: int, max_inflight: int, max_inflight_bytes: int = 0) -> None:
        # Invariant: match < next.
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        # In PROBE, at most one AppendEntries is outstanding: paused until a reply or a heartbeat tick.
        self.probe_sent = False
        # (last index, bytes of entries) of each AppendEntries in flight, oldest first; only in REPLICATE.
        self.inflights: deque[tuple[int, int]] = deque()
        self.inflight_bytes = 0
        self.max_inflight = max_inflight
        # 0: no limit. Else the window is full once this many bytes are in flight (etcd's
        # MaxInflightBytes): a heartbeat queued behind a window of 1 MiB entries must still arrive in time.
        self.max_inflight_bytes = max_inflight_bytes
        self.pending_snapshot = 0
        # Heard from within the current check-quorum window.
        self.recent_active = False
        # Heard from within the window before it: a membership change asks whether a member is reachable,
        # and the current window may have only just begun.
        self.active_before = False

    def reachable(self) -> bool:
        return self.recent_active or self.active_before

    def __repr__(self) -> str:
        return f"Progress(match={self.match}, next={self.next}, state={self.state.value})"

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.clear()
        self.inflight_bytes = 0

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            if len(self.inflights) >= self.max_inflight:
                return True
            return 0 < self.max_inflight_bytes <= self.inflight_bytes
        return True

    def sent_entries(self, last_index: int, count: int, size: int = 0) -> None:
        """Record an AppendEntries carrying count entries (size bytes of data) up to last_index."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.append((last_index, size))
                self.inflight_bytes += size
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """A follower acknowledged index; returns whether match advanced."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflights and self.inflights[0][0] <= index:
            self.free_oldest()
        return updated

    def free_oldest(self) -> None:
        """Forget the oldest AppendEntries in flight (acknowledged, or given up as lost)."""
        _, size = self.inflights.popleft()
        self.inflight_bytes -= size

    def maybe_decr_to(self, rejected: int, hint: int) -> bool:
        """A follower rejected the AppendEntries at rejected; hint is where to probe next. False if stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True
