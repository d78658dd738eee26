"""etcd's v3 API (etcdserverpb) over the multi-version keyspace (raftd.kv.mvcc), on the node's one port:
KV, Cluster and Maintenance (docs/etcd.md); Watch and Lease are in etcd_watch.py and etcd_lease.py.

Writes (Put, DeleteRange, Txn, Compact) go through the log as Op.MVCC entries; a follower forwards them to
the leader. A Txn goes through the log whole, its reads included, so they are linearizable. Range is
linearizable (a ReadIndex barrier, as raftd.v1's Get) unless serializable, which reads this node's state.

Failures are etcd's status codes and messages, so that etcd's clients handle them as they do etcd's: a
write refused before it was proposed ("etcdserver: no leader", invalid input) never applies; "etcdserver:
request timed out" and "etcdserver: leader changed" may have applied, as with etcd. A failed write also
carries raftd's outcome trailer (raftd-outcome: not-applied or unknown).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from raftd.backup import pack_for_etcd, unpack
from raftd.config import ConfigError, parse_address
from raftd.core import ConfChangeRefused
from raftd.errors import LeaderChanging, NotCapable, NotLeader, OutcomeUnknown, TargetUnreachable, Unavailable
from raftd.kv import Command, Op, Result, mvcc
from raftd.kv.members import Change
from raftd.node import RaftNode
from raftd.pb import etcd_kv_pb2 as kvpb
from raftd.pb import etcd_rpc_pb2 as pb
from raftd.pb import etcd_rpc_pb2_grpc as rpc
from raftd.pipe import NOT_APPLIED, OUTCOME_KEY, UNKNOWN, Outcome, never_connected
from raftd.settings import Limits

from .common import FORWARDED, Calls, barrier, time_left, was_forwarded
from .kv import backup_chunks

# What Status reports: the etcd release whose API this serves (clients compare it with what they need).
ETCD_VERSION = "3.4.0"

T = TypeVar("T")
E = TypeVar("E")
Resp = TypeVar("Resp")


class EtcdError(Exception):
    """A request failed with etcd's status and message; a write's outcome rides in a trailer."""

    def __init__(self, code: grpc.StatusCode, message: str, outcome: Outcome | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome


def _invalid(message: str) -> EtcdError:
    return EtcdError(grpc.StatusCode.INVALID_ARGUMENT, f"etcdserver: {message}", NOT_APPLIED)


EMPTY_KEY = "key is not provided"
TOO_LARGE = "request is too large"


def _keyspace_error(e: mvcc.KeyspaceError) -> EtcdError:
    """etcd's status for a request the keyspace refused: it wrote nothing."""
    if isinstance(e, mvcc.Compacted | mvcc.FutureRevision):
        return EtcdError(grpc.StatusCode.OUT_OF_RANGE, f"etcdserver: {e}", NOT_APPLIED)
    if isinstance(e, mvcc.LeaseNotFound):
        return EtcdError(grpc.StatusCode.NOT_FOUND, f"etcdserver: {e}", NOT_APPLIED)
    if isinstance(e, mvcc.LeaseExists):
        return EtcdError(grpc.StatusCode.FAILED_PRECONDITION, f"etcdserver: {e}", NOT_APPLIED)
    return _invalid(str(e))


def _failure(e: BaseException) -> EtcdError:
    """etcd's words for the node's failures: refused before proposing (never applies), or unknown."""
    if isinstance(e, EtcdError):
        return e
    if isinstance(e, mvcc.KeyspaceError):
        return _keyspace_error(e)
    if isinstance(e, NotLeader | LeaderChanging):
        return EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", NOT_APPLIED)
    if isinstance(e, OutcomeUnknown):
        return EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed", UNKNOWN)
    if isinstance(e, NotCapable):
        return EtcdError(grpc.StatusCode.UNAVAILABLE, f"etcdserver: not capable: {e}", NOT_APPLIED)
    if isinstance(e, Unavailable):
        return EtcdError(grpc.StatusCode.UNAVAILABLE, f"etcdserver: {e}", NOT_APPLIED)
    if isinstance(e, TimeoutError):
        return EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", UNKNOWN)
    return EtcdError(grpc.StatusCode.INTERNAL, f"etcdserver: {e or type(e).__name__}", UNKNOWN)


