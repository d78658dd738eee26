"""The limits a node runs with, in one place: each is a raftd flag (raftd --help prints the defaults), and
docs/operations.md says what each one bounds.

Every resource a client or a peer can make the node hold has its bound here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from raftd.kv.store import MAX_SESSION_LIMIT, MAX_SESSIONS


def _check_positive(settings: Limits | Tuning, may_be_zero: set[str] | frozenset[str] = frozenset()) -> None:
    """Both settings objects refuse what would make a node misbehave (a zero tick, a negative bound); a few
    limits take 0 to turn their check off."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{field.name} must be a positive number, not {value!r}")
        if value == 0 and field.name not in may_be_zero:
            raise ValueError(f"{field.name} must be a positive number, not 0")


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
    # Requests one stream may have received and not answered yet; past them it reads no more until answers
    # go out (with max_stream_bytes, what a client that floods makes the node hold).
    max_stream_requests: int = 4096
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
        _check_positive(self, may_be_zero={"corrupt_check_interval_s"})  # the one that 0 turns off
        if self.max_sessions > MAX_SESSION_LIMIT:
            raise ValueError(f"max_sessions is at most {MAX_SESSION_LIMIT}, not {self.max_sessions}")


DEFAULTS = Limits()


@dataclass(frozen=True)
class Tuning:
    """How the node's loop paces itself. Not flags: they follow from how the loop works, not from a
    deployment (each one's comment says why it is what it is). A test or the simulator passes its own."""

    # The core's clock: election timeouts and heartbeat intervals are counted in these.
    tick_s: float = 0.01
    # Bytes of proposals taken into one Ready: one Ready is saved whole before the loop ticks again, and a
    # leader that does not tick sends no heartbeats (80 proposals of 1 MiB at once made one 80 MiB save).
    proposal_batch_bytes: int = 4 * 1024 * 1024
    # While several unary calls are in progress, writes and reads wait for more calls to share their
    # proposal or ReadIndex round, until none has come for gather_quiet_s, or for at most gather_max_s,
    # or until as many calls are in progress as at the peak of the last gather_peak_window_s (every
    # caller has come). grpc.aio accepts one new call per turn of the event loop, and a round costs more
    # than accepting a call: a round for every call or two starved the acceptance of the calls that could
    # have shared it. A turn that applies a batch can take a millisecond, hence a quiet twice that.
    gather_quiet_s: float = 0.002
    gather_max_s: float = 0.010
    gather_peak_window_s: float = 1.0
    # While a ReadIndex round is in flight, newer reads wait to share the next one (as etcd's read loop
    # does); a round older than this no longer holds them back (its request may have been lost).
    read_round_hold_s: float = 0.1
    # A ReadIndex request a follower forwarded can be lost on the way (a full peer queue drops it); its
    # reads fail this long after they were asked, so that their clients retry.
    read_confirm_s: float = 10.0
    # How often a leadership transfer in progress checks that its target is still reachable.
    transfer_check_s: float = 0.05
    # How long stop() waits for the loop to finish its Ready (installing a large image takes seconds).
    stop_wait_s: float = 10.0
    # How often freed heap pages go back to the system (raftd.malloc): after 2,000 connections came and
    # went, glibc kept their buffers and the node's RSS stayed at twice its level.
    trim_interval_s: float = 5.0
    # The log since the last snapshot is compacted once it outweighs the image, but not below this: a small
    # state would otherwise be snapshotted several times a second under load.
    min_snapshot_log_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        _check_positive(self)


TUNING = Tuning()
