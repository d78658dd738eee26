"""An asyncio client for raftd: the same leader following as raftctl.client.Client, for async programs.

One grpc.aio channel per endpoint lives as long as the client, and any number of concurrent requests
share it (HTTP/2 multiplexing), so a program with many coroutines needs one AsyncClient, not many.

Exactly-once writes need care under concurrency: the server remembers only the highest seq per client_id
(Raft dissertation 6.3, one outstanding request per client), so two writes in flight under one client_id
could have the lower seq answered from the higher one's record without ever applying. Each in-flight write
therefore holds a session (client_id, seq counter) of its own from a pool: a write takes an idle session or
makes one, numbers itself, keeps that (client_id, seq) on every retry, and gives the session back when
done. A client makes as many sessions as it ever has writes in flight at once.

put, get and delete travel on one KV.Stream call per endpoint (raftd.pipe.Pipe), since a unary call costs
far more CPU in Python's gRPC, on both ends, than a message on an open stream: the requests of all coroutines
made within one event-loop iteration leave as one RequestBatch, and the answers come back batched. A node that
does not know Stream (an older raftd) answers UNIMPLEMENTED, and that endpoint gets unary calls from then
on. get_leader stays unary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from raftctl.client import (
    CHANNEL_OPTIONS,
    DEFAULT_TIMEOUT_S,
    Leader,
    NotFound,
    WriteSession,
    _Attempts,
    _encode,
    _Routing,
)
from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc
from raftd.pipe import MAX_BATCH_BYTES, NoStream, Pipe

T = TypeVar("T")


class _Connection:
    """The long-lived channel to one endpoint: its stubs (made once: stub creation is not free) and the
    stream its KV requests share, until the node turns out to have none."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        self.kv = kv_pb2_grpc.KVStub(self.channel)
        self.admin = kv_pb2_grpc.AdminStub(self.channel)
        self.pipe: Pipe | None = Pipe(self.kv)

    async def close(self) -> None:
        if self.pipe is not None:
            await self.pipe.close()
        await self.channel.close(grace=None)

    async def put(self, request: pb.PutRequest, timeout: float) -> pb.PutResponse:
        if len(request.key) + len(request.value) <= MAX_BATCH_BYTES:
            response = await self._streamed(pb.Request(put=request), timeout)
            if response is not None:
                return response.put
        return await self.kv.Put(request, timeout=timeout)

    async def get(self, request: pb.GetRequest, timeout: float) -> pb.GetResponse:
        if len(request.key) <= MAX_BATCH_BYTES:
            response = await self._streamed(pb.Request(get=request), timeout)
            if response is not None:
                return response.get
        return await self.kv.Get(request, timeout=timeout)

    async def delete(self, request: pb.DeleteRequest, timeout: float) -> pb.DeleteResponse:
        if len(request.key) <= MAX_BATCH_BYTES:
            response = await self._streamed(pb.Request(delete=request), timeout)
            if response is not None:
                return response.delete
        return await self.kv.Delete(request, timeout=timeout)

    async def _streamed(self, request: pb.Request, timeout: float) -> pb.Response | None:
        """The answer over the stream; None when the node has no Stream, and the caller goes unary."""
        if self.pipe is None:
            return None
        try:
            return await self.pipe.request(request, timeout)
        except NoStream:
            self.pipe = None
            return None