async def answer(
    node: RaftNode, context: grpc.aio.ServicerContext[Any, Any], work: Awaitable[T], *, write: bool
) -> T:
    try:
        return await work
    except Exception as e:
        if isinstance(e, mvcc.KeyspaceCorrupt):
            node.damaged(e)
        err = _failure(e)
        trailers = ((OUTCOME_KEY, err.outcome),) if write and err.outcome else ()
        await context.abort(err.code, err.message, trailers)
        raise AssertionError("abort() returned") from None


# -- etcd's messages to the keyspace's requests, checked as etcd checks them ---------------------------


def _check_key(key: bytes, limits: Limits) -> bytes:
    if not key:
        raise _invalid(EMPTY_KEY)
    if len(key) > limits.max_key_bytes:
        raise _invalid(TOO_LARGE)
    return key


def _enum(kind: Callable[[int], E], value: int, what: str) -> E:
    """A protobuf enum field as ours: proto3 lets a client send any number."""
    try:
        return kind(value)
    except ValueError:
        raise _invalid(f"{what} {value} is not one etcd defines") from None


def range_of(r: pb.RangeRequest, limits: Limits) -> mvcc.RangeRequest:
    return mvcc.RangeRequest(
        _check_key(r.key, limits),
        r.range_end,
        r.revision,
        max(0, r.limit),
        r.keys_only,
        r.count_only,
        _enum(mvcc.SortOrder, r.sort_order, "sort order"),
        _enum(mvcc.SortTarget, r.sort_target, "sort target"),
        r.min_mod_revision,
        r.max_mod_revision,
        r.min_create_revision,
        r.max_create_revision,
    )


def put_of(r: pb.PutRequest, limits: Limits) -> mvcc.PutRequest:
    key = _check_key(r.key, limits)
    if len(r.value) > limits.max_value_bytes:
        raise _invalid(TOO_LARGE)
    if r.ignore_value and r.value:
        raise _invalid("value is provided")
    if r.ignore_lease and r.lease:
        raise _invalid("lease is provided")
    return mvcc.PutRequest(key, r.value, r.lease, r.prev_kv, r.ignore_value, r.ignore_lease)


def delete_of(r: pb.DeleteRangeRequest, limits: Limits) -> mvcc.DeleteRangeRequest:
    return mvcc.DeleteRangeRequest(_check_key(r.key, limits), r.range_end, r.prev_kv)


def _compare_of(c: pb.Compare, limits: Limits) -> mvcc.Compare:
    target = _enum(mvcc.CompareTarget, c.target, "compare target")
    value: bytes | int
    if target == mvcc.CompareTarget.VALUE:
        value = c.value
    elif target == mvcc.CompareTarget.VERSION:
        value = c.version
    elif target == mvcc.CompareTarget.CREATE:
        value = c.create_revision
    elif target == mvcc.CompareTarget.MOD:
        value = c.mod_revision
    else:
        value = c.lease
    result = _enum(mvcc.CompareResult, c.result, "compare result")
    return mvcc.Compare(_check_key(c.key, limits), target, result, value, c.range_end)


def txn_of(r: pb.TxnRequest, limits: Limits) -> mvcc.TxnRequest:
    """Checked whole before it is proposed: the op count (both branches, nested ones too), each request,
    and etcd's rule against writing one key twice."""
    ops = [0]

    def branch(requests: Any) -> tuple[mvcc.Request, ...]:
        out: list[mvcc.Request] = []
        for op in requests:
            ops[0] += 1
            if ops[0] > limits.max_txn_ops:
                raise _invalid("too many operations in txn request")
            kind = op.WhichOneof("request")
            if kind == "request_range":
                out.append(range_of(op.request_range, limits))
            elif kind == "request_put":
                out.append(put_of(op.request_put, limits))
            elif kind == "request_delete_range":
                out.append(delete_of(op.request_delete_range, limits))
            elif kind == "request_txn":
                out.append(nested(op.request_txn))
            else:
                raise _invalid("a txn request op is empty")
        return tuple(out)

    def nested(t: pb.TxnRequest) -> mvcc.TxnRequest:
        compares = tuple(_compare_of(c, limits) for c in t.compare)
        return mvcc.TxnRequest(compares, branch(t.success), branch(t.failure))

    txn = nested(r)
    try:
        mvcc.check_txn(txn)
    except mvcc.KeyspaceError as e:
        raise _keyspace_error(e) from None
    return txn


