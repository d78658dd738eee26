"""Outbound peer traffic: one long-lived channel, stream, bounded queue and sender task per peer.

A sender drains its queue into one batch per write, so a busy leader sends few large writes, and writes
them on one long-lived client stream, which keeps them in order without a call's set-up per batch. Every
write has a deadline, kept by one watchdog timer per peer rather than a timer per write; a failed or stuck
stream is dropped and reopened after a capped exponential backoff. A dead or slow peer only fills its own
queue: when full, new messages to it are dropped, which Raft tolerates (the leader resends from its log).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from raftd.consistency import StateHashes
from raftd.core import Message, MsgType, Snapshot
from raftd.errors import REMOVED, WRONG_INCARNATION
from raftd.identity import Identity
from raftd.pb import peer_pb2 as pb
from raftd.pb import peer_pb2_grpc
from raftd.pipe import details_of
from raftd.settings import DEFAULTS, TUNING, Limits, Tuning

from .codec import message_to_pb

log = logging.getLogger("raftd.transport")

# A peer that says no (another cluster; a caller's address not a member's): worth a warning, not a debug line.
REFUSALS = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)
# Refusals for good (raftd.node.RaftNode.peer_refusal): the node is told, and stops.
FINAL_REFUSALS = (REMOVED, WRONG_INCARNATION)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# MessageBatch.version: 1 cluster id entries, 2 session-checked writes, 3 hash checks, 4 membership entries,
# 5 keyspace writes (Op.MVCC), 6 Op.MERGE (raftd.kv.store)
PROTOCOL_VERSION = 6

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


def _entry_bytes(m: Message) -> int:
    return sum(len(e.data) for e in m.entries)


def _unresolved(why: str) -> bool:
    """The peer's name did not resolve: a node added to the cluster whose host (a container, a pod) is not
    up yet. gRPC's resolver then waits up to two minutes before it looks again, so the sender takes a
    new channel, which looks the name up at once (found by the container membership test)."""
    lowered = why.lower()
    return "dns resolution failed" in lowered or "errors resolving" in lowered


def _channel(address: str, tuning: Tuning) -> grpc.aio.Channel:
    """A channel that owns its connection, so that a new channel is a new connection (PeerClient.
    _reconnect): by default gRPC shares connections among channels to the same address. It reconnects
    on the senders' own backoff range."""
    low, high = round(tuning.peer_backoff_min_s * 1000), round(tuning.peer_backoff_max_s * 1000)
    backoff = [
        ("grpc.initial_reconnect_backoff_ms", low),
        ("grpc.min_reconnect_backoff_ms", low),
        ("grpc.max_reconnect_backoff_ms", high),
    ]
    return grpc.aio.insecure_channel(
        address, options=[*CHANNEL_OPTIONS, *backoff, ("grpc.use_local_subchannel_pool", 1)]
    )


