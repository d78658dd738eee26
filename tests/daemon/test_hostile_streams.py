"""What a stream's client can make a node hold is bounded (issue 19): clients that ask for large values
and never read the answers, and more streams than the node serves."""

from __future__ import annotations

import asyncio
import os
import resource
import threading
import time
from pathlib import Path

import grpc
import pytest

from raftctl.aio import AsyncClient
from raftctl.client import Client, ClientError
from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc
from raftd.pipe import NOT_APPLIED, OUTCOME_KEY

from .cluster import cluster_of, wait_until

MIB = 1024 * 1024
STALLED = 10
GETS = 1500  # per stream, of a 1 MiB value: the probe
RSS_ROOM_MIB = 100  # the target: within the level before the readers + 100 MB
OPTIONS = [("grpc.max_receive_message_length", 8 * MIB), ("grpc.max_send_message_length", 8 * MIB)]


def test_stalled_readers_of_large_values_hold_bounded_memory_and_are_cut_off(tmp_path: Path) -> None:
    """The issue's probe grew the node by 912 MB with one such stream. Ten of them, each on its own
    connection, while a well-behaved client goes on working beside them."""
    with cluster_of(tmp_path, env={"RAFTD_STREAM_WRITE_TIMEOUT": "3"}) as c:
        leader = c.wait_leader()
        c.put(leader, "big", "v" * MIB)
        before = c.rss_mib(leader)
        samples: list[float] = []
        errors: list[str] = []
        done = threading.Event()

        def well_behaved() -> None:
            with Client(c.endpoints, timeout=10) as client:
                i = 0
                while not done.is_set():
                    try:
                        client.put(f"small-{i % 10}", str(i))
                        client.get(f"small-{i % 10}")
                    except ClientError as e:
                        errors.append(str(e))
                    i += 1

        async def stall() -> list[grpc.StatusCode]:
            channels = [grpc.aio.insecure_channel(c.address(leader), options=OPTIONS) for _ in range(STALLED)]
            calls = []
            for channel in channels:
                call = kv_pb2_grpc.KVStub(channel).Stream()  # type: ignore[call-arg]
                for first in range(0, GETS, 500):
                    gets = [pb.Request(id=first + k + 1, get=pb.GetRequest(key=b"big")) for k in range(500)]
                    await call.write(pb.RequestBatch(requests=gets))
                calls.append(call)
            deadline = time.monotonic() + 6.0  # twice the write timeout, and some
            while time.monotonic() < deadline:
                samples.append(c.rss_mib(leader))
                await asyncio.sleep(0.2)
            codes = []
            for call in calls:  # now read: what the node sent, then how it ended the stream
                try:
                    while isinstance(await call.read(), pb.ResponseBatch):
                        pass
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code())
            for channel in channels:
                await channel.close()
            return codes

        worker = threading.Thread(target=well_behaved)
        worker.start()
        try:
            codes = asyncio.run(stall())
        finally:
            done.set()
            worker.join()
        peak = max(samples)
        assert peak <= before + RSS_ROOM_MIB, f"RSS {before:.0f} MiB before, {peak:.0f} MiB at the peak"
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * STALLED, codes
        assert errors == [], errors[:3]
        assert "read no answer for 3s" in c.log(leader)
        # And what they held is given back (the probe's node still held 744 MB 20 s after).
        wait_until("the node to give the memory back", lambda: c.rss_mib(leader) <= before + 30, 10)


def test_a_stream_past_the_maximum_is_refused_and_clients_go_unary(tmp_path: Path) -> None:
    with cluster_of(tmp_path, env={"RAFTD_MAX_STREAMS": "2"}) as c:
        leader = c.wait_leader()
        c.put(leader, "k", "v")

        async def scenario() -> None:
            channel = grpc.aio.insecure_channel(c.address(leader))
            stub = kv_pb2_grpc.KVStub(channel)
            held = []
            for rid in (1, 2):
                call = stub.Stream()  # type: ignore[call-arg]
                await call.write(pb.RequestBatch(requests=[pb.Request(id=rid, get=pb.GetRequest(key=b"k"))]))
                assert (await call.read()).responses[0].get.value == b"v"
                held.append(call)
            # Refused as it opens, before any request: a write to it could find the call ended already, and
            # grpc.aio then fails the write with a local INTERNAL status instead of the node's (1 fresh-clone
            # CI run in 2 here).
            refused = stub.Stream()  # type: ignore[call-arg]
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await refused.read()
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 2 streams at once (--max-streams)" in (e.value.details() or "")
            assert (OUTCOME_KEY, NOT_APPLIED) in tuple(e.value.trailing_metadata() or ())
            # raftd's own client takes the refusal as "no stream here" and carries on with unary calls.
            async with AsyncClient([c.address(leader)], timeout=10) as client:
                await client.put("k", "w")
                assert await client.get("k") == "w"
            for call in held:  # and a stream ended frees its place
                call.cancel()
            deadline = time.monotonic() + 10
            while True:
                again = stub.Stream()  # type: ignore[call-arg]
                try:
                    await again.write(
                        pb.RequestBatch(requests=[pb.Request(id=4, get=pb.GetRequest(key=b"k"))])
                    )
                    assert (await again.read()).responses[0].get.value == b"w"
                    break
                except grpc.aio.AioRpcError as e:  # the node has not seen the cancellations yet
                    # Refused by the node (RESOURCE_EXHAUSTED); or the refusal ended the call before the write
                    # went out, and grpc.aio failed the write with its own INTERNAL (as above).
                    assert e.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL), e
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
            again.cancel()
            await channel.close()

        asyncio.run(scenario())


