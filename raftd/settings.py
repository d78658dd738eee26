"""The settings a node runs with, in one place.

Limits: every resource a client or a peer can make the node hold has its bound here; each is a raftd flag
(raftd --help prints the defaults), and docs/operations.md says what each one bounds. Tuning: the node's
own timings and batch sizes, which are not flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from raftd.kv.store import MAX_SESSION_LIMIT, MAX_SESSIONS

# The most --max-key-bytes and --max-value-bytes may be: an answer carries a whole value, and with its few
# bytes of framing it must fit in a message of gRPC's default 4 MiB, all that the original project's
# clients take (raftctl takes 8 MiB, and a put carries a key and a value). Beyond gRPC's 64 MiB peer
# messages, an entry could never even reach a follower.
MAX_REQUEST_FIELD_BYTES = 4 * 1024 * 1024 - 1024


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
    # Messages queued to one peer and not written yet; past them new messages to it are dropped, which Raft
    # tolerates (the leader sends again from its log). Entries in flight to a peer are bounded in bytes by
    # the core (8 MiB), so this bounds the small messages: as etcd's rafthttp, whose buffer is 4,096 too.
    max_peer_queue: int = 4096
    # Peer calls from addresses not known to be a member's, held up at once while the members' names are
    # looked up again (--peer-check members: a member may come back with a new address); more are refused
    # at once, so that strangers in a crowd hold no more than this.
    max_peer_lookup_waiters: int = 64
    # Exactly-once sessions the cluster keeps (the least recently used goes). Replicated: the leader's
    # value becomes the cluster's (an Op.SESSION_LIMIT entry), so give every node the same.
    max_sessions: int = MAX_SESSIONS
    # The longest key and value a request may carry; a longer one is INVALID_ARGUMENT before it reaches the
    # log. They bound what one write makes every node hold, in its log, its state and its answers, as
    # etcd's --max-request-bytes does. Keys name things: 4 KiB is ample. 1 MiB values are what etcd
    # promises to take, and writes of them still leave heartbeats their turn (docs/operations.md, "Large
    # values"). Each is at most MAX_REQUEST_FIELD_BYTES.
    max_key_bytes: int = 4096
    max_value_bytes: int = 1024 * 1024
    # KV.Stream calls served at once, over all connections; one more is refused (RESOURCE_EXHAUSTED) and
    # raftd's clients fall back to unary calls. A follower's forwarding stream to the leader counts too.
    max_streams: int = 256
    # Requests one RequestBatch of a stream may carry: a larger one ends the stream (INVALID_ARGUMENT)
    # before any of it starts. Tiny requests cost far more in memory than on the wire, so bytes alone do
    # not bound them. raftd's clients send at most raftd.pipe.MAX_BATCH_REQUESTS (4,096).
    max_batch_requests: int = 16_384
    # Requests one etcd Txn may carry, counting both branches and nested ones (etcd's --max-txn-ops, whose
    # default this is): a larger one is refused before it reaches the log.
    max_txn_ops: int = 128
    # Revisions of the etcd keyspace's history kept (etcd's --auto-compaction-retention in its revision
    # mode): the leader compacts older ones away through the log, so writes cannot grow every node's
    # history without bound. 0: never (then only `etcdctl compaction` frees it).
    auto_compaction_retention: int = 10_000
    # Seconds of the keyspace's history kept besides (etcd's periodic mode: --auto-compaction-mode
    # periodic with a duration sets it, and the revision count to 0). Both set: a compaction keeps
    # enough for both. 0: no age bound.
    auto_compaction_period_s: float = 0.0
    # etcd Watch calls served at once; one more is refused (RESOURCE_EXHAUSTED). Each watcher costs the
    # node a read of its range after every write it applies, and holds at most one page of events.
    max_watch_streams: int = 1024
    # Watchers one Watch call may hold; one more is cancelled as it is created, with the reason.
    max_watchers_per_stream: int = 1024
    # How often a watcher that asked for progress notifications and was sent nothing gets an empty answer
    # whose header tells the revision reached (etcd's --experimental-watch-progress-notify-interval).
    watch_progress_notify_interval_s: float = 600.0
    # etcd leases the cluster holds; a grant past it is refused (RESOURCE_EXHAUSTED) on the leader before
    # it is logged (grants in flight at that moment may pass it by their number). Each lease is a row in
    # every node's state and a deadline in the leader's memory.
    max_leases: int = 100_000
    # LeaseKeepAlive calls served at once; one more is refused (RESOURCE_EXHAUSTED).
    max_keepalive_streams: int = 1024
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
    # A learner is promoted only once its log is within this many entries of the leader's commit index:
    # a voter far behind would not help commit anything for a while, and in a small cluster would stall it.
    max_learner_lag: int = 1000

    def __post_init__(self) -> None:
        # 0 turns the corruption check off, promotes a learner only once it has every committed entry, and
        # leaves the keyspace's history to `etcdctl compaction` alone.
        _check_positive(
            self,
            may_be_zero={
                "corrupt_check_interval_s",
                "max_learner_lag",
                "auto_compaction_retention",
                "auto_compaction_period_s",
            },
        )
        if self.max_sessions > MAX_SESSION_LIMIT:
            raise ValueError(f"max_sessions is at most {MAX_SESSION_LIMIT}, not {self.max_sessions}")
        for name in ("max_key_bytes", "max_value_bytes"):
            if getattr(self, name) > MAX_REQUEST_FIELD_BYTES:
                raise ValueError(f"{name} is at most {MAX_REQUEST_FIELD_BYTES}, not {getattr(self, name)}")


DEFAULTS = Limits()


@dataclass(frozen=True)
class Tuning:
    """How the node paces itself and sizes its internal batches: its loop, its peer senders, its client
    services and its server. Not flags: they follow from how the node works, not from a deployment (each
    one's comment says why it is what it is). A test or the simulator passes its own."""

    # -- the loop (raftd.node) -------------------------------------------------------------------------
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
    # How long a node whose removal applied runs on before it stops: long enough for its last messages
    # (a leader's commit of its own removal, and its hand-over) to go out.
    leave_grace_s: float = 0.5
    # How often a learner run with --auto-promote asks to be promoted (refused while it is behind).
    auto_promote_interval_s: float = 1.0
    # How often freed heap pages go back to the system (raftd.malloc): after 2,000 connections came and
    # went, glibc kept their buffers and the node's RSS stayed at twice its level.
    trim_interval_s: float = 5.0
    # The log since the last snapshot is compacted once it outweighs the image, but not below this: a small
    # state would otherwise be snapshotted several times a second under load.
    min_snapshot_log_bytes: int = 1024 * 1024
    # Own state hashes kept for the consistency check (raftd.consistency): a peer's report of an index older
    # than these is too late to compare, and at one check a minute they cover a quarter of an hour.
    state_hashes_kept: int = 16

    # -- the peer senders (raftd.transport.peer) ------------------------------------------------------
    # Messages per write of a peer stream, at most: a full queue (Limits.max_peer_queue, 4,096) goes out in
    # eight writes, so the first of its messages leave before the last are encoded.
    peer_batch_messages: int = 512
    # Entry bytes per write, beyond one message: a write of 1 MiB entries by the dozen would hold up the
    # heartbeats behind it for longer than an election timeout (and outgrow gRPC's 64 MiB messages).
    peer_batch_bytes: int = 4 * 1024 * 1024
    # A write in flight this long means a peer that stopped reading (gRPC's flow control holds the write):
    # the stream is dropped and opened again. Several election timeouts (200-400 ms by default), so a
    # merely slow peer keeps its stream.
    peer_write_timeout_s: float = 2.0
    # A failed stream is opened again after a pause that starts here and doubles up to the maximum, and a
    # peer's channel reconnects over the same range (raftd.transport.peer._channel), so that a peer that
    # is down costs one attempt a second.
    peer_backoff_min_s: float = 0.05
    peer_backoff_max_s: float = 1.0
    # How long a sender waits for the status of a call that ended under its write (to log why): the
    # status normally comes at once, and the sender must never hang on one that does not.
    peer_status_wait_s: float = 1.0
    # How long stopping waits for a sender to end: shutting down must never hang on a peer.
    peer_close_wait_s: float = 1.0
    # An image goes to a follower in chunks of this size (InstallSnapshot, under gRPC's flow control): far
    # below gRPC's 64 MiB messages, and few messages for a large image (1,024 for 1 GiB).
    snapshot_chunk_bytes: int = 1024 * 1024
    # A snapshot transfer is given up (the leader starts a fresh one later) after snapshot_timeout_s plus
    # a second per snapshot_min_rate bytes of image: a link that moves less than 1 MiB a second is taken
    # for a broken one, and 10 s more cover the set-up and the receiver's check of the whole image.
    snapshot_timeout_s: float = 10.0
    snapshot_min_rate: int = 1024 * 1024  # bytes per second

    # -- the client services (raftd.api) --------------------------------------------------------------
    # The deadline of a call whose client set none, so that nothing waits forever (README: "every call
    # has a deadline"); raftctl's own default is the same 5 s.
    default_deadline_s: float = 5.0
    # The longest a call waits here, whatever its client's deadline, and the longest a KV.Stream request
    # stays open: one whose outcome never comes (a follower's ReadIndex request lost on the way to the
    # leader) is answered DEADLINE_EXCEEDED then, so that it cannot hold its slot forever. A minute
    # outlasts the elections and hand-overs a request may have to wait out.
    max_deadline_s: float = 60.0
    # A stream's requests past their deadline are answered by one timer per stream, which runs this much
    # late, so that the requests of a stuck stream expire in a few rounds, not one each.
    stream_expiry_grain_s: float = 1.0
    # One ResponseBatch of a stream carries at most this many bytes of values, unless one value alone is
    # more (raftctl takes 8 MiB messages, and a value is at most MAX_REQUEST_FIELD_BYTES). Once that much
    # waits to go out, a read's value is fetched only as its answer is sent: the answers queued behind a
    # client that stops reading hold no values.
    response_batch_bytes: int = 1024 * 1024
    # Bytes per message of a Backup stream: far below gRPC's 4 MiB default, which the original clients
    # keep, and large enough that a gigabyte takes a thousand messages.
    backup_chunk_bytes: int = 1024 * 1024

    # -- the server (raftd.server) ---------------------------------------------------------------------
    # A leader told to stop hands leadership to a follower first, for at most this long: a hand-over takes
    # a round trip or two, and a stop must come well within an orchestrator's grace (Docker's is 10 s).
    shutdown_transfer_s: float = 1.0
    # After the server stops, how long to wait for the tasks of gRPC's calls to end (server._calls_finished),
    # each of which would otherwise print a traceback when cancelled.
    calls_finish_s: float = 2.0
    # Foreign clusters and strangers' addresses remembered so that each is logged once (they retry every
    # second): a set that grew with every new caller would be memory a stranger makes the node hold.
    max_refusals_logged: int = 64
    # The peer check (--peer-check members, raftd.transport.gate): a caller not among the members' known
    # addresses waits at most peer_lookup_wait_s for their names to be looked up again; a stranger calling
    # in a loop costs one lookup per host per peer_lookup_interval_s, not one per call; and addresses found
    # are looked up again after peer_addresses_ttl_s, in the background (a member's old address may go to
    # someone else).
    peer_lookup_wait_s: float = 2.0
    peer_lookup_interval_s: float = 1.0
    peer_addresses_ttl_s: float = 30.0

    def __post_init__(self) -> None:
        _check_positive(self)
        if self.peer_backoff_min_s > self.peer_backoff_max_s:
            raise ValueError(
                f"peer_backoff_min_s ({self.peer_backoff_min_s}) is more than peer_backoff_max_s "
                f"({self.peer_backoff_max_s})"
            )


TUNING = Tuning()