# -- the keyspace's answers as etcd's messages -----------------------------------------------------------


def kv_pb(kv: mvcc.KeyValue) -> kvpb.KeyValue:
    return kvpb.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=kv.value,
        lease=kv.lease,
    )


def _range_pb(res: mvcc.RangeResult, header: pb.ResponseHeader) -> pb.RangeResponse:
    return pb.RangeResponse(header=header, kvs=[kv_pb(kv) for kv in res.kvs], more=res.more, count=res.count)


def _put_pb(res: mvcc.PutResult, header: pb.ResponseHeader) -> pb.PutResponse:
    answer = pb.PutResponse(header=header)
    if res.prev_kv is not None:
        answer.prev_kv.CopyFrom(kv_pb(res.prev_kv))
    return answer


def _delete_pb(res: mvcc.DeleteRangeResult, header: pb.ResponseHeader) -> pb.DeleteRangeResponse:
    return pb.DeleteRangeResponse(
        header=header, deleted=res.deleted, prev_kvs=[kv_pb(kv) for kv in res.prev_kvs]
    )


def _txn_pb(res: mvcc.TxnResult, header: pb.ResponseHeader) -> pb.TxnResponse:
    answer = pb.TxnResponse(header=header, succeeded=res.succeeded)
    for r in res.responses:
        op = answer.responses.add()
        if isinstance(r, mvcc.RangeResult):
            op.response_range.CopyFrom(_range_pb(r, header))
        elif isinstance(r, mvcc.PutResult):
            op.response_put.CopyFrom(_put_pb(r, header))
        elif isinstance(r, mvcc.DeleteRangeResult):
            op.response_delete_range.CopyFrom(_delete_pb(r, header))
        else:
            op.response_txn.CopyFrom(_txn_pb(r, header))
    return answer


