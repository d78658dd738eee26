"""The limits a node runs with, in one place: each is a raftd flag (raftd --help prints the defaults), and
docs/operations.md says what each one bounds.

Every resource a client or a peer can make the node hold has its bound here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from raftd.kv.store import MAX_SESSION_LIMIT, MAX_SESSIONS


@dataclass(frozen=True)
class Limits:
    # Take a snapshot and compact the log after this many applied entries.
    snapshot_entries: int = 10_000
    # The largest snapshot taken from a leader: an image of a million 1 KiB values, with room to spare.
    max_snapshot_bytes: int = 1024**3
    # Exactly-once sessions the cluster keeps (the least recently used goes). Replicated: the leader's
    # value becomes the cluster's (an Op.SESSION_LIMIT entry), so give every node the same.
    max_sessions: int = MAX_SESSIONS
    # KV.Stream calls served at once, over all connections; one more is refused (RESOURCE_EXHAUSTED) and
    # raftd's clients fall back to unary calls. A follower's forwarding stream to the leader counts too.
    max_streams: int = 256
    # Requests one RequestBatch of a stream may carry: a larger one ends the stream (INVALID_ARGUMENT)
    # before any of it starts. Tiny requests cost far more in memory than on the wire, so bytes alone do
    # not bound them. raftd's clients send at most raftd.pipe.MAX_BATCH_REQUESTS (4,096).
    max_batch_requests: int = 16_384
    # Bytes of requests one stream may have received and not answered yet; past them it reads no more
    # until answers go out. One batch more may arrive meanwhile: at most 64 MiB, gRPC's message limit.
    max_stream_bytes: int = 16 * 1024 * 1024
    # A stream whose client has read no answer for this long is ended (RESOURCE_EXHAUSTED), and what it
    # held is freed: gRPC's flow control stops the sending as soon as the client stops reading.
    stream_write_timeout_s: float = 10.0
    # How often the leader has every replica hash its state at one index and compare (raftd.consistency);
    # 0: never. Each check costs every node a pass over its state on a worker thread (40 MB at a million
    # keys) and one log entry.
    corrupt_check_interval_s: float = 60.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{field.name} must be a positive number, not {value!r}")
            if value == 0 and field.name != "corrupt_check_interval_s":  # the one that 0 turns off
                raise ValueError(f"{field.name} must be a positive number, not 0")
        if self.max_sessions > MAX_SESSION_LIMIT:
            raise ValueError(f"max_sessions is at most {MAX_SESSION_LIMIT}, not {self.max_sessions}")


DEFAULTS = Limits()