class PeerClient:
    def __init__(
        self,
        peer: int,
        address: str,
        identity: Identity,
        on_unreachable: Callable[[int], None],
        hashes: StateHashes | None = None,
        limits: Limits = DEFAULTS,
        tuning: Tuning = TUNING,
    ) -> None:
        """limits: the queue's bound (max_peer_queue); tuning: the writes' sizes and timings (peer_*,
        snapshot_*)."""
        self.peer = peer
        self.address = address
        self.identity = identity  # read at each write: the cluster id is learnt while running
        self.hashes = hashes or StateHashes()  # likewise: its newest hash goes with every write
        self.on_unreachable = on_unreachable
        self.tuning = tuning
        # Shared with the client calls this node forwards to the peer (RaftNode.channel_to), so never
        # closed before the end; the Raft traffic moves to a channel of its own after a refusal.
        self.channel = _channel(address, tuning)
        self._raft_channel = self.channel
        self._stub = peer_pb2_grpc.RaftPeerStub(self._raft_channel)
        self._queue: asyncio.Queue[Message] = asyncio.Queue(limits.max_peer_queue)
        self._carried: Message | None = None  # taken from the queue, but beyond the last batch's bytes
        self._task: asyncio.Task[None] | None = None
        self._writing_since: float | None = None  # when the write in flight started
        self._watchdog: asyncio.TimerHandle | None = None
        self._expired = False  # the watchdog cancelled the sender: its write took too long
        self.dropped = 0
        self.reachable = True
        self.incarnation = ""
        self.on_refused: Callable[[str], None] = lambda why: None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"peer-{self.peer}")

    def send(self, m: Message) -> None:
        try:
            self._queue.put_nowait(m)
        except asyncio.QueueFull:
            self.dropped += 1

    def clear(self) -> None:
        """Forget queued traffic (a suspended node must not speak with its old state)."""
        self._carried = None
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _run(self) -> None:
        tuning = self.tuning
        backoff = tuning.peer_backoff_min_s
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        while True:
            batch = await self._next_batch()
            stream = self._stub.Stream()  # type: ignore[call-arg]  # a call to write() to, as in raftd.pipe
            try:
                while True:
                    request = pb.MessageBatch(
                        cluster=self.identity.name,
                        cluster_id=self.identity.id,
                        version=PROTOCOL_VERSION,
                        messages=[message_to_pb(m) for m in batch],
                        hash_index=self.hashes.latest[0],
                        state_hash=self.hashes.latest[1],
                        incarnation=self.incarnation,
                    )
                    self._writing_since = loop.time()
                    if self._watchdog is None:
                        self._watchdog = loop.call_at(
                            self._writing_since + tuning.peer_write_timeout_s, self._watch
                        )
                    await stream.write(request)
                    self._writing_since = None
                    self.reachable = True
                    backoff = tuning.peer_backoff_min_s
                    batch = await self._next_batch()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.CancelledError) as e:
                if isinstance(e, asyncio.CancelledError):
                    # The watchdog's cancellation is a failed write; close()'s, alone or as well, ends us.
                    if not self._expired:
                        raise
                    self._expired = False
                    if task.uncancel():
                        raise
                self._writing_since = None
                code, why = await self._failure(stream, e)
                stream.cancel()
                if code is grpc.StatusCode.FAILED_PRECONDITION and why.startswith(FINAL_REFUSALS):
                    self.on_refused(why)
                if self.reachable:
                    if code in REFUSALS:
                        log.warning("Peer at %s refuses our traffic: %s", self.address, why)
                    else:
                        log.debug("Peer at %s unreachable: %s", self.address, why)
                self.reachable = False
                if code is grpc.StatusCode.PERMISSION_DENIED or _unresolved(why):
                    await self._reconnect()
                if any(m.type is MsgType.APP for m in batch):
                    self.on_unreachable(self.peer)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, tuning.peer_backoff_max_s)

    async def _failure(
        self, stream: grpc.aio.StreamUnaryCall[pb.MessageBatch, pb.StepResponse], e: BaseException
    ) -> tuple[grpc.StatusCode | None, str]:
        """The status a failed write ended in, if the call has one, and why in one line (the config's
        address goes with it; a gRPC error's repr spans a dozen)."""
        if isinstance(e, grpc.RpcError):
            return e.code(), details_of(e)
        if isinstance(e, asyncio.CancelledError):
            return None, f"a write took over {self.tuning.peer_write_timeout_s:g}s"
        # InvalidStateError: grpc.aio's write on a call that has ended, with its status waiting to be read
        # (bounded all the same: the sender must never wait on a status that does not come).
        try:
            async with asyncio.timeout(self.tuning.peer_status_wait_s):
                code: grpc.StatusCode = await stream.code()
                details: str = await stream.details()
        except TimeoutError:
            return None, "the stream to it ended"
        return code, " ".join((details or code.name).split()) + " (the stream to it ended)"

    async def _reconnect(self) -> None:
        """A new channel: the name looked up again, a new connection. The peer refused the address we call
        from (raftd.transport.gate); the connection may have been made over another network while ours to
        it was cut (Docker rewrites a container's /etc/hosts when it leaves a network), and gRPC keeps a
        working connection for good, refused calls or not."""
        old = self._raft_channel
        self._raft_channel = _channel(self.address, self.tuning)
        self._stub = peer_pb2_grpc.RaftPeerStub(self._raft_channel)
        if old is not self.channel:  # the shared one may carry forwarded client calls: it stays
            await old.close(grace=None)

    def _watch(self) -> None:
        """Give up a write in flight for over Tuning.peer_write_timeout_s (a peer that stopped reading), else
        wait for the deadline of the one in flight now. One timer serves every write: a timer per write,
        cancelled when it completed, left thousands of dead entries in the event loop's heap under load.

        It cancels the sender task, as asyncio.timeout would: cancelling only the call does not end a
        write still waiting for the stream to open (grpc.aio waits for that outside its cancellation
        handling)."""
        self._watchdog = None
        if self._writing_since is None or self._task is None:
            return
        due = self._writing_since + self.tuning.peer_write_timeout_s
        loop = asyncio.get_running_loop()
        if loop.time() >= due:
            self._expired = True
            self._task.cancel()
        else:
            self._watchdog = loop.call_at(due, self._watch)

    async def send_snapshot(self, m: Message) -> bool:
        """Stream a SNAP message with its image in chunks; True once the peer has taken all of it.

        Any failure ends the transfer; the leader is told and later starts a fresh one (no resuming half a
        transfer, whose image may meanwhile have been replaced by a newer one).
        """
        assert m.snapshot is not None
        data = m.snapshot.data
        header = message_to_pb(Message(m.type, m.to, m.frm, m.term, snapshot=Snapshot(m.snapshot.meta)))
        tuning = self.tuning

        async def chunks() -> AsyncIterator[pb.SnapshotChunk]:
            yield pb.SnapshotChunk(
                cluster=self.identity.name, cluster_id=self.identity.id, header=header, total_size=len(data)
            )
            view = memoryview(data)
            step = tuning.snapshot_chunk_bytes
            for start in range(0, len(data), step):
                yield pb.SnapshotChunk(data=bytes(view[start : start + step]))

        deadline = tuning.snapshot_timeout_s + len(data) / tuning.snapshot_min_rate
        try:
            await self._stub.InstallSnapshot(chunks(), timeout=deadline)
        except grpc.aio.AioRpcError as e:
            log.info("Snapshot transfer to %s failed: %s", self.address, e.details() or e.code().name)
            return False
        return True

    async def _next_batch(self) -> list[Message]:
        """What is queued, up to Tuning.peer_batch_messages messages and peer_batch_bytes of entries (at
        least one message)."""
        first, self._carried = self._carried or await self._queue.get(), None
        batch = [first]
        size = _entry_bytes(first)
        most, most_bytes = self.tuning.peer_batch_messages, self.tuning.peer_batch_bytes
        while len(batch) < most and not self._queue.empty():
            m = self._queue.get_nowait()
            size += _entry_bytes(m)
            if size > most_bytes:
                self._carried = m  # the next batch's first
                break
            batch.append(m)
        return batch

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._task is not None:
            self._task.cancel()
            # Bounded: shutting down must never hang on a peer.
            await asyncio.wait({self._task}, timeout=self.tuning.peer_close_wait_s)
        if self._raft_channel is not self.channel:
            await self._raft_channel.close(grace=None)
        await self.channel.close(grace=None)