def cluster_id_of(cluster_id: str, name: str) -> int:
    """A stable uint64 for the cluster (etcd's cluster_id), from raftd's cluster id (its name until the
    first leader has recorded one)."""
    digest = hashlib.sha256((cluster_id or name).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def member_id_of(node_id: int) -> int:
    """etcd reads member id 0 as "none", and raftd's node 0 is real."""
    return node_id + 1


def header_of(node: RaftNode, revision: int | None = None) -> pb.ResponseHeader:
    """This node's header (a forwarded write's answer gets it too: etcd's member_id is the member asked)."""
    if revision is None:
        try:
            revision = node.keyspace().revision
        except Unavailable:
            revision = 0
    return pb.ResponseHeader(
        cluster_id=cluster_id_of(node.identity.id, node.identity.name),
        member_id=member_id_of(node.me.id),
        revision=revision,
        raft_term=node.term,
    )


# -- the services ---------------------------------------------------------------------------------------


class EtcdKV(rpc.KVServicer):
    def __init__(self, node: RaftNode, calls: Calls) -> None:
        self.node = node
        self.calls = calls

    async def Range(
        self, request: pb.RangeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RangeResponse:
        return await answer(self.node, context, self._range(request, context), write=False)

    async def _range(
        self, request: pb.RangeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RangeResponse:
        r = range_of(request, self.node.limits)
        self.calls.start()
        try:
            if not request.serializable:
                limit = time_left(context, self.node.tuning)
                async with asyncio.timeout(limit):
                    await barrier(self.node, limit)
            ks = self.node.keyspace()
            result = ks.range(r)
            return _range_pb(result, header_of(self.node, ks.revision))
        finally:
            self.calls.end()

    async def Put(
        self, request: pb.PutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PutResponse:
        work = through_log(
            self.node, self.calls, context,
            lambda: put_of(request, self.node.limits),
            lambda ch: rpc.KVStub(ch).Put(request, metadata=FORWARDED),
            lambda done, header: _put_pb(_as(mvcc.PutResult, done), header),
        )  # fmt: skip
        return await answer(self.node, context, work, write=True)

    async def DeleteRange(
        self, request: pb.DeleteRangeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteRangeResponse:
        work = through_log(
            self.node, self.calls, context,
            lambda: delete_of(request, self.node.limits),
            lambda ch: rpc.KVStub(ch).DeleteRange(request, metadata=FORWARDED),
            lambda done, header: _delete_pb(_as(mvcc.DeleteRangeResult, done), header),
        )  # fmt: skip
        return await answer(self.node, context, work, write=True)

    async def Txn(
        self, request: pb.TxnRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.TxnResponse:
        work = through_log(
            self.node, self.calls, context,
            lambda: txn_of(request, self.node.limits),
            lambda ch: rpc.KVStub(ch).Txn(request, metadata=FORWARDED),
            lambda done, header: _txn_pb(_as(mvcc.TxnResult, done), header),
        )  # fmt: skip
        return await answer(self.node, context, work, write=True)

    async def Compact(
        self, request: pb.CompactionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CompactionResponse:
        work = through_log(
            self.node, self.calls, context,
            lambda: mvcc.CompactRequest(request.revision),
            lambda ch: rpc.KVStub(ch).Compact(request, metadata=FORWARDED),
            lambda done, header: pb.CompactionResponse(header=header),
        )  # fmt: skip
        return await answer(self.node, context, work, write=True)


async def through_log(
    node: RaftNode,
    calls: Calls,
    context: grpc.aio.ServicerContext[Any, Any],
    build: Callable[[], mvcc.LoggedRequest],
    forward: Callable[[grpc.aio.Channel], Awaitable[Any]],
    respond: Callable[[object, pb.ResponseHeader], Resp],
) -> Resp:
    """A write through the log, answered as etcd answers it: respond(the keyspace's answer, the header at
    its revision), or its refusal as etcd's error. On a follower, the leader's answer to the same call,
    with this member's id in its header (etcd's member_id is the member asked). build() runs here, so that
    the caller's answer() reports invalid input."""
    result = await propose(node, calls, build(), context, forward)
    if not isinstance(result, Result):
        result.header.member_id = member_id_of(node.me.id)
        return result  # type: ignore[no-any-return]  # the same call's response, from the leader
    if isinstance(result.answer, mvcc.KeyspaceError):
        raise _keyspace_error(result.answer)
    return respond(result.answer, header_of(node, result.revision))


async def propose(
    node: RaftNode,
    calls: Calls,
    r: mvcc.LoggedRequest,
    context: grpc.aio.ServicerContext[Any, Any],
    forward: Callable[[grpc.aio.Channel], Awaitable[Resp]],
) -> Result | Resp:
    """The entry's result once applied here; on a follower, the leader's answer to the same call."""
    limit = time_left(context, node.tuning)
    calls.start()
    try:
        try:
            future = node.propose_nowait(Command(Op.MVCC, b"", mvcc.encode_request(r)))
        except NotLeader as e:
            if e.leader is None or was_forwarded(context):
                raise
            return await forwarded(node, e.leader.id, forward, limit)
        async with asyncio.timeout(limit):
            return await future
    finally:
        calls.end()


def _as(kind: type[T], done: object) -> T:
    """The keyspace's answer, of the kind the request makes."""
    if not isinstance(done, kind):
        raise TypeError(f"the keyspace answered {type(done).__name__}, not {kind.__name__}")
    return done


async def forwarded(
    node: RaftNode, leader: int, call: Callable[[grpc.aio.Channel], Awaitable[Resp]], limit: float
) -> Resp:
    """A follower's write, sent to the leader as the same etcd call; the leader's error passes on as it is,
    with its outcome trailer (unknown when the call broke once it may have been sent)."""
    try:
        async with asyncio.timeout(limit):
            return await call(node.channel_to(leader))
    except grpc.aio.AioRpcError as err:
        details = err.details() or err.code().name
        if never_connected(details):
            raise EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", NOT_APPLIED) from None
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:  # a leader of the release before: not sent on
            raise EtcdError(
                grpc.StatusCode.UNAVAILABLE,
                "etcdserver: not capable: the leader runs an earlier release of raftd",
                NOT_APPLIED,
            ) from None
        trailers: Any = err.trailing_metadata() or ()
        told = next((v for k, v in trailers if k == OUTCOME_KEY), None)
        outcome: Outcome = NOT_APPLIED if told == NOT_APPLIED else UNKNOWN
        raise EtcdError(err.code(), details, outcome) from None


class EtcdCluster(rpc.ClusterServicer):
    """etcd's membership calls over raftd's (docs/operations.md, "Changing the membership"): on the leader,
    one change at a time, each applied before it answers."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node

    def _members(self) -> list[pb.Member]:
        return [
            pb.Member(
                ID=member_id_of(m.id),
                name=f"node-{m.id}",
                peerURLs=[f"http://{m.address}"] if m.address else [],
                clientURLs=[f"http://{m.address}"] if m.address else [],
                isLearner=m.learner,
            )
            for m in self.node.members()
        ]

    async def MemberList(
        self, request: pb.MemberListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MemberListResponse:
        return pb.MemberListResponse(header=header_of(self.node), members=self._members())

    async def MemberAdd(
        self, request: pb.MemberAddRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MemberAddResponse:
        async def add() -> pb.MemberAddResponse:
            address = _peer_address(request.peerURLs)
            node_id = await self._change(
                Change.ADD_LEARNER,
                -1,
                address,
                context,
                lambda ch: rpc.ClusterStub(ch).MemberAdd(request, metadata=FORWARDED),
            )
            if isinstance(node_id, pb.MemberAddResponse):
                return node_id
            added = pb.Member(ID=member_id_of(node_id), peerURLs=[f"http://{address}"], isLearner=True)
            return pb.MemberAddResponse(header=header_of(self.node), member=added, members=self._members())

        return await answer(self.node, context, add(), write=True)

    async def MemberRemove(
        self, request: pb.MemberRemoveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MemberRemoveResponse:
        async def remove() -> pb.MemberRemoveResponse:
            done = await self._change(
                Change.REMOVE,
                _node_of(request.ID),
                "",
                context,
                lambda ch: rpc.ClusterStub(ch).MemberRemove(request, metadata=FORWARDED),
            )
            if isinstance(done, pb.MemberRemoveResponse):
                return done
            return pb.MemberRemoveResponse(header=header_of(self.node), members=self._members())

        return await answer(self.node, context, remove(), write=True)

    async def MemberUpdate(
        self, request: pb.MemberUpdateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MemberUpdateResponse:
        async def update() -> pb.MemberUpdateResponse:
            address = _peer_address(request.peerURLs)
            done = await self._change(
                Change.UPDATE,
                _node_of(request.ID),
                address,
                context,
                lambda ch: rpc.ClusterStub(ch).MemberUpdate(request, metadata=FORWARDED),
            )
            if isinstance(done, pb.MemberUpdateResponse):
                return done
            return pb.MemberUpdateResponse(header=header_of(self.node), members=self._members())

        return await answer(self.node, context, update(), write=True)

    async def MemberPromote(
        self, request: pb.MemberPromoteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MemberPromoteResponse:
        async def promote() -> pb.MemberPromoteResponse:
            done = await self._change(
                Change.ADD_VOTER,
                _node_of(request.ID),
                "",
                context,
                lambda ch: rpc.ClusterStub(ch).MemberPromote(request, metadata=FORWARDED),
            )
            if isinstance(done, pb.MemberPromoteResponse):
                return done
            return pb.MemberPromoteResponse(header=header_of(self.node), members=self._members())

        return await answer(self.node, context, promote(), write=True)

    async def _change(
        self,
        change: Change,
        node_id: int,
        address: str,
        context: grpc.aio.ServicerContext[Any, Any],
        forward: Callable[[grpc.aio.Channel], Awaitable[Resp]],
    ) -> int | Resp:
        """The member's id once the change applied here; on a follower, the leader's answer."""
        limit = time_left(context, self.node.tuning)
        try:
            async with asyncio.timeout(limit):
                return await self.node.change_member(change, node_id, address)
        except NotLeader as e:
            if e.leader is None or was_forwarded(context):
                raise
            return await forwarded(self.node, e.leader.id, forward, limit)
        except ConfChangeRefused as e:
            if "not a member" in str(e) or "no such" in str(e) or "unknown" in str(e):
                raise EtcdError(
                    grpc.StatusCode.NOT_FOUND, "etcdserver: member not found", NOT_APPLIED
                ) from None
            code = grpc.StatusCode.INVALID_ARGUMENT if e.invalid else grpc.StatusCode.FAILED_PRECONDITION
            raise EtcdError(code, f"etcdserver: {e}", NOT_APPLIED) from None


def _node_of(member_id: int) -> int:
    if member_id == 0:
        raise EtcdError(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found", NOT_APPLIED)
    return member_id - 1


def _peer_address(urls: Any) -> str:
    """HOST:PORT of the first peer URL (http:// or https:// or bare)."""
    if not urls:
        raise _invalid("no peer URL given")
    url = str(urls[0])
    bare = url.split("://", 1)[1] if "://" in url else url
    try:
        return parse_address(bare.rstrip("/"))
    except ConfigError:
        raise _invalid(f"peer URL {url[:80]!r} is not http://HOST:PORT") from None


class EtcdMaintenance(rpc.MaintenanceServicer):
    def __init__(self, node: RaftNode) -> None:
        self.node = node
        # One HashKV at a time: each holds a copy of the keyspace while it is read off the loop.
        self.hashing = asyncio.Lock()

    async def HashKV(
        self, request: pb.HashKVRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HashKVResponse:
        """This member's hash of its rows: etcdctl endpoint hashkv compares the members'."""

        async def work() -> pb.HashKVResponse:
            async with self.hashing:
                ks = self.node.keyspace()
                at = ks.revision_of(request.revision)
                compact, now = ks.compact_revision, ks.revision
                copy = mvcc.serialize(ks, always=True)
                loop = asyncio.get_running_loop()
                crc = await loop.run_in_executor(self.node.cpu, mvcc.hash_rows, copy, at)
            return pb.HashKVResponse(header=header_of(self.node, now), hash=crc, compact_revision=compact)

        return await answer(self.node, context, work(), write=False)

    async def MoveLeader(
        self, request: pb.MoveLeaderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MoveLeaderResponse:
        """Asked of the leader, as etcd's (etcdctl move-leader finds it); answers once the target leads."""

        async def work() -> pb.MoveLeaderResponse:
            target = request.targetID - 1
            view = next((m for m in self.node.members() if m.id == target), None)
            if request.targetID == 0 or view is None or view.learner:
                raise EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
            if not self.node.is_leader():
                raise EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
            try:
                await self.node.transfer_leader(target)
            except TargetUnreachable:
                raise EtcdError(
                    grpc.StatusCode.UNAVAILABLE,
                    "etcdserver: request timed out, leader transfer took too long",
                ) from None
            return pb.MoveLeaderResponse(header=header_of(self.node))

        return await answer(self.node, context, work(), write=False)

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusResponse:
        st = self.node.status()
        size = in_use = 0
        revision = 0
        try:
            ks = self.node.keyspace()
            size, in_use = mvcc.sizes(ks)
            revision = ks.revision
        except Unavailable:
            pass
        learner = any(m.id == st.id and m.learner for m in self.node.members())
        return pb.StatusResponse(
            header=header_of(self.node, revision),
            version=ETCD_VERSION,
            dbSize=size,
            leader=member_id_of(st.leader_id) if st.leader_id >= 0 else 0,
            raftIndex=st.commit_index,
            raftTerm=st.term,
            raftAppliedIndex=st.applied_index,
            errors=list(st.alarms),
            dbSizeInUse=in_use,
            isLearner=learner,
        )

    async def Alarm(
        self, request: pb.AlarmRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AlarmResponse:
        """No alarm is raised but CORRUPT, when the replicas' state hashes differed (raftd.consistency);
        alarms are not set or cleared by request."""
        st = self.node.status()
        alarms = [pb.AlarmMember(memberID=member_id_of(st.id), alarm=pb.CORRUPT)] if st.alarms else []
        return pb.AlarmResponse(header=header_of(self.node), alarms=alarms)

    async def Snapshot(
        self, request: pb.SnapshotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SnapshotResponse]:
        """The cluster's state as a raftd backup file (taken on the leader, as raftctl snapshot save's):
        `etcdctl snapshot save` writes it, and `raftd --restore` seeds a cluster from it."""
        parts = [chunk async for chunk in backup_chunks(self.node, context)]
        raw = pack_for_etcd(unpack(b"".join(parts), "the leader's backup"))
        header = header_of(self.node)
        size = self.node.tuning.backup_chunk_bytes
        for start in range(0, len(raw), size):
            blob = bytes(raw[start : start + size])
            yield pb.SnapshotResponse(header=header, remaining_bytes=len(raw) - start - len(blob), blob=blob)

    async def Defragment(
        self, request: pb.DefragmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DefragmentResponse:
        """Nothing to do: the keyspace is compacted in place."""
        return pb.DefragmentResponse(header=header_of(self.node))
