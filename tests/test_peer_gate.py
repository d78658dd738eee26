"""The peer port takes calls from the members' addresses only (issue 19), and a resolver that hangs or
fails does not shut members out."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from raftd.core import Message, MsgType
from raftd.errors import WRONG_INCARNATION
from raftd.kv.members import Change, Member, MemberChange
from raftd.pb import peer_pb2
from raftd.server import PeerService
from raftd.settings import Limits, Tuning
from raftd.transport.codec import message_to_pb
from raftd.transport.gate import MemberAddresses, caller_address

from .nodes import follower, leader, release_node
from .test_snapshot_limit import Aborted, Context

# Names looked up again for every caller not among the known addresses, not at most once a second.
ALWAYS_LOOK_UP = Tuning(peer_lookup_interval_s=1e-9)


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.2:5000", "127.0.0.2"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:%5B::1%5D:5000", "::1"),
        ("ipv6:%5B::ffff:10.0.0.7%5D:5000", "10.0.0.7"),  # an IPv4 caller of a dual-stack socket
        ("ipv6:[fe80::1%25eth0]:5000", "fe80::1"),
        ("unix:/tmp/socket", None),
        ("ipv4:not-an-address:1", None),
    ],
)
def test_the_callers_address_is_read_from_grpcs_peer_string(peer: str, address: str | None) -> None:
    assert caller_address(peer) == (ipaddress.ip_address(address) if address else None)


class Resolver:
    """Answers as told; a host in `hang` never answers."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.hang: set[str] = set()
        self.calls: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        if host in self.hang:
            await asyncio.Event().wait()
        if host not in self.answers:
            raise OSError(f"{host}: name not known")
        return self.answers[host]


def test_literal_addresses_need_no_lookup_and_strangers_are_refused() -> None:
    async def main() -> None:
        resolver = Resolver({})
        members = MemberAddresses(["127.0.0.1", "[::1]"], resolver)
        assert await members.allows("ipv4:127.0.0.1:1")
        assert await members.allows("ipv6:[::1]:1")
        assert await members.allows("ipv6:[::ffff:127.0.0.1]:1")
        assert not await members.allows("ipv4:127.0.0.2:1")
        assert not await members.allows("unix:/x")
        assert resolver.calls == []

    asyncio.run(main())


def test_a_loopback_caller_is_a_member_when_a_member_is_on_loopback() -> None:
    """Members named by the host's own name, which Debian's /etc/hosts maps to 127.0.1.1: their calls to
    127.0.1.1 come from 127.0.0.1. No loopback member, no loopback caller; and a caller that binds another
    loopback address (the issue's 127.0.0.2) is still a stranger."""

    async def main() -> None:
        local = MemberAddresses(["myhost"], Resolver({"myhost": ["127.0.1.1"]}))
        assert await local.allows("ipv4:127.0.0.1:1")
        assert await local.allows("ipv6:[::1]:1")
        assert not await local.allows("ipv4:127.0.0.2:1"), "only the loopback source the kernel picks"
        remote = MemberAddresses(["n0"], Resolver({"n0": ["10.0.0.1"]}))
        assert not await remote.allows("ipv4:127.0.0.1:1")

    asyncio.run(main())


def test_strangers_held_up_by_a_hanging_lookup_are_bounded() -> None:
    """--max-peer-lookup-waiters of them wait; the rest are refused at once."""

    async def main() -> None:
        resolver = Resolver({})
        resolver.hang.add("n0")
        limits = Limits(max_peer_lookup_waiters=3)
        members = MemberAddresses(["n0"], resolver, limits, Tuning(peer_lookup_wait_s=0.5))
        loop = asyncio.get_running_loop()
        started = loop.time()
        calls = [asyncio.ensure_future(members.allows(f"ipv4:10.6.6.{i}:1")) for i in range(10)]
        done, _ = await asyncio.wait(calls, timeout=0.2)
        assert len(done) == 7, "the three that wait are the only ones held"
        assert not any(c.result() for c in done)
        assert not any(await asyncio.gather(*calls))
        assert loop.time() - started < 2.0
        members.close()

    asyncio.run(main())


def test_a_member_back_with_a_new_address_is_let_in_after_a_lookup() -> None:
    """A container or pod that restarts comes back with a new address: a caller not among the known ones
    has the names looked up again (at most once a second), then is judged."""

    async def main() -> None:
        resolver = Resolver({"n0": ["10.0.0.1"], "n1": ["10.0.0.2"]})
        members = MemberAddresses(["n0", "n1"], resolver, tuning=ALWAYS_LOOK_UP)
        assert await members.allows("ipv4:10.0.0.2:1")
        assert not await members.allows("ipv4:10.0.0.9:1")
        resolver.answers["n1"] = ["10.0.0.9"]
        assert await members.allows("ipv4:10.0.0.9:1")
        assert not await members.allows("ipv4:10.0.0.2:1")  # its old address went with the new lookup

    asyncio.run(main())


def test_strangers_calling_in_a_loop_cost_one_lookup_per_second_not_one_per_call() -> None:
    async def main() -> None:
        resolver = Resolver({"n0": ["10.0.0.1"]})
        members = MemberAddresses(["n0"], resolver)
        for _ in range(50):
            assert not await members.allows("ipv4:10.6.6.6:1")
        assert resolver.calls == ["n0"]

    asyncio.run(main())


