"""--max-key-bytes and --max-value-bytes bound a request on every API of the node (Limits.max_key_bytes,
Limits.max_value_bytes): a longer key or value is refused before it reaches the log, one at the bound is
proposed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from raftd.pb import kv_pb2, raft_pb2
from raftd.pipe import NOT_APPLIED
from raftd.settings import Limits
from tests.nodes import leader, release_node
from tests.test_outcomes import Served, failed

LIMITS = Limits(max_key_bytes=8, max_value_bytes=16)


def test_a_key_or_value_over_the_node_s_limits_is_refused_on_every_api(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path, limits=LIMITS)
        async with Served(node) as s:
            long_key, long_value = b"k" * 9, b"v" * 17
            for call in (
                s.kv.Put(kv_pb2.PutRequest(key=long_key, value=b"v"), timeout=10),
                s.kv.Put(kv_pb2.PutRequest(key=b"k", value=long_value), timeout=10),
                s.kv.Delete(kv_pb2.DeleteRequest(key=long_key), timeout=10),
            ):
                assert await failed(call) == (grpc.StatusCode.INVALID_ARGUMENT, NOT_APPLIED)
            with_key = s.kv.Get(kv_pb2.GetRequest(key=long_key), timeout=10)
            assert await failed(with_key) == (grpc.StatusCode.INVALID_ARGUMENT, None)
            setval = raft_pb2.SetValRequest(key="k", value=long_value.decode())
            assert (await s.seed.SetVal(setval, timeout=10)).verdict is False
            getval = raft_pb2.GetValRequest(key=long_key.decode())
            assert (await s.seed.GetVal(getval, timeout=10)).verdict is False

            stream = s.kv.Stream(timeout=10)
            await stream.write(
                kv_pb2.RequestBatch(
                    requests=[
                        kv_pb2.Request(id=1, put=kv_pb2.PutRequest(key=long_key, value=b"v")),
                        kv_pb2.Request(id=2, put=kv_pb2.PutRequest(key=b"k", value=long_value)),
                        kv_pb2.Request(id=3, get=kv_pb2.GetRequest(key=long_key)),
                    ]
                )
            )
            answers = await stream.read()
            assert isinstance(answers, kv_pb2.ResponseBatch)
            assert [(r.id, r.error.message) for r in answers.responses] == [
                (1, "the key is 9 bytes; the limit is 8"),
                (2, "the value is 17 bytes; the limit is 16"),
                (3, "the key is 9 bytes; the limit is 8"),
            ]
            stream.cancel()
            assert node.pending.proposals == [], "nothing refused was proposed"

            # At the bounds: taken (the write waits in the log; nothing acknowledges it here).
            put = asyncio.ensure_future(
                s.kv.Put(kv_pb2.PutRequest(key=b"k" * 8, value=b"v" * 16), timeout=10)
            )
            await s.proposed(1)
            put.cancel()
        release_node(node)

    asyncio.run(main())
