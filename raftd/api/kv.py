"""The raftd.v1 client services: KV (writes, linearizable or local reads) and Admin."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from raftd.backup import pack
from raftd.config import ConfigError, parse_address
from raftd.errors import Unavailable
from raftd.kv.members import Change
from raftd.node import MAX_SUSPEND_S, MemberView, RaftNode
from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc
from raftd.pipe import NOT_APPLIED, OUTCOME_KEY

from .common import (
    FORWARDED,
    Calls,
    Forwarder,
    LongCalls,
    RequestFailed,
    check_key,
    delete_command,
    failure,
    grpc_errors,
    on_leader,
    on_node,
    put_command,
    read,
    time_left,
    was_forwarded,
    write,
)
from .stream import StreamSession

log = logging.getLogger("raftd.api")


class KVService(kv_pb2_grpc.KVServicer):
    """One unary call per operation; concurrent calls share proposals, fsyncs and ReadIndex rounds in the
    node, and a follower forwards writes to the leader on one stream (common.Forwarder)."""

    def __init__(self, node: RaftNode, calls: Calls, forwarder: Forwarder) -> None:
        self.node = node
        self.calls = calls
        self.forwarder = forwarder
        self.streams = LongCalls()
        self.streams_open = 0

    @grpc_errors
    async def Put(
        self, request: pb.PutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PutResponse:
        try:
            cmd = put_command(request, self.node.limits)
        except RequestFailed as e:
            raise failure(e, write=True) from None
        index, _ = await write(self.calls, self.forwarder, context, cmd, request)
        return pb.PutResponse(index=index)

    @grpc_errors
    async def Delete(
        self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteResponse:
        try:
            cmd = delete_command(request, self.node.limits)
        except RequestFailed as e:
            raise failure(e, write=True) from None
        index, existed = await write(self.calls, self.forwarder, context, cmd, request)
        return pb.DeleteResponse(deleted=existed, index=index)

    @grpc_errors
    async def Get(
        self, request: pb.GetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetResponse:
        key = check_key(request.key, self.node.limits)
        value, index = await read(self.calls, context, key, request.local)
        return pb.GetResponse(found=value is not None, value=value or b"", index=index)

    async def Stream(  # type: ignore[override]  # answers with context.write(), not an iterator
        self, requests: AsyncIterator[pb.RequestBatch], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Pipelined requests, answered in batches (raftd/api/stream.py); server stop ends it quietly.

        Past Limits.max_streams the call is refused before any request is read, and says so (outcome
        "not-applied"), so that a client may send its requests again as unary calls.
        """
        limits = self.node.limits
        if self.streams_open >= limits.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this node serves at most {limits.max_streams} streams at once (--max-streams); "
                "use unary calls",
                ((OUTCOME_KEY, NOT_APPLIED),),
            )
        self.streams_open += 1
        try:
            async with self.streams.track():
                await StreamSession(self.node, limits, self.node.tuning).run(requests, context)
        finally:
            self.streams_open -= 1


