"""etcd's Watch service over the keyspace's change feed (raftd.kv.mvcc.Keyspace.changes).

Every watcher pulls its events from the keyspace rather than being pushed them: after each change the
stream reads, for each watcher that is behind, the next page of changes of its range from the revision it
has reached, and writes them out before it reads more. So events arrive in revision order with none
missing and none twice whatever the client's pace, a reconnecting client resumes from any revision not
yet compacted, and a slow reader holds at most one page (gRPC's flow control stops the writes) instead of
a queue that grows: etcd's "unsynced" watchers, as the only kind.

A watcher whose next revision has been compacted away is cancelled with the compaction point, as etcd's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from raftd.errors import Unavailable
from raftd.kv import mvcc
from raftd.node import RaftNode
from raftd.pb import etcd_kv_pb2 as kvpb
from raftd.pb import etcd_rpc_pb2 as pb
from raftd.pb import etcd_rpc_pb2_grpc as rpc

from .common import LongCalls
from .etcd import EMPTY_KEY, header_of, kv_pb

PAGE_EVENTS = 1000  # events read and written at once for one watcher
# Keys and values one response carries at most (whole revisions; a single revision larger than this goes
# alone): a page of 1 MiB values would otherwise hold a gigabyte and pass gRPC's message limit.
PAGE_BYTES = 4 * 1024 * 1024
# Answers to a call's requests not sent yet: past them the call reads no more requests until they go out,
# so that a client that sends creates and reads nothing holds no more than this.
MAX_REPLIES = 256
NO_LEADER_TIMEOUTS = 3  # etcd's: a "hasleader" watch ends after this many election timeouts without one
PROGRESS_WATCH_ID = -1  # a progress answer to WatchProgressRequest is for no one watcher (etcd's)


@dataclass
class Watcher:
    watch_id: int
    key: bytes
    range_end: bytes
    next_revision: int  # the first revision whose events it has not been sent
    prev_kv: bool
    no_put: bool
    no_delete: bool
    progress_notify: bool
    last_sent: float  # loop time of its last response (for progress notifications)


class EtcdWatch(rpc.WatchServicer):
    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self.streams = LongCalls()
        self.open = 0

    async def Watch(  # type: ignore[override]  # answers with context.write(), not an iterator
        self, requests: AsyncIterator[pb.WatchRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        limits = self.node.limits
        if self.open >= limits.max_watch_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"etcdserver: this node serves at most {limits.max_watch_streams} watch streams at once "
                "(--max-watch-streams)",
            )
        metadata = dict(context.invocation_metadata() or ())
        require_leader = metadata.get("hasleader") == "true"
        if require_leader and self.node.leader() is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
        self.open += 1
        try:
            async with self.streams.track():
                await WatchStream(self.node, context, require_leader).run(requests)
        finally:
            self.open -= 1


class WatchStream:
    """One Watch call: its watchers, the answers to its requests, and the pages of events it sends."""

    def __init__(
        self, node: RaftNode, context: grpc.aio.ServicerContext[Any, Any], require_leader: bool = False
    ) -> None:
        self.node = node
        self.context = context
        # etcd's "hasleader" metadata: the client would rather hear "no leader" than wait on a node cut
        # off from the cluster, whose watch would be silent. So a node that has known no leader for
        # NO_LEADER_TIMEOUTS election timeouts ends the call, as etcd's does, and the client resumes
        # elsewhere.
        self.require_leader = require_leader
        self.leaderless_since: float | None = None
        self.watchers: dict[int, Watcher] = {}
        self.replies: list[pb.WatchResponse] = []  # answers to creates, cancels and progress requests
        self.progress_asked = False
        self.next_id = 0
        self.wake = asyncio.Event()
        self.drained = asyncio.Event()  # set when the replies owed went out (the reader waits on it)
        self.ended = False

    async def run(self, requests: AsyncIterator[pb.WatchRequest]) -> None:
        reader = asyncio.create_task(self._read(requests))
        try:
            await self._send()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self, requests: AsyncIterator[pb.WatchRequest]) -> None:
        try:
            async for request in requests:
                kind = request.WhichOneof("request_union")
                if kind == "create_request":
                    self._create(request.create_request)
                elif kind == "cancel_request":
                    self._cancel(request.cancel_request.watch_id, "")
                elif kind == "progress_request":
                    self.progress_asked = True
                self.wake.set()
                if len(self.replies) >= MAX_REPLIES:  # a client that asks and does not read: stop reading
                    self.drained.clear()
                    await self.drained.wait()
        finally:
            self.ended = True  # the client closed its side: what is owed is still sent, then the call ends
            self.wake.set()

    def _reply(self, **fields: Any) -> None:
        self.replies.append(pb.WatchResponse(header=header_of(self.node), **fields))

    def _create(self, r: pb.WatchCreateRequest) -> None:
        limit = self.node.limits.max_watchers_per_stream
        watch_id = r.watch_id or self._free_id()
        if not r.key:
            self._reply(
                watch_id=watch_id, created=True, canceled=True, cancel_reason=f"etcdserver: {EMPTY_KEY}"
            )
            return
        if watch_id in self.watchers:
            self._reply(
                watch_id=watch_id, created=True, canceled=True, cancel_reason="etcdserver: duplicate watch id"
            )
            return
        if len(self.watchers) >= limit:
            reason = f"etcdserver: at most {limit} watchers on one stream (--max-watchers-per-stream)"
            self._reply(watch_id=watch_id, created=True, canceled=True, cancel_reason=reason)
            return
        try:
            current = self.node.keyspace().revision
        except Unavailable as e:
            self._reply(watch_id=watch_id, created=True, canceled=True, cancel_reason=f"etcdserver: {e}")
            return
        filters = set(r.filters)
        self.watchers[watch_id] = Watcher(
            watch_id,
            r.key,
            r.range_end,
            r.start_revision if r.start_revision > 0 else current + 1,
            r.prev_kv,
            pb.WatchCreateRequest.NOPUT in filters,
            pb.WatchCreateRequest.NODELETE in filters,
            r.progress_notify,
            asyncio.get_running_loop().time(),
        )
        self._reply(watch_id=watch_id, created=True)

    def _free_id(self) -> int:
        while self.next_id in self.watchers:
            self.next_id += 1
        chosen = self.next_id
        self.next_id += 1
        return chosen

    def _cancel(self, watch_id: int, reason: str, compact_revision: int = 0) -> None:
        if self.watchers.pop(watch_id, None) is not None:
            self._reply(
                watch_id=watch_id, canceled=True, cancel_reason=reason, compact_revision=compact_revision
            )

    async def _send(self) -> None:
        every = self.node.limits.watch_progress_notify_interval_s
        while True:
            # Asked before anything is read, so that a change applied while this turn writes wakes the next.
            await self._turn(self.node.keyspace_moved(), every)
            if self.ended and not self.replies and not self._behind():
                return
            if self.require_leader and self._cut_off():
                await self.context.abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")

    def _cut_off(self) -> bool:
        """Whether this node has known no leader for NO_LEADER_TIMEOUTS election timeouts."""
        now = asyncio.get_running_loop().time()
        if self.node.leader() is not None:
            self.leaderless_since = None
            return False
        if self.leaderless_since is None:
            self.leaderless_since = now
        hi_s = self.node.cluster.election_timeout_ms[1] / 1000
        return now - self.leaderless_since >= NO_LEADER_TIMEOUTS * hi_s

    def _keyspace(self) -> mvcc.Keyspace | None:
        try:
            return self.node.keyspace()
        except Unavailable:
            return None

    def _behind(self) -> bool:
        ks = self._keyspace()
        return ks is not None and any(w.next_revision <= ks.revision for w in self.watchers.values())

    async def _turn(self, moved: asyncio.Future[None], every: float) -> None:
        """Send what is owed; then, if nothing is, wait for a change, a request or a notification due."""
        loop = asyncio.get_running_loop()
        while self.replies:
            await self.context.write(self.replies.pop(0))
        self.drained.set()
        behind = False
        ks = self._keyspace()  # None while suspended or replaying at start: events wait
        if ks is not None:
            for w in list(self.watchers.values()):
                if ks is not None and w.watch_id in self.watchers and w.next_revision <= ks.revision:
                    behind = True
                    await self._page(ks, w)
                    ks = self._keyspace()  # a snapshot installed meanwhile replaces it
            now = loop.time()
            for w in list(self.watchers.values()):
                if w.progress_notify and now - w.last_sent >= every:
                    w.last_sent = now
                    await self.context.write(
                        pb.WatchResponse(header=header_of(self.node), watch_id=w.watch_id)
                    )
            if self.progress_asked and not behind:
                self.progress_asked = False
                await self.context.write(
                    pb.WatchResponse(header=header_of(self.node), watch_id=PROGRESS_WATCH_ID)
                )
        if behind or self.replies or self.ended:
            return
        self.wake.clear()
        woken = asyncio.ensure_future(self.wake.wait())
        waits: set[asyncio.Future[Any]] = {moved, woken}
        timeout = every if self._notifying() else None
        if self.require_leader:  # the leader is looked for now and then, even with nothing to send
            hi_s = self.node.cluster.election_timeout_ms[1] / 1000
            timeout = min(timeout or hi_s, hi_s)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    def _notifying(self) -> bool:
        return any(w.progress_notify for w in self.watchers.values())

    async def _page(self, ks: mvcc.Keyspace, w: Watcher) -> None:
        """The watcher's next events, whole revisions only, as one response."""
        try:
            events = ks.changes(w.next_revision - 1, w.key, w.range_end, PAGE_EVENTS)
        except mvcc.Compacted as e:
            self._cancel(
                w.watch_id, "etcdserver: mvcc: required revision has been compacted", e.compact_revision
            )
            return
        if len(events) == PAGE_EVENTS:
            last = events[-1].kv.mod_revision
            whole = [e for e in events if e.kv.mod_revision < last]
            # One revision of more than a page: it goes whole, as etcd sends a revision in one response.
            events = whole or ks.changes(last - 1, w.key, w.range_end, limit=-1, until=last)
            reached = events[-1].kv.mod_revision
        else:
            reached = ks.revision
        events, trimmed = _within_bytes(events)
        if trimmed:
            reached = events[-1].kv.mod_revision
        sent = [self._event(ks, w, e) for e in events if not (w.no_delete if e.deleted else w.no_put)]
        w.next_revision = reached + 1
        if sent:
            w.last_sent = asyncio.get_running_loop().time()
            await self.context.write(
                pb.WatchResponse(header=header_of(self.node, ks.revision), watch_id=w.watch_id, events=sent)
            )

    @staticmethod
    def _event(ks: mvcc.Keyspace, w: Watcher, e: mvcc.Event) -> kvpb.Event:
        event = kvpb.Event(type=kvpb.Event.DELETE if e.deleted else kvpb.Event.PUT, kv=kv_pb(e.kv))
        if w.prev_kv:
            prev = ks.previous(e)
            if prev is not None:
                event.prev_kv.CopyFrom(kv_pb(prev))
        return event


def _within_bytes(events: list[mvcc.Event]) -> tuple[list[mvcc.Event], bool]:
    """The longest run of whole revisions from the start within PAGE_BYTES (the first revision whatever its
    size), and whether any were left out."""
    size = 0
    for i, e in enumerate(events):
        size += len(e.kv.key) + len(e.kv.value)
        first_revision = e.kv.mod_revision == events[0].kv.mod_revision
        if size > PAGE_BYTES and not first_revision:
            cut = events[i].kv.mod_revision
            return [x for x in events[:i] if x.kv.mod_revision < cut], True
    return events, False