class AsyncClient(_Routing):
    """put/get/delete/get_leader against a raftd cluster, following the leader within `timeout` per call.

    Use it from one event loop (grpc.aio channels belong to the loop that first uses them); close it with
    `await client.close()` or `async with AsyncClient(...) as client:`. Raises the same ClientError
    subclasses as the sync client.
    """

    def __init__(self, endpoints: list[str], timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(endpoints, timeout, pin=False)
        self._connections: dict[str, _Connection] = {}
        self._idle_sessions: list[WriteSession] = []
        self.sessions_made = 0

    # -- lifecycle ----------------------------------------------------------------------------------
    async def close(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for c in connections:
            await c.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connection(self, endpoint: str) -> _Connection:
        connection = self._connections.get(endpoint)
        if connection is None:
            connection = self._connections[endpoint] = _Connection(endpoint)
        return connection

    # -- KV -----------------------------------------------------------------------------------------
    async def put(self, key: str, value: str) -> int:
        """Store value under key once it is committed and applied; returns the log index it applied at."""
        request = pb.PutRequest(key=_encode("the key", key), value=_encode("the value", value))
        with self._session_for(request.session) as session:
            response = await self._call(
                "setval", lambda c, t: c.put(request, t), session=(session, request.session)
            )
        return response.index

    async def get(self, key: str, linearizable: bool = True) -> str:
        """The value under key; NotFound when absent. linearizable=False may be stale but needs no quorum."""
        request = pb.GetRequest(key=_encode("the key", key), local=not linearizable)
        response = await self._call("getval", lambda c, t: c.get(request, t))
        if not response.found:
            raise NotFound(f"key {key!r} not found")
        return response.value.decode("utf-8", errors="backslashreplace")

    async def delete(self, key: str) -> bool:
        """Remove key; False when it was already absent."""
        request = pb.DeleteRequest(key=_encode("the key", key))
        with self._session_for(request.session) as session:
            response = await self._call(
                "delete", lambda c, t: c.delete(request, t), session=(session, request.session)
            )
        return response.deleted

    def _session_for(self, into: pb.WriteSession) -> _SessionLease:
        """Fill `into` with a fresh (client_id, seq) from an idle session; the lease gives it back."""
        session = self._idle_sessions.pop() if self._idle_sessions else self._new_session()
        session.number(into)
        return _SessionLease(self._idle_sessions, session)

    def _new_session(self) -> WriteSession:
        self.sessions_made += 1
        return WriteSession()

    # -- admin --------------------------------------------------------------------------------------
    async def get_leader(self) -> Leader:
        """The leader as a node names it; retried (also at other nodes) until one is known."""
        attempts = _Attempts(self, "getleader", last_error="no node named a leader")
        while True:
            target = attempts.query_target()
            try:
                response = await self._ask_leader(target, attempts.timeout())
            except grpc.RpcError as e:
                pause = attempts.query_failed(target, e)
            else:
                leader = self._heard_leader(response)
                if leader is not None:
                    return leader
                pause = attempts.no_leader_named(target)
            await asyncio.sleep(pause)
            attempts.waited()

    # -- the retry loop: raftctl.client._Attempts decides, this shell awaits ----------------------------
    async def _call(
        self,
        what: str,
        rpc: Callable[[_Connection, float], Awaitable[T]],
        *,
        session: tuple[WriteSession, pb.WriteSession] | None = None,
    ) -> T:
        attempts = _Attempts(self, what, session=session)
        while True:
            target = attempts.target()
            if target is None:
                endpoint = attempts.ask_endpoint()
                try:
                    response: pb.GetLeaderResponse | None = await self._ask_leader(
                        endpoint, attempts.ask_timeout()
                    )
                except grpc.RpcError:
                    response = None
                target = attempts.asked(endpoint, response)
            attempts.attempt()
            try:
                answer = await rpc(self._connection(target), attempts.timeout())
            except grpc.RpcError as e:
                pause = attempts.failed(target, e)
            else:
                attempts.succeeded()
                return answer
            if pause:  # else a fresh lead: follow it at once
                await asyncio.sleep(pause)
                attempts.waited()

    async def _ask_leader(self, endpoint: str, timeout: float) -> pb.GetLeaderResponse:
        return await self._connection(endpoint).admin.GetLeader(pb.GetLeaderRequest(), timeout=timeout)


class _SessionLease:
    """Returns a session to the idle pool when its write is over, however it ended."""

    def __init__(self, pool: list[WriteSession], session: WriteSession) -> None:
        self.pool = pool
        self.session = session

    def __enter__(self) -> WriteSession:
        return self.session

    def __exit__(self, *exc: object) -> None:
        self.pool.append(self.session)