def test_a_failed_lookup_keeps_the_last_addresses() -> None:
    """A member cut off from the network has no name in some resolvers (Docker's) until it is back; the
    others' addresses, and its own last one, stay valid meanwhile."""

    async def main() -> None:
        resolver = Resolver({"n0": ["10.0.0.1"], "n1": ["10.0.0.2"]})
        members = MemberAddresses(["n0", "n1"], resolver, tuning=ALWAYS_LOOK_UP)
        assert await members.allows("ipv4:10.0.0.1:1")
        del resolver.answers["n1"]
        assert not await members.allows("ipv4:10.6.6.6:1")  # a lookup of both, n1's failing
        assert await members.allows("ipv4:10.0.0.2:1")

    asyncio.run(main())


def test_a_hanging_lookup_holds_up_no_known_member_and_a_stranger_only_briefly() -> None:
    """A resolver that never answers for one name: the known members go on at once, a stranger is refused
    after Tuning.peer_lookup_wait_s, and no second lookup of that name starts while the first one hangs
    (they would pile up on the executor's few threads, and every caller would wait behind them)."""

    async def main() -> None:
        resolver = Resolver({"n0": ["10.0.0.1"], "n1": ["10.0.0.2"]})
        tuning = Tuning(peer_lookup_interval_s=1e-9, peer_lookup_wait_s=0.05)
        members = MemberAddresses(["n0", "n1"], resolver, tuning=tuning)
        assert await members.allows("ipv4:10.0.0.1:1")
        resolver.hang.add("n1")
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(5):
            assert not await members.allows("ipv4:10.6.6.6:1")
        assert loop.time() - started < 5 * 0.05 + 1.0
        assert resolver.calls.count("n1") == 2  # the first lookup, then the one still hanging
        started = loop.time()
        assert await members.allows("ipv4:10.0.0.2:1")
        assert await members.allows("ipv4:10.0.0.1:1")
        assert loop.time() - started < 0.05
        members.close()

    asyncio.run(main())


def _heartbeat(name: str) -> peer_pb2.MessageBatch:
    m = Message(MsgType.HEARTBEAT, to=1, frm=2, term=1)
    return peer_pb2.MessageBatch(cluster=name, messages=[message_to_pb(m)], version=1)


def test_a_stranger_is_refused_before_its_messages_are_read_and_a_member_is_heard(tmp_path: Path) -> None:
    async def main() -> None:
        node = follower(tmp_path)  # its map's members are all on 127.0.0.1
        service = PeerService(node)
        read: list[int] = []

        async def batches() -> AsyncIterator[peer_pb2.MessageBatch]:
            read.append(1)
            yield _heartbeat(node.identity.name)

        stranger = Context("ipv4:127.0.0.2:40000")
        with pytest.raises(Aborted):
            await service.Stream(batches(), stranger)  # type: ignore[arg-type]
        assert stranger.status is not None and stranger.status[0] is grpc.StatusCode.PERMISSION_DENIED
        assert "127.0.0.2" in stranger.status[1] and read == [] and node.inbox == []
        with pytest.raises(Aborted):
            await service.InstallSnapshot(batches(), stranger)  # type: ignore[arg-type]
        assert read == []
        member = Context("ipv4:127.0.0.1:40001")
        await service.Stream(batches(), member)  # type: ignore[arg-type]
        assert member.status is None and len(node.inbox) == 1
        unchecked = PeerService(node, check_callers=False)
        await unchecked.Stream(batches(), Context("ipv4:127.0.0.2:40002"))  # type: ignore[arg-type]
        assert len(node.inbox) == 2
        service.close()
        release_node(node)

    asyncio.run(main())


def test_a_batch_is_its_senders_even_when_it_passes_on_another_nodes_read(tmp_path: Path) -> None:
    """A follower passes a peer's ReadIndex on to the leader with the peer as its sender field. Taken as
    the batch's sender, the follower's data directory was checked against the peer's record and refused
    as a wiped node's, and the follower stopped (a 20 s Jepsen run with suspensions hit it)."""

    async def main() -> None:
        node = await leader(tmp_path)
        record = (
            (0, Member("h:1", incarnation="a")),
            (1, Member("h:2", incarnation="b")),
            (2, Member("h:3", incarnation="c")),
        )
        node.kv.apply(1, MemberChange(Change.BOOTSTRAP, members=record).command())
        passed_on = Message(MsgType.READ_INDEX, to=1, frm=3)  # node 2 asked node 1, which passes it on
        own = Message(MsgType.HEARTBEAT_RESP, to=1, frm=2, term=node.raw.term)

        async def batches() -> AsyncIterator[peer_pb2.MessageBatch]:
            messages = [message_to_pb(passed_on), message_to_pb(own)]
            yield peer_pb2.MessageBatch(
                cluster=node.identity.name, messages=messages, incarnation="b", version=5
            )

        service = PeerService(node, check_callers=False)
        context = Context("ipv4:127.0.0.1:40001")
        await service.Stream(batches(), context)  # type: ignore[arg-type]
        assert context.status is None, context.status
        assert (
            node.peer_refusal(2, "x") == WRONG_INCARNATION
        )  # a batch of node 1's own with another directory
        service.close()
        release_node(node)

    asyncio.run(main())
