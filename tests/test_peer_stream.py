"""The peer stream's write deadline, in-process: against a follower that takes the stream and never reads
it (its flow-control window fills, and the write in flight waits for good), and against a listener that
never opens the stream."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest

from raftd.core import Entry, Message, MsgType
from raftd.identity import Identity
from raftd.pb import peer_pb2, peer_pb2_grpc
from raftd.settings import TUNING, Tuning
from raftd.transport.peer import PeerClient

DEADLINE_S = 0.3
SHORT_DEADLINE = Tuning(peer_write_timeout_s=DEADLINE_S)


class Deaf(peer_pb2_grpc.RaftPeerServicer):
    async def Stream(
        self, batches: AsyncIterator[peer_pb2.MessageBatch], context: grpc.aio.ServicerContext
    ) -> peer_pb2.StepResponse:
        await asyncio.sleep(30)
        return peer_pb2.StepResponse()


def _append(index: int) -> Message:
    return Message(MsgType.APP, to=2, frm=1, term=1, entries=(Entry(index, 1, b"x" * (1 << 20)),))


async def _stuck_client(reports: list[int], tuning: Tuning) -> tuple[grpc.aio.Server, PeerClient]:
    """A client whose write is stuck: it sent 1 MiB appends, one a batch, until one did not complete."""
    server = grpc.aio.server()
    peer_pb2_grpc.add_RaftPeerServicer_to_server(Deaf(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = PeerClient(2, f"127.0.0.1:{port}", Identity("c"), reports.append, tuning=tuning)
    client.start()
    for index in range(1, 65):
        client.send(_append(index))
        await asyncio.sleep(0.02)
        if client._writing_since is not None and client._queue.qsize() > 2:
            return server, client
    raise AssertionError("64 MiB went out to a follower that never reads")


def test_a_write_the_follower_never_takes_fails_at_its_deadline() -> None:
    async def main() -> None:
        reports: list[int] = []
        server, client = await _stuck_client(reports, SHORT_DEADLINE)
        loop = asyncio.get_running_loop()
        stuck_since = client._writing_since
        assert stuck_since is not None
        while not reports and loop.time() < stuck_since + 10:
            await asyncio.sleep(0.02)
        assert reports, "the stuck write was never given up"
        assert loop.time() >= stuck_since + DEADLINE_S
        assert reports[0] == 2 and not client.reachable
        await client.close()
        await server.stop(None)

    asyncio.run(main())


def test_a_write_on_a_stream_that_never_opens_fails_at_its_deadline() -> None:
    """A listener that accepts the connection and never speaks HTTP/2: the first write waits for the stream
    to open, which cancelling the call alone does not end."""
    # The channel's reconnection waits out the senders' backoff: no second connection within the test.
    slow_connect = dataclasses.replace(SHORT_DEADLINE, peer_backoff_min_s=20.0, peer_backoff_max_s=20.0)

    async def main() -> None:
        held: list[asyncio.StreamWriter] = []

        async def mute(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        listener = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        reports: list[int] = []
        client = PeerClient(2, f"127.0.0.1:{port}", Identity("c"), reports.append, tuning=slow_connect)
        client.start()
        client.send(_append(1))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not reports and loop.time() < started + 10:
            await asyncio.sleep(0.02)
        assert reports == [2], "the write waiting for the stream was never given up"
        assert DEADLINE_S <= loop.time() - started < 5
        await client.close()
        for writer in held:
            writer.close()
        listener.close()

    asyncio.run(main())


@pytest.mark.parametrize("watchdog_too", [False, True], ids=["close", "close-as-the-deadline-passes"])
def test_closing_ends_a_stuck_sender_rather_than_retrying(watchdog_too: bool) -> None:
    """close() cancels the sender mid-write: that cancellation ends it, also when the watchdog cancels it
    in the same moment; only the watchdog's alone is a failed write."""

    async def main() -> None:
        reports: list[int] = []
        server, client = await _stuck_client(reports, Tuning(peer_write_timeout_s=30.0))
        task = client._task
        assert task is not None and client._writing_since is not None
        if watchdog_too:
            client._writing_since -= 60
            client._watch()  # cancels the sender, which has not run since
        await client.close()
        assert task.cancelled(), "the sender outlived close()"
        assert reports == []
        await server.stop(None)

    # Not asyncio.run: a sender that swallows its cancellation would hang its final clean-up, not fail.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_a_batch_carries_a_bounded_number_of_entry_bytes() -> None:
    """A window of 1 MiB entries used to leave as one write of up to 64 MiB, with the heartbeats behind it
    (the issue's burst of 1 MiB puts: elections, and one write of 80 acknowledged)."""

    async def main() -> None:
        client = PeerClient(2, "127.0.0.1:1", Identity("c"), lambda peer: None)
        for i in range(1, 11):
            client.send(_append(i))
        client.send(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1))
        batches = [await client._next_batch() for _ in range(3)]
        per_batch = TUNING.peer_batch_bytes // (1 << 20)
        assert [len(b) for b in batches] == [per_batch, per_batch, 11 - 2 * per_batch]
        assert [m.entries[0].index for b in batches for m in b if m.entries] == list(range(1, 11))
        assert batches[-1][-1].type is MsgType.HEARTBEAT, "order kept"
        await client.close()

    asyncio.run(main())


