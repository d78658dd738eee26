"""The original project's RaftService, served unchanged for its clients, with raftd's guarantees."""

from __future__ import annotations

import logging

import grpc

from raftd.kv import Command, Op
from raftd.node import RaftNode
from raftd.pb import kv_pb2, kv_pb2_grpc, raft_pb2_grpc
from raftd.pb import raft_pb2 as pb

from .common import FORWARDED, MAX_KEY_BYTES, MAX_VALUE_BYTES, RequestFailed, grpc_errors, on_leader, on_node
from .kv import read, suspend

log = logging.getLogger("raftd.api")


class SeedService(raft_pb2_grpc.RaftServiceServicer):
    def __init__(self, node: RaftNode) -> None:
        self.node = node

    async def GetLeader(self, request: pb.Empty, context: grpc.aio.ServicerContext) -> pb.GetLeaderResponse:
        log.info("Command from client: getleader")
        leader = self.node.leader()
        if leader is None:
            log.info("None")
            return pb.GetLeaderResponse(nodeId=-1, nodeAddress="")
        log.info("%d %s", leader.id, leader.address)
        return pb.GetLeaderResponse(nodeId=leader.id, nodeAddress=leader.address)

    @grpc_errors
    async def Suspend(self, request: pb.SuspendRequest, context: grpc.aio.ServicerContext) -> pb.Empty:
        suspend(self.node, request.period)
        return pb.Empty()

    async def SetVal(self, request: pb.SetValRequest, context: grpc.aio.ServicerContext) -> pb.SetValResponse:
        """verdict is true only once the write is committed and applied; false when it was refused or lost."""
        log.info("Command from client: setval %s %s", request.key, request.value)
        key, value = request.key.encode(), request.value.encode()
        if not key or len(key) > MAX_KEY_BYTES or len(value) > MAX_VALUE_BYTES:
            return pb.SetValResponse(verdict=False)
        put = kv_pb2.PutRequest(key=key, value=value)

        async def local() -> kv_pb2.PutResponse:
            return kv_pb2.PutResponse(index=(await self.node.propose(Command(Op.PUT, key, value))).index)

        async def forward(channel: grpc.aio.Channel, timeout: float) -> kv_pb2.PutResponse:
            return await kv_pb2_grpc.KVStub(channel).Put(put, timeout=timeout, metadata=FORWARDED)

        try:
            await on_leader(self.node, context, local, forward)
        except RequestFailed as e:
            log.info("setval %s failed: %s", request.key, e.message)
            return pb.SetValResponse(verdict=False)
        return pb.SetValResponse(verdict=True)

    @grpc_errors
    async def GetVal(self, request: pb.GetValRequest, context: grpc.aio.ServicerContext) -> pb.GetValResponse:
        log.info("Command from client: getval %s", request.key)
        key = request.key.encode()
        if not key or len(key) > MAX_KEY_BYTES:
            return pb.GetValResponse(verdict=False)
        value, _ = await on_node(context, read(self.node, key, local=False))
        if value is None:
            return pb.GetValResponse(verdict=False)
        return pb.GetValResponse(verdict=True, value=value.decode())
