"""The original project's RaftService, served unchanged for its clients, with raftd's guarantees.

SetVal's verdict=false means the write was refused and never applies; a write whose outcome is unknown
ends in a gRPC error instead (the original client then prints that the server is unavailable), since
false would be a lie if it applied after all.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from raftd.kv import Command, Op
from raftd.node import RaftNode
from raftd.pb import kv_pb2, raft_pb2_grpc
from raftd.pb import raft_pb2 as pb
from raftd.pipe import UNKNOWN

from .common import Calls, Forwarder, RequestFailed, grpc_errors, read, write
from .kv import suspend

log = logging.getLogger("raftd.api")

LOG_TEXT_CHARS = 64  # of a key or value in the original's log lines: a log never amplifies input


def clip(text: str) -> str:
    """A key or value as the original's lines print it: whole when short, else its start and its length;
    control characters escaped, so no input can forge a log line."""
    shown = text if len(text) <= LOG_TEXT_CHARS else text[:LOG_TEXT_CHARS]
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    return shown if len(text) <= LOG_TEXT_CHARS else f"{shown}... ({len(text)} characters)"


class SeedService(raft_pb2_grpc.RaftServiceServicer):
    def __init__(self, node: RaftNode, calls: Calls, forwarder: Forwarder) -> None:
        self.node = node
        self.calls = calls
        self.forwarder = forwarder

    async def GetLeader(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetLeaderResponse:
        log.info("Command from client: getleader")
        leader = self.node.leader()
        if leader is None:
            log.info("None")
            return pb.GetLeaderResponse(nodeId=-1, nodeAddress="")
        log.info("%d %s", leader.id, leader.address)
        return pb.GetLeaderResponse(nodeId=leader.id, nodeAddress=leader.address)

    @grpc_errors
    async def Suspend(
        self, request: pb.SuspendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Empty:
        suspend(self.node, request.period)
        return pb.Empty()

    @grpc_errors
    async def SetVal(
        self, request: pb.SetValRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SetValResponse:
        """verdict is true once the write is committed and applied, false when it was refused before it was
        proposed; an unknown outcome is a gRPC error."""
        log.info("Command from client: setval %s %s", clip(request.key), clip(request.value))
        key, value = request.key.encode(), request.value.encode()
        limits = self.node.limits
        if not key or len(key) > limits.max_key_bytes or len(value) > limits.max_value_bytes:
            return pb.SetValResponse(verdict=False)
        put = kv_pb2.PutRequest(key=key, value=value)
        try:
            await write(self.calls, self.forwarder, context, Command(Op.PUT, key, value), put)
        except RequestFailed as e:
            log.info("setval %s failed: %s", clip(request.key), e.message)
            if e.outcome == UNKNOWN:
                raise
            return pb.SetValResponse(verdict=False)
        return pb.SetValResponse(verdict=True)

    @grpc_errors
    async def GetVal(
        self, request: pb.GetValRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetValResponse:
        log.info("Command from client: getval %s", clip(request.key))
        key = request.key.encode()
        if not key or len(key) > self.node.limits.max_key_bytes:
            return pb.GetValResponse(verdict=False)
        value, _ = await read(self.calls, context, key, local=False)
        if value is None:
            return pb.GetValResponse(verdict=False)
        # A value written through the etcd API may be any bytes: those that are not UTF-8 come escaped
        # (\xNN), as raftctl prints them, since this API's value is a string.
        return pb.GetValResponse(verdict=True, value=value.decode(errors="backslashreplace"))