class AdminService(kv_pb2_grpc.AdminServicer):
    def __init__(self, node: RaftNode) -> None:
        self.node = node

    @grpc_errors
    async def GetLeader(
        self, request: pb.GetLeaderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetLeaderResponse:
        leader = self.node.leader()
        if leader is None:
            return pb.GetLeaderResponse(leader_id=-1)
        return pb.GetLeaderResponse(leader_id=leader.id, address=leader.address, term=self.node.term)

    @grpc_errors
    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusResponse:
        st = self.node.status()
        return pb.StatusResponse(
            id=st.id,
            address=st.address,
            role=st.role,
            term=st.term,
            leader_id=st.leader_id,
            commit_index=st.commit_index,
            applied_index=st.applied_index,
            last_log_index=st.last_log_index,
            peers=[pb.PeerStatus(id=i, address=a, match_index=m) for i, a, m in st.peers],
            cluster=st.cluster,
            cluster_id=st.cluster_id,
            suspended=st.suspended,
            alarms=st.alarms,
        )

    @grpc_errors
    async def Suspend(
        self, request: pb.SuspendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SuspendResponse:
        suspend(self.node, request.period)
        return pb.SuspendResponse()

    async def Backup(
        self, request: pb.BackupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.BackupChunk]:
        """Stream a backup file; taken on the leader (a follower relays the leader's stream)."""
        log.info("Command from client: backup")
        async for data in backup_chunks(self.node, context):
            yield pb.BackupChunk(data=data)

    @grpc_errors
    async def TransferLeader(
        self, request: pb.TransferLeaderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.TransferLeaderResponse:
        target = request.target_id
        if self.node.member(target) is None:
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, f"no node {target} in the cluster")

        async def local() -> pb.TransferLeaderResponse:
            leader_id = await self.node.transfer_leader(target)
            leader = self.node.member(leader_id)
            address = leader.address if leader is not None else ""
            return pb.TransferLeaderResponse(leader_id=leader_id, address=address, term=self.node.term)

        async def forward(channel: grpc.aio.Channel, timeout: float) -> pb.TransferLeaderResponse:
            stub = kv_pb2_grpc.AdminStub(channel)
            return await stub.TransferLeader(request, timeout=timeout, metadata=FORWARDED)

        return await on_leader(self.node, context, local, forward)

    # -- membership ---------------------------------------------------------------------------------
    @grpc_errors
    async def MemberList(
        self, request: pb.MemberListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MemberListResponse:
        """Served by any member from what it has applied: a joining node asks whichever member it reaches.
        A node outside the membership (its addition has not reached it yet, or it was removed) only knows
        the membership it started from: it refuses, so that a client asks another node."""
        node = self.node
        if not node.is_member(node.id):
            raise RequestFailed(
                grpc.StatusCode.UNAVAILABLE,
                f"node {node.me.id} is not a member of the cluster (joining, or removed): ask a member",
            )
        lo, hi = node.cluster.election_timeout_ms
        leader = node.leader()
        return pb.MemberListResponse(
            members=[_member_pb(m) for m in node.members()],
            cluster=node.identity.name,
            cluster_id=node.identity.id,
            bootstrap_voters=node.bootstrap_voters(),
            election_timeout_min_ms=lo,
            election_timeout_max_ms=hi,
            heartbeat_interval_ms=node.cluster.heartbeat_interval_ms,
            leader_id=leader.id if leader is not None else -1,
            recorded=node.membership_recorded(),
        )

    @grpc_errors
    async def MemberAdd(
        self, request: pb.MemberAddRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MemberChangeResponse:
        address = _address(request.address)
        node = request.id if request.HasField("id") else -1
        if request.HasField("id") and node < 0:
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, f"node id {node} is negative")
        return await self._change(context, "add", Change.ADD_LEARNER, node, address, request)

    @grpc_errors
    async def MemberPromote(
        self, request: pb.MemberPromoteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MemberChangeResponse:
        return await self._change(context, "promote", Change.ADD_VOTER, request.id, "", request)

    @grpc_errors
    async def MemberRemove(
        self, request: pb.MemberRemoveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MemberChangeResponse:
        return await self._change(context, "remove", Change.REMOVE, request.id, "", request)

    @grpc_errors
    async def MemberUpdate(
        self, request: pb.MemberUpdateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MemberChangeResponse:
        address = _address(request.address)
        return await self._change(context, "update", Change.UPDATE, request.id, address, request)

    async def _change(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        verb: str,
        change: Change,
        node_id: int,
        address: str,
        request: Any,
    ) -> pb.MemberChangeResponse:
        """On the leader (forwarded there from a follower): propose, wait until applied, answer with the
        membership after it."""
        node = self.node
        if change is not Change.ADD_LEARNER and node_id < 0:
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT, f"node id {node_id} is negative", NOT_APPLIED
            )
        log.info("Command from client: member %s %s", verb, address if node_id < 0 else node_id)

        async def local() -> pb.MemberChangeResponse:
            before = {m.id: m for m in node.members()}
            changed = await node.change_member(change, node_id, address)
            after = node.members()
            member = next((m for m in after if m.id == changed), None) or before.get(changed)
            return pb.MemberChangeResponse(
                member=_member_pb(member) if member is not None else pb.Member(id=changed, address=address),
                members=[_member_pb(m) for m in after],
            )

        async def forward(channel: grpc.aio.Channel, timeout: float) -> pb.MemberChangeResponse:
            stub = kv_pb2_grpc.AdminStub(channel)
            method = getattr(stub, f"Member{verb.capitalize()}")
            answer: pb.MemberChangeResponse = await method(request, timeout=timeout, metadata=FORWARDED)
            return answer

        return await on_leader(node, context, local, forward, write=True)


async def backup_chunks(node: RaftNode, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
    """A backup file in pieces, taken on the leader (a follower relays the leader's); a failure aborts
    the call."""
    leader = node.leader()
    if leader is None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "no leader known; retry shortly")
    if not node.is_leader():
        if was_forwarded(context):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not the leader; try {leader.address}")
        stub = kv_pb2_grpc.AdminStub(node.channel_to(leader.id))
        try:
            timeout = time_left(context, node.tuning)
            async for chunk in stub.Backup(pb.BackupRequest(), timeout=timeout, metadata=FORWARDED):
                yield chunk.data
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or e.code().name)
        return
    try:
        meta, image = await on_node(node, context, node.backup())
    except RequestFailed as e:
        await context.abort(e.code, e.message)
    raw = pack(node.identity.name, meta.index, meta.term, image)
    size = node.tuning.backup_chunk_bytes
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


def _address(text: str) -> str:
    try:
        return parse_address(text)
    except ConfigError:
        raise RequestFailed(
            grpc.StatusCode.INVALID_ARGUMENT, f"address {text[:80]!r} is not one HOST:PORT", NOT_APPLIED
        ) from None


def _member_pb(m: MemberView) -> pb.Member:
    return pb.Member(
        id=m.id, address=m.address, learner=m.learner, incarnation=m.incarnation, match_index=m.match_index
    )


def suspend(node: RaftNode, period: int) -> None:
    log.info("Command from client: suspend %d", period)
    if not 0 < period <= MAX_SUSPEND_S:
        raise RequestFailed(
            grpc.StatusCode.INVALID_ARGUMENT, f"period must be 1..{MAX_SUSPEND_S} seconds, not {period}"
        )
    try:
        node.suspend(period)
    except Unavailable as e:
        raise RequestFailed(grpc.StatusCode.UNAVAILABLE, str(e)) from None
