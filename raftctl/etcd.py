"""A small synchronous client of the etcd v3 API every raftd node serves, for raftctl's etcd-style commands.

There is no leader to follow: every node answers (a follower passes writes and linearizable reads on to
the leader itself), so a request goes to one endpoint and, when that one cannot serve it, to the next,
until the timeout. A read is retried on any UNAVAILABLE. A write is retried only when it surely did not
apply, because etcd's writes carry no exactly-once session and a second attempt could apply twice: the
node said so (raftd's outcome trailer, "not-applied") or gRPC never reached a node. Any other failure of a
write ends in OutcomeUnknown.

This module knows nothing of Click or terminals; errors are raftctl.client's exception classes.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Generic, TypeVar

import grpc

from raftctl.client import (
    ATTEMPT_MIN_S,
    ATTEMPT_SHARE,
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    RETRYABLE,
    Channels,
    ClientError,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    ServerError,
    Unavailable,
    _dead_end,
    may_have_applied,
)
from raftd.pb import etcd_kv_pb2 as kvpb
from raftd.pb import etcd_rpc_pb2 as pb
from raftd.pb import etcd_rpc_pb2_grpc as rpc
from raftd.pipe import details_of

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

# etcd clients ask a node that knows no leader not to serve a watch (it could be cut off and silent).
REQUIRE_LEADER = (("hasleader", "true"),)


class Compacted(ClientError):
    """A watch asked for history the cluster no longer keeps."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        super().__init__(
            f"watch: revision {revision} has been compacted; the earliest a watch can start from is "
            f"{compact_revision} (etcdserver: mvcc: required revision has been compacted)"
        )
        self.compact_revision = compact_revision


class LeaseGone(NotFound):
    """A kept-alive lease expired or was revoked."""


def prefix_end(key: bytes) -> bytes:
    """etcd's range end for every key starting with key: its last byte below 0xff, plus one."""
    stripped = key.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # all 0xff bytes: no end but the keyspace's
    return stripped[:-1] + bytes([stripped[-1] + 1])


def writes(txn: pb.TxnRequest) -> bool:
    """Whether a transaction can write (one that only reads is retried as a read)."""
    for op in [*txn.success, *txn.failure]:
        kind = op.WhichOneof("request")
        if kind in ("request_put", "request_delete_range"):
            return True
        if kind == "request_txn" and writes(op.request_txn):
            return True
    return False


class _Stream(Generic[Req, Resp]):
    """A bidirectional call whose requests come from a queue, so the call stays open until close()."""

    def __init__(self, open_call: Callable[[Iterator[Req]], grpc.CallIterator[Resp]]) -> None:
        self._requests: queue.Queue[Req | None] = queue.Queue()
        self.call = open_call(self._pending())
        self._responses = iter(self.call)
        self._timer: threading.Timer | None = None
        self.timed_out = False

    def _pending(self) -> Iterator[Req]:
        while (request := self._requests.get()) is not None:
            yield request

    def send(self, request: Req) -> None:
        self._requests.put(request)

    def receive(self, within: float | None = None) -> Resp | None:
        """The next response (None when the node ended the call); gRPC's error when it broke, CANCELLED
        with timed_out set when within seconds passed first."""
        if within is not None:
            self._timer = threading.Timer(within, self._give_up)
            self._timer.daemon = True
            self._timer.start()
        try:
            return next(self._responses, None)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _give_up(self) -> None:
        self.timed_out = True
        self.call.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs


