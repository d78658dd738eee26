"""The one-shot clients of the Jepsen workload against scripted in-process servers: how each answer, error
and missing server is classified (ok, fail = certainly not applied, info = unknown)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from raftd.launcher import free_ports
from raftd.pb import kv_pb2, kv_pb2_grpc, raft_pb2_grpc
from raftd.pb.raft_pb2 import GetValRequest, GetValResponse, SetValRequest, SetValResponse
from raftd.testing import Op
from raftd.testing.workload import FAIL, INFO, Outcome, RaftServiceDriver, UnaryDriver

TIMEOUT_S = 0.5


def abort(context: grpc.ServicerContext, outcome: str | None) -> None:
    """Fail the call as raftd does: UNAVAILABLE, with raftd-outcome in the trailers when given."""
    if outcome is not None:
        context.set_trailing_metadata((("raftd-outcome", outcome),))
    context.abort(grpc.StatusCode.UNAVAILABLE, "scripted failure")


class ScriptedKV(kv_pb2_grpc.KVServicer):
    """The written value (or the key of a delete) says how to answer."""

    def answer(self, script: str, context: grpc.ServicerContext) -> None:
        if script == "slow":
            time.sleep(2 * TIMEOUT_S)
        elif script != "ok":
            abort(context, None if script == "bare" else script)

    def Put(self, request: kv_pb2.PutRequest, context: grpc.ServicerContext) -> kv_pb2.PutResponse:
        assert not request.session.client_id, "the unary client uses no session"
        self.answer(request.value.decode(), context)
        return kv_pb2.PutResponse(index=1)

    def Delete(self, request: kv_pb2.DeleteRequest, context: grpc.ServicerContext) -> kv_pb2.DeleteResponse:
        self.answer(request.key.decode(), context)
        return kv_pb2.DeleteResponse(deleted=True, index=1)

    def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:
        key = request.key.decode()
        if key == "error":
            abort(context, "not-applied")
        if key == "absent":
            return kv_pb2.GetResponse(found=False)
        return kv_pb2.GetResponse(found=True, value=b"v")


class ScriptedRaftService(raft_pb2_grpc.RaftServiceServicer):
    def SetVal(self, request: SetValRequest, context: grpc.ServicerContext) -> SetValResponse:
        if request.value == "error":
            abort(context, None)
        return SetValResponse(verdict=request.value == "yes")

    def GetVal(self, request: GetValRequest, context: grpc.ServicerContext) -> GetValResponse:
        if request.key == "error":
            abort(context, None)
        if request.key == "absent":
            return GetValResponse(verdict=False)
        return GetValResponse(verdict=True, value="v")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    kv_pb2_grpc.add_KVServicer_to_server(ScriptedKV(), server)
    raft_pb2_grpc.add_RaftServiceServicer_to_server(ScriptedRaftService(), server)
    address = f"127.0.0.1:{free_ports(1)[0]}"
    server.add_insecure_port(address)
    server.start()
    yield address
    server.stop(grace=None)


def op(kind: str, key: str = "k", value: str | None = None) -> Op:
    return Op(0, kind, key, value, 0.0)


def test_unary_client(endpoint: str) -> None:
    driver = UnaryDriver([endpoint], random.Random(0), TIMEOUT_S)
    try:
        assert driver.do(op("put", value="ok")) == Outcome("ok")
        assert driver.do(op("put", value="not-applied")) == FAIL
        assert driver.do(op("put", value="unknown")) == INFO
        assert driver.do(op("put", value="bare")) == INFO
        assert driver.do(op("put", value="slow")) == INFO  # DEADLINE_EXCEEDED
        assert driver.do(op("delete", key="ok")) == Outcome("ok", "true")
        assert driver.do(op("delete", key="not-applied")) == FAIL
        assert driver.do(op("delete", key="unknown")) == INFO
        assert driver.do(op("get")) == Outcome("ok", "v")
        assert driver.do(op("get", key="absent")) == Outcome("ok", None)
        assert driver.do(op("get", key="error")) == FAIL
    finally:
        driver.close()


def test_raft_service_client(endpoint: str) -> None:
    driver = RaftServiceDriver([endpoint], random.Random(0), TIMEOUT_S)
    try:
        assert driver.do(op("put", value="yes")) == Outcome("ok")
        assert driver.do(op("put", value="no")) == FAIL
        assert driver.do(op("put", value="error")) == INFO
        assert driver.do(op("get")) == Outcome("ok", "v")
        assert driver.do(op("get", key="absent")) == Outcome("ok", None)
        assert driver.do(op("get", key="error")) == FAIL
    finally:
        driver.close()


def test_no_server_is_unknown_for_writes_and_a_failure_for_reads() -> None:
    nobody = [f"127.0.0.1:{free_ports(1)[0]}"]
    unary = UnaryDriver(nobody, random.Random(0), TIMEOUT_S)
    seed = RaftServiceDriver(nobody, random.Random(0), TIMEOUT_S)
    try:
        assert unary.do(op("put", value="x")) == INFO
        assert unary.do(op("delete")) == INFO
        assert unary.do(op("get")) == FAIL
        assert seed.do(op("put", value="x")) == INFO
        assert seed.do(op("get")) == FAIL
    finally:
        unary.close()
        seed.close()