def test_a_batch_of_more_requests_than_the_node_takes_ends_the_stream(tmp_path: Path) -> None:
    """50,000 one-byte-key reads fit in 0.5 MB on the wire and would cost the node far more in memory."""
    with cluster_of(tmp_path) as c:
        leader = c.wait_leader()
        c.put(leader, "k", "v")

        async def scenario() -> None:
            async with grpc.aio.insecure_channel(c.address(leader)) as channel:
                call = kv_pb2_grpc.KVStub(channel).Stream()  # type: ignore[call-arg]
                many = [pb.Request(id=i, get=pb.GetRequest(key=b"k")) for i in range(1, 50_001)]
                await call.write(pb.RequestBatch(requests=many))
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call.read()
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
                assert "at most 16384 in one (--max-batch-requests)" in (e.value.details() or "")
                async with AsyncClient([c.address(leader)], timeout=10) as client:
                    assert await client.get("k") == "v"  # the node is fine, and so are other streams

        asyncio.run(scenario())
        assert "Traceback" not in c.stderr(leader)


def test_a_burst_of_1_mib_puts_all_commit(tmp_path: Path) -> None:
    """The issue's probe: of 80 valid 1 MiB puts sent at once, 1 was acknowledged within 60 s (the applied
    index stuck for the whole minute). Each write of the peer stream now carries at most 4 MiB of entries,
    each follower at most 8 MiB in flight, and a busy leader's heartbeats go out on time. Whether the burst
    also passes without an election is a matter of timing on a machine the nodes share: `make bench`'s
    large-value row holds it to that, not this test."""
    with cluster_of(tmp_path) as c:

        async def burst() -> None:
            async with AsyncClient(c.endpoints, timeout=60) as client:

                async def put(k: int) -> None:
                    await client.put(f"big-{k}", chr(ord("a") + k % 26) * MIB)

                await asyncio.wait_for(asyncio.gather(*(put(k) for k in range(80))), 60)

        asyncio.run(burst())  # any write not acknowledged within its 60 s fails the test here
        leader = c.wait_leader()
        for i in range(3):
            assert c.get(i, "big-79").value == b"b" * MIB, f"node {i}"
        assert c.get(leader, "big-0").value == b"a" * MIB


STORM = 2000
STORM_ROOM_MIB = 20  # the target: within 30 s of the storm's end, the level before + 20 MB


def test_memory_returns_after_a_connection_storm(tmp_path: Path) -> None:
    """The issue's probe: after 2,000 connections at once, the leader's RSS went from 45 to 138 MB and
    stayed there when they closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = STORM + 500  # in this process (the connections' sockets) and in the leader (theirs), each
    if hard < need:
        why = f"the open files limit ({hard}) is below the {need} that {STORM} connections need"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(f"{why}; raise it (ulimit -Hn) to run this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))  # before the nodes inherit it
    with cluster_of(tmp_path) as c:
        leader = c.wait_leader()
        c.put(leader, "k", "v")
        before = c.rss_mib(leader)

        async def storm() -> int:
            # A subchannel pool of its own per channel: one connection each (channels share them otherwise).
            channels = [
                grpc.aio.insecure_channel(c.address(leader), options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(STORM)
            ]

            async def one(channel: grpc.aio.Channel) -> bool:
                try:
                    await kv_pb2_grpc.KVStub(channel).Get(pb.GetRequest(key=b"k"), timeout=60)
                except grpc.aio.AioRpcError:
                    return False
                return True

            served = sum(await asyncio.gather(*(one(ch) for ch in channels)))
            for channel in channels:
                await channel.close()
            return served

        served = asyncio.run(storm())
        assert served >= STORM * 0.9, f"only {served} of {STORM} connections were served"
        wait_until(
            f"RSS back within {STORM_ROOM_MIB} MB of its {before:.0f} MiB before the storm",
            lambda: c.rss_mib(leader) <= before + STORM_ROOM_MIB,
            30,
        )
        assert c.procs[leader].poll() is None
