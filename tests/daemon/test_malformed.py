"""Bytes that are not the method's request message are the caller's fault (issue 19): INVALID_ARGUMENT
naming the method, where gRPC answered UNKNOWN ("Unexpected DecodeError") for most of them."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from raftd.pb import kv_pb2

from .cluster import Cluster

GARBAGE = [b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 7, b"\x12\x05ab"]
UNARY = [
    "/raftd.v1.KV/Put",
    "/raftd.v1.KV/Get",
    "/raftd.v1.KV/Delete",
    "/raftd.v1.Admin/Status",
    "/raftd.v1.Admin/Suspend",
    "/raftd.v1.Admin/TransferLeader",
    "/RaftService/SetVal",
    "/RaftService/GetVal",
    "/RaftService/Suspend",
]
STREAMS = ["/raftd.v1.KV/Stream", "/raftd.v1.RaftPeer/Stream", "/raftd.v1.RaftPeer/InstallSnapshot"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("malformed"), 1) as c:
        c.start_all()
        yield c


def test_garbage_to_any_method_is_invalid_argument(node: Cluster) -> None:
    ch = node.channel(0)
    for method in UNARY:
        call = ch.unary_unary(method)
        for payload in GARBAGE:
            with pytest.raises(grpc.RpcError) as e:
                call(payload, timeout=5)
            assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, payload, e.value.details())
            assert method.lstrip("/") in (e.value.details() or ""), e.value.details()
    for method in STREAMS:
        stream = ch.stream_stream(method)
        with pytest.raises(grpc.RpcError) as e:
            list(stream(iter([GARBAGE[0]]), timeout=5))
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, e.value.details())
    # The node is none the worse for it.
    node.put(0, "k", "v")
    assert node.get(0, "k").value == b"v"
    assert node.kv(0).Get(kv_pb2.GetRequest(key=b"k", local=True), timeout=5).found
