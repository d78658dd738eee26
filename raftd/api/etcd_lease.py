"""etcd's Lease service, and the leader's clock for leases (Lessor).

A lease and its TTL are replicated state (raftd.kv.mvcc); when it expires is not. As in etcd, only the
leader keeps each lease's deadline, in memory: keep-alives reach it (a follower forwards them), and once a
deadline passes the leader proposes the lease's revoke, which deletes its keys through the log like any
write. A new leader knows no deadlines, so it gives every lease its whole TTL again plus an election
timeout (etcd's Promote): a failover never expires a lease its client kept alive.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc

from raftd.errors import NotLeader, Unavailable
from raftd.kv import Command, Op, Result, mvcc
from raftd.node import RaftNode
from raftd.pb import etcd_rpc_pb2 as pb
from raftd.pb import etcd_rpc_pb2_grpc as rpc
from raftd.pipe import NOT_APPLIED

from .common import FORWARDED, Calls, LongCalls, time_left, was_forwarded
from .etcd import EtcdError, answer, forwarded, header_of, member_id_of, through_log

log = logging.getLogger("raftd.api")

REVOKES_AT_ONCE = 64  # expired leases the leader proposes to revoke per check
CHECK_INTERVAL_S = 0.5  # how often the leader looks for expired leases
MAX_TTL_S = 9_000_000_000  # etcd's MaxLeaseTTL: beyond it a grant is refused


class Lessor:
    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self.deadlines: dict[int, float] = {}  # lease -> loop time it expires at (the leader's only)
        self.term = 0  # the term the deadlines were set in; 0 while not leading
        self.revoking: set[int] = set()
        hi = node.cluster.election_timeout_ms[1]
        self.extend_s = hi / 1000  # what a new leader adds to every lease
        # etcd's minimum TTL: one and a half election timeouts, so that a lease outlives an election.
        self.min_ttl = max(1, math.ceil(1.5 * hi / 1000))

    def _sync(self, *, whole: bool = True) -> mvcc.Keyspace | None:
        """The keyspace when this node leads, with a deadline for every lease in it; None otherwise.
        whole=False (a keep-alive, a question): the scan of every lease only when the term changed."""
        if not self.node.is_leader():
            self.deadlines.clear()
            self.term = 0
            return None
        try:
            ks = self.node.keyspace()
        except Unavailable:
            return None
        now = asyncio.get_running_loop().time()
        if self.term != self.node.term:
            self.term = self.node.term
            self.deadlines = {lease: now + ttl + self.extend_s for lease, ttl in ks.leases()}
            return ks
        if not whole:
            return ks
        leases = dict(ks.leases())
        for lease, ttl in leases.items():
            self.deadlines.setdefault(lease, now + ttl)  # granted since: its TTL runs from now
        for lease in [x for x in self.deadlines if x not in leases]:
            del self.deadlines[lease]
        return ks

    def renew(self, lease: int) -> int:
        """A keep-alive on the leader: the lease's TTL, which runs again from now; 0 when it is gone."""
        ks = self._sync(whole=False)
        if ks is None:
            raise NotLeader(self.node.leader())
        ttl = ks.lease_ttl(lease)
        if ttl is None or lease in self.revoking:
            return 0
        self.deadlines[lease] = asyncio.get_running_loop().time() + ttl
        return ttl

    def remaining(self, lease: int) -> tuple[int, int, list[bytes]] | None:
        """(seconds left, granted TTL, keys) of a lease, on the leader; None when there is none."""
        ks = self._sync(whole=False)
        if ks is None:
            raise NotLeader(self.node.leader())
        ttl = ks.lease_ttl(lease)
        if ttl is None:
            return None
        now = asyncio.get_running_loop().time()
        left = self.deadlines.setdefault(lease, now + ttl) - now  # granted since the last scan
        return max(0, math.ceil(left)), ttl, ks.lease_keys(lease)

    def count(self) -> int:
        """How many leases the cluster holds, as the leader knows."""
        return self.node.keyspace().lease_count()

    def new_id(self) -> int:
        """A lease id no lease has now (the leader's choice, logged with the grant)."""
        ks = self.node.keyspace()
        while True:
            lease = random.getrandbits(62) + 1
            if ks.lease_ttl(lease) is None:
                return lease

    async def run(self) -> None:
        """On the leader, revoke through the log the leases whose deadline passed."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            try:
                self._expire()
            except mvcc.KeyspaceCorrupt as e:
                self.node.damaged(e)
                return
            except Exception:
                log.exception("checking the leases failed; trying again")

    def _expire(self) -> None:
        if self._sync() is not None:
            now = asyncio.get_running_loop().time()
            due = [x for x, at in self.deadlines.items() if at <= now and x not in self.revoking]
            for lease in due[:REVOKES_AT_ONCE]:
                request = mvcc.LeaseRevokeRequest(lease)
                try:
                    fut = self.node.propose_nowait(Command(Op.MVCC, b"", mvcc.encode_request(request)))
                except (NotLeader, Unavailable):
                    return
                self.revoking.add(lease)
                fut.add_done_callback(functools.partial(self._revoked, lease))

    def _revoked(self, lease: int, f: asyncio.Future[Result]) -> None:
        self.revoking.discard(lease)
        if not f.cancelled() and f.exception() is None:
            self.deadlines.pop(lease, None)


class EtcdLease(rpc.LeaseServicer):
    def __init__(self, node: RaftNode, calls: Calls, lessor: Lessor) -> None:
        self.node = node
        self.calls = calls
        self.lessor = lessor
        self.streams = LongCalls()
        self.open = 0  # LeaseKeepAlive calls in progress

    async def LeaseGrant(
        self, request: pb.LeaseGrantRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LeaseGrantResponse:
        async def grant() -> pb.LeaseGrantResponse:
            if request.TTL > MAX_TTL_S:
                raise mvcc.KeyspaceError("too large lease TTL")
            if request.ID < 0:
                raise mvcc.KeyspaceError("lease ID must be positive")
            ttl = max(request.TTL, self.lessor.min_ttl)
            if not self.node.is_leader():  # the leader picks the id: the request goes there as it is
                leader = self.node.leader()
                if leader is None or was_forwarded(context):
                    raise NotLeader(None)
                theirs = await forwarded(
                    self.node, leader.id,
                    lambda ch: rpc.LeaseStub(ch).LeaseGrant(request, metadata=FORWARDED),
                    time_left(context, self.node.tuning),
                )  # fmt: skip
                theirs.header.member_id = member_id_of(self.node.me.id)
                return theirs
            limit = self.node.limits.max_leases
            if self.lessor.count() >= limit:
                raise EtcdError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"etcdserver: the cluster holds {limit} leases already (--max-leases)",
                    NOT_APPLIED,
                )
            lease = request.ID or self.lessor.new_id()
            return await through_log(
                self.node, self.calls, context,
                lambda: mvcc.LeaseGrantRequest(lease, ttl),
                lambda ch: rpc.LeaseStub(ch).LeaseGrant(request, metadata=FORWARDED),
                lambda done, header: pb.LeaseGrantResponse(header=header, ID=lease, TTL=ttl),
            )  # fmt: skip

        return await answer(self.node, context, grant(), write=True)

    async def LeaseRevoke(
        self, request: pb.LeaseRevokeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LeaseRevokeResponse:
        work = through_log(
            self.node, self.calls, context,
            lambda: mvcc.LeaseRevokeRequest(request.ID),
            lambda ch: rpc.LeaseStub(ch).LeaseRevoke(request, metadata=FORWARDED),
            lambda done, header: pb.LeaseRevokeResponse(header=header),
        )  # fmt: skip
        return await answer(self.node, context, work, write=True)

    async def LeaseTimeToLive(
        self, request: pb.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LeaseTimeToLiveResponse:
        async def ask() -> pb.LeaseTimeToLiveResponse:
            try:
                found = self.lessor.remaining(request.ID)
            except NotLeader as e:
                if e.leader is None or was_forwarded(context):
                    raise
                stub = rpc.LeaseStub(self.node.channel_to(e.leader.id))
                theirs: pb.LeaseTimeToLiveResponse = await stub.LeaseTimeToLive(
                    request, metadata=FORWARDED, timeout=time_left(context, self.node.tuning)
                )
                theirs.header.CopyFrom(header_of(self.node))
                return theirs
            if found is None:
                return pb.LeaseTimeToLiveResponse(header=header_of(self.node), ID=request.ID, TTL=-1)
            left, granted, keys = found
            return pb.LeaseTimeToLiveResponse(
                header=header_of(self.node),
                ID=request.ID,
                TTL=left,
                grantedTTL=granted,
                keys=keys if request.keys else [],
            )

        return await answer(self.node, context, ask(), write=False)

    async def LeaseLeases(
        self, request: pb.LeaseLeasesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LeaseLeasesResponse:
        async def leases() -> pb.LeaseLeasesResponse:
            ks = self.node.keyspace()
            return pb.LeaseLeasesResponse(
                header=header_of(self.node, ks.revision),
                leases=[pb.LeaseStatus(ID=x) for x, _ in ks.leases()],
            )

        return await answer(self.node, context, leases(), write=False)

    async def LeaseKeepAlive(  # type: ignore[override]  # answers with context.write(), not an iterator
        self, requests: AsyncIterator[pb.LeaseKeepAliveRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Each keep-alive answered in turn; on a follower, passed to the leader's own call."""
        limit = self.node.limits.max_keepalive_streams
        if self.open >= limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"etcdserver: this node serves at most {limit} keep-alive streams at once "
                "(--max-keepalive-streams)",
            )
        self.open += 1
        try:
            await self._keep_alive(requests, context)
        finally:
            self.open -= 1

    async def _keep_alive(
        self, requests: AsyncIterator[pb.LeaseKeepAliveRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        async with self.streams.track():
            leader_call: Any = None
            try:
                async for request in requests:
                    try:
                        ttl = self.lessor.renew(request.ID)
                    except NotLeader as e:
                        if e.leader is None or was_forwarded(context):
                            await context.abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
                        if leader_call is None:
                            stub = rpc.LeaseStub(self.node.channel_to(e.leader.id))
                            leader_call = stub.LeaseKeepAlive(metadata=FORWARDED)  # type: ignore[call-arg]
                        await leader_call.write(request)
                        theirs = await leader_call.read()
                        if theirs is grpc.aio.EOF:  # type: ignore[attr-defined]
                            await context.abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")
                        ttl = theirs.TTL
                    await context.write(
                        pb.LeaseKeepAliveResponse(header=header_of(self.node), ID=request.ID, TTL=ttl)
                    )
            finally:
                if leader_call is not None:
                    leader_call.cancel()