class Picky(peer_pb2_grpc.RaftPeerServicer):
    """Refuses the first call's address, as raftd.transport.gate does, then takes whatever comes."""

    def __init__(self) -> None:
        self.callers: list[str] = []
        self.heard = asyncio.Event()

    async def Stream(
        self, batches: AsyncIterator[peer_pb2.MessageBatch], context: grpc.aio.ServicerContext
    ) -> peer_pb2.StepResponse:
        self.callers.append(context.peer())
        if len(self.callers) == 1:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not an address of a member")
        async for _ in batches:
            self.heard.set()
        return peer_pb2.StepResponse()


def test_a_refused_caller_address_makes_a_new_connection() -> None:
    """A container cut off from its peers' network reached them over another one (Docker had rewritten
    its /etc/hosts); once back, gRPC would keep that connection, refused or not, for good."""

    async def main() -> None:
        server = grpc.aio.server()
        picky = Picky()
        peer_pb2_grpc.add_RaftPeerServicer_to_server(picky, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = PeerClient(2, f"127.0.0.1:{port}", Identity("c"), lambda _peer: None)
        client.start()
        for _ in range(100):
            client.send(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1))
            try:
                await asyncio.wait_for(picky.heard.wait(), 0.1)
                break
            except TimeoutError:
                pass
        assert picky.heard.is_set(), picky.callers
        refused, taken = picky.callers[0], picky.callers[-1]
        assert refused != taken, "the call after the refusal came on the same connection"

        async def one() -> AsyncIterator[peer_pb2.MessageBatch]:
            yield peer_pb2.MessageBatch()

        # The shared channel, which forwarded client calls ride on, was left open.
        await peer_pb2_grpc.RaftPeerStub(client.channel).Stream(one(), timeout=5)  # type: ignore[arg-type]
        await client.close()
        await server.stop(None)

    asyncio.run(main())


def test_a_name_that_does_not_resolve_is_looked_up_again_on_a_new_channel() -> None:
    """A node added before its host is up (a container starting): gRPC's resolver would wait up to two
    minutes before looking again, so each failed send takes a new channel, which looks it up at once."""

    async def main() -> None:
        tuning = dataclasses.replace(TUNING, peer_backoff_min_s=0.01, peer_backoff_max_s=0.02)
        client = PeerClient(
            2, "raftd-no-such-host.invalid:1", Identity("c"), lambda _peer: None, tuning=tuning
        )
        seen = [client._raft_channel]  # kept alive, so that no two are the same object
        client.start()
        for _ in range(200):
            client.send(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1))
            await asyncio.sleep(0.02)
            if client._raft_channel is not seen[-1]:
                seen.append(client._raft_channel)
            if len(seen) >= 3:
                break
        assert len(seen) >= 3, "the sender kept the channel whose name did not resolve"
        await client.close()

    asyncio.run(main())
