"""The cross-node consistency check, as etcd's corruption check: do the replicas hold the same state?

Checksums catch damage on one node's disk; they cannot see replicas that diverged (a bug in applying, a
bit flipped in memory). So every `--corrupt-check-interval` the leader logs an Op.HASH_CHECK entry. Each
node, as it applies that entry, takes a hash of its whole state there (the snapshot image's bytes, which
are the same on every replica at one index) and sends its newest (index, hash) on its peer traffic. A
node that holds a hash for the index a peer reports, and a different one, raises an alarm naming that
peer: it shows in `raftctl status` and the log, and stays until the node restarts.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from raftd.kv import Image, encode_to
from raftd.settings import Tuning


class _Digest:
    """A file-like sink that only hashes what is written to it. Not a CRC: the image ends with its own
    CRC-32, and a CRC over data followed by its CRC is the same for all data."""

    def __init__(self) -> None:
        self.hash = hashlib.blake2b(digest_size=8)

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


def state_hash(image: Image) -> int:
    """A 64-bit hash of the image's encoding; for a worker thread, as encoding is (40 MB at a million
    keys)."""
    sink = _Digest()
    encode_to(image, sink)  # type: ignore[arg-type]  # a write() is all encode_to asks of a file
    return int.from_bytes(sink.hash.digest(), "big")


class StateHashes:
    """This node's hashes of its state and its peers' reports, and the alarms their differences raise."""

    def __init__(self, kept: int = Tuning.state_hashes_kept) -> None:
        self.kept = kept  # own hashes kept, newest last: a peer's report of an older one is too late
        self.own: OrderedDict[int, int] = OrderedDict()  # index -> hash
        self.latest = (0, 0)  # (index, hash) sent to peers; (0, 0) before the first
        self._reports: dict[int, tuple[int, int]] = {}  # peer -> its newest report not compared yet
        self.alarms: dict[int, str] = {}  # peer -> what differed, the first time it did

    def record(self, index: int, value: int) -> list[tuple[int, str]]:
        """Our hash at index; returns the alarms it raises with reports that waited for it."""
        self.own[index] = value
        while len(self.own) > self.kept:
            self.own.popitem(last=False)
        if index > self.latest[0]:
            self.latest = (index, value)
        raised = []
        for peer, (at, theirs) in list(self._reports.items()):
            if at <= index:
                del self._reports[peer]
                alarm = self._compare(peer, at, theirs)
                if alarm is not None:
                    raised.append((peer, alarm))
        return raised

    def report(self, peer: int, index: int, value: int) -> str | None:
        """A peer's newest (index, hash); returns the alarm it raises, if any (once per peer)."""
        if index > self.latest[0]:
            self._reports[peer] = (index, value)  # compared once we have applied that far
            return None
        return self._compare(peer, index, value)

    def _compare(self, peer: int, index: int, theirs: int) -> str | None:
        ours = self.own.get(index)
        if ours is None or ours == theirs or peer in self.alarms:
            return None
        self.alarms[peer] = f"CORRUPT: the state at index {index} differs from node {peer}'s"
        return f"{self.alarms[peer]} (hash {ours:016x} here, {theirs:016x} there)"