class EtcdClient:
    """Talks to the etcd API of a raftd cluster through the given endpoints ("host:port")."""

    def __init__(self, endpoints: list[str], timeout: float) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._next = 0  # the endpoint to try first: the last that answered
        self.channels = Channels()

    def close(self) -> None:
        self.channels.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _channel(self, endpoint: str) -> grpc.Channel:
        """A method, not the pool's own: a subclass may dial another address (the container tests')."""
        return self.channels.get(endpoint)

    # -- KV -----------------------------------------------------------------------------------------
    def range(self, request: pb.RangeRequest) -> pb.RangeResponse:
        return self._call("get", lambda ch, t: rpc.KVStub(ch).Range(request, timeout=t), write=False)

    def put(self, request: pb.PutRequest) -> pb.PutResponse:
        return self._call("put", lambda ch, t: rpc.KVStub(ch).Put(request, timeout=t), write=True)

    def delete_range(self, request: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        return self._call("del", lambda ch, t: rpc.KVStub(ch).DeleteRange(request, timeout=t), write=True)

    def txn(self, request: pb.TxnRequest, what: str = "txn") -> pb.TxnResponse:
        return self._call(what, lambda ch, t: rpc.KVStub(ch).Txn(request, timeout=t), write=writes(request))

    # -- leases -------------------------------------------------------------------------------------
    def lease_grant(self, ttl: int) -> pb.LeaseGrantResponse:
        request = pb.LeaseGrantRequest(TTL=ttl)
        return self._call(
            "lease grant", lambda ch, t: rpc.LeaseStub(ch).LeaseGrant(request, timeout=t), write=True
        )

    def lease_revoke(self, lease: int) -> pb.LeaseRevokeResponse:
        request = pb.LeaseRevokeRequest(ID=lease)
        return self._call(
            "lease revoke", lambda ch, t: rpc.LeaseStub(ch).LeaseRevoke(request, timeout=t), write=True
        )

    def lease_time_to_live(self, lease: int, keys: bool) -> pb.LeaseTimeToLiveResponse:
        request = pb.LeaseTimeToLiveRequest(ID=lease, keys=keys)
        return self._call(
            "lease timetolive",
            lambda ch, t: rpc.LeaseStub(ch).LeaseTimeToLive(request, timeout=t),
            write=False,
        )

    def lease_list(self) -> pb.LeaseLeasesResponse:
        request = pb.LeaseLeasesRequest()
        return self._call(
            "lease list", lambda ch, t: rpc.LeaseStub(ch).LeaseLeases(request, timeout=t), write=False
        )

    def keep_alive(self, lease: int) -> Generator[pb.LeaseKeepAliveResponse]:
        """Keep-alive answers, one per request, a third of the lease's TTL apart (etcd's pace), until the
        lease is gone (LeaseGone) or the caller stops. A stream that breaks is opened again elsewhere:
        a keep-alive only renews, so sending it twice does no harm."""
        request = pb.LeaseKeepAliveRequest(ID=lease)
        while True:
            stream, answer = self._open(
                "lease keep-alive",
                lambda ch, q: rpc.LeaseStub(ch).LeaseKeepAlive(q),
                request,
            )
            try:
                while answer is not None:
                    if answer.TTL <= 0:
                        raise LeaseGone(f"lease {lease:016x} expired or revoked")
                    yield answer
                    time.sleep(max(answer.TTL / 3, 0.5))
                    stream.send(request)
                    answer = self._next_or_none(stream, within=self.timeout)
            finally:
                stream.close()
            self._skip()

    # -- watches ------------------------------------------------------------------------------------
    def watch(
        self, key: bytes, range_end: bytes, start_revision: int, prev_kv: bool
    ) -> Generator[kvpb.Event]:
        """Events in revision order, until the caller stops or the node cancels the watch. A broken
        stream is resumed at another endpoint from the revision after the last one delivered, so no event
        is missed or repeated. Compacted when start_revision's history is gone."""
        revision = start_revision  # the next revision not yet delivered; 0: from now on
        while True:
            create = pb.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=revision, prev_kv=prev_kv
            )
            stream, created = self._open(
                "watch",
                lambda ch, q: rpc.WatchStub(ch).Watch(q, metadata=REQUIRE_LEADER),
                pb.WatchRequest(create_request=create),
            )
            try:
                if created is None:
                    raise ServerError("watch: the node ended the call before it created the watch")
                if created.canceled:
                    raise _canceled(created, revision)
                if revision == 0:
                    revision = created.header.revision + 1
                while (response := self._next_or_none(stream)) is not None:
                    if response.canceled:
                        raise _canceled(response, revision)
                    yield from response.events
                    if response.events:
                        revision = response.events[-1].kv.mod_revision + 1
            finally:
                stream.close()
            self._skip()

    @staticmethod
    def _next_or_none(stream: _Stream[Req, Resp], within: float | None = None) -> Resp | None:
        """The stream's next answer; None when it ended, broke in a way another node can mend, or sent
        nothing within the seconds given."""
        try:
            return stream.receive(within)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE and not stream.timed_out:
                raise _refused("stream", e) from None
            return None

    def _open(
        self,
        what: str,
        call: Callable[[grpc.Channel, Iterator[Req]], grpc.CallIterator[Resp]],
        first: Req,
    ) -> tuple[_Stream[Req, Resp], Resp | None]:
        """A stream at the first endpoint that answers first within its share of the timeout, and that
        answer (None: the node ended the call at once)."""

        def attempt(channel: grpc.Channel, timeout: float) -> tuple[_Stream[Req, Resp], Resp | None]:
            stream: _Stream[Req, Resp] = _Stream(lambda q: call(channel, q))
            stream.send(first)
            try:
                return stream, stream.receive(within=timeout)
            except grpc.RpcError:
                stream.close()
                if stream.timed_out:
                    raise _Silent(f"no answer within {timeout:g}s") from None
                raise

        return self._call(what, attempt, write=False)

    # -- the retry loop -----------------------------------------------------------------------------
    def _call(self, what: str, rpc: Callable[[grpc.Channel, float], T], *, write: bool) -> T:
        """rpc(channel, timeout) at the endpoints in turn until one answers or the timeout passes."""
        deadline = time.monotonic() + self.timeout
        backoff = BACKOFF_MIN_S
        dead: dict[str, str] = {}  # endpoints that refused the connection or do not resolve
        while True:
            target = self.endpoints[self._next]
            remaining = deadline - time.monotonic()
            # A read that gets no answer in its share of the time is asked elsewhere; a write is not (it
            # may have been sent), so it may as well wait for its answer all the time there is.
            share = remaining if write else max(ATTEMPT_MIN_S, self.timeout * ATTEMPT_SHARE)
            attempt = max(0.001, min(remaining, share))
            try:
                return rpc(self._channel(target), attempt)
            except _Silent as e:
                details = str(e)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:  # refused whole: nothing applied
                    raise _refused(what, e) from None
                if write and may_have_applied(e):
                    raise OutcomeUnknown(
                        f"{what}: {details_of(e)}; the write may have applied (read to find out)"
                    ) from None
                if e.code() not in RETRYABLE:
                    raise _refused(what, e) from None
                details = details_of(e)
            last_error = f"{target}: {details}"
            reason = _dead_end(target, details)
            if reason is None:
                dead.pop(target, None)
            else:
                dead[target] = reason
            if all(endpoint in dead for endpoint in self.endpoints):
                reasons = "; ".join(f"{endpoint}: {dead[endpoint]}" for endpoint in self.endpoints)
                raise Unavailable(f"{what}: no node answers ({reasons})")
            self._skip()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"{what}: no answer within {self.timeout:g}s; last error: {last_error}")
            if reason is None:  # a node that refuses connections is passed over at once
                time.sleep(min(backoff * random.uniform(0.5, 1.0), remaining))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _skip(self) -> None:
        self._next = (self._next + 1) % len(self.endpoints)


class _Silent(Exception):
    """A stream's node sent nothing within the attempt's time: try another, as after UNAVAILABLE."""


def _refused(what: str, e: grpc.RpcError) -> ClientError:
    """The error a failure no other node would mend ends in (its exit code follows raftctl.exits)."""
    code, details = e.code(), details_of(e)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what}: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"{what}: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return ServerError(f"{what}: the node does not serve this part of the etcd API ({details})")
    return ServerError(f"{what}: {code.name}: {details}")


def _canceled(response: pb.WatchResponse, revision: int) -> ClientError:
    if response.compact_revision:
        return Compacted(revision, response.compact_revision)
    return ServerError(f"watch: canceled by the node: {response.cancel_reason or 'no reason given'}")
