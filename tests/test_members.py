"""The membership record in the replicated state (raftd.kv.members): its entries, how they apply, and its
place in snapshot images."""

from __future__ import annotations

import zlib

import pytest

from raftd.kv import Command, CommandError, KVStore, Op
from raftd.kv.image import MAGIC, MAGIC_V4, ImageError, decode, encode
from raftd.kv.members import Change, Member, MemberChange, applied, next_id

THREE = ((0, Member("h:1", False, "a")), (1, Member("h:2", False, "b")), (2, Member("h:3", False, "")))


def test_a_change_survives_its_entry_encoding() -> None:
    for mc in [
        MemberChange(Change.BOOTSTRAP, members=THREE),
        MemberChange(Change.ADD_LEARNER, 7, "h:8", "f00d"),
        MemberChange(Change.REMOVE, 2),
        MemberChange(Change.UPDATE, 1, "other:9"),
    ]:
        cmd = Command.decode(mc.command().encode())
        assert cmd.op is Op.MEMBER and MemberChange.decode(cmd) == mc


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"{",
        b'{"change":"explode","node":1}',
        b'{"change":"remove"}',
        b'{"change":"remove","node":-1}',
        b'{"change":"remove","node":true}',
        b'{"change":"bootstrap","node":0,"members":[[0,"h",1,""]]}',
    ],
)
def test_a_malformed_membership_entry_is_a_corrupt_entry(value: bytes) -> None:
    with pytest.raises(CommandError, match="membership"):
        MemberChange.decode(Command(Op.MEMBER, b"", value))


def test_changes_apply_in_order_and_never_fail() -> None:
    assert applied({}, MemberChange(Change.ADD_LEARNER, 3, "h:4")) == {}, (
        "nothing before the bootstrap record"
    )
    m = applied({}, MemberChange(Change.BOOTSTRAP, members=THREE))
    assert m == dict(THREE)
    assert applied(m, MemberChange(Change.BOOTSTRAP, members=THREE[:1])) == m, "recorded once"
    m = applied(m, MemberChange(Change.ADD_LEARNER, 3, "h:4", "d"))
    assert m[3] == Member("h:4", True, "d")
    m = applied(m, MemberChange(Change.ADD_VOTER, 3))
    assert m[3] == Member("h:4", False, "d"), "a promotion keeps the address and incarnation"
    m = applied(m, MemberChange(Change.INCARNATION, 2, incarnation="c"))
    m = applied(m, MemberChange(Change.INCARNATION, 2, incarnation="x"))
    assert m[2].incarnation == "c", "an incarnation is never replaced"
    m = applied(m, MemberChange(Change.UPDATE, 1, "moved:2"))
    assert m[1] == Member("moved:2", False, "b")
    m = applied(m, MemberChange(Change.REMOVE, 0))
    assert sorted(m) == [1, 2, 3]
    assert applied(m, MemberChange(Change.REMOVE, 0)) == m, "a change that no longer fits changes nothing"
    assert applied(m, MemberChange(Change.UPDATE, 9, "h:9")) == m


def test_the_store_applies_and_restores_its_membership() -> None:
    kv = KVStore()
    kv.apply(1, MemberChange(Change.BOOTSTRAP, members=THREE).command())
    kv.apply(2, Command(Op.PUT, b"k", b"v"))
    kv.apply(3, MemberChange(Change.ADD_LEARNER, 3, "h:4", "d").command())
    raw = encode(kv.image())
    assert raw.startswith(MAGIC_V4)
    other = KVStore()
    other.restore(3, raw)
    assert other.members == kv.members and other.get(b"k") == b"v"
    assert encode(other.image()) == raw, "replicas encode the same record to the same bytes"


def test_an_image_without_a_record_keeps_the_earlier_format() -> None:
    """A node of an earlier release reads only RAFTDKV2/3: a cluster that has recorded no membership (it
    cannot have while such a node is a member) sends it images it can read."""
    kv = KVStore()
    kv.apply(1, Command(Op.PUT, b"k", b"v"))
    raw = encode(kv.image())
    assert raw.startswith(MAGIC) and decode(raw).members == {}


def test_a_damaged_membership_record_is_refused() -> None:
    kv = KVStore()
    kv.apply(1, MemberChange(Change.BOOTSTRAP, members=THREE).command())
    raw = encode(kv.image())
    body = raw[:-4]
    # The member section with a bad learner flag, re-checksummed: a writer's bug, not damage.
    bad = body.replace(
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00h:1", b"\x00\x00\x00\x00\x00\x00\x00\x00\x07\x03\x00h:1"
    )
    assert bad != body
    with pytest.raises(ImageError, match="membership"):
        decode(bad + zlib.crc32(bad).to_bytes(4, "little"))
    # Node 1's record under node 0's id: each id once, in ascending order.
    twice = body.replace(b"\x01" + b"\x00" * 8 + b"\x03\x00h:2", b"\x00" * 9 + b"\x03\x00h:2")
    assert twice != body
    with pytest.raises(ImageError, match="membership"):
        decode(twice + zlib.crc32(twice).to_bytes(4, "little"))
    with pytest.raises(ImageError, match="checksum"):
        decode(raw[:-10] + b"\xff" + raw[-9:])


def test_ids_are_never_given_twice() -> None:
    """The record keeps the lowest id never given: a removed member's id stays taken, in images too."""
    kv = KVStore()
    kv.apply(1, MemberChange(Change.BOOTSTRAP, members=THREE).command())
    assert kv.next_member_id == 3
    kv.apply(2, MemberChange(Change.ADD_LEARNER, 5, "h:6").command())
    kv.apply(3, MemberChange(Change.REMOVE, 5).command())
    assert 5 not in kv.members and kv.next_member_id == 6
    other = KVStore()
    other.restore(3, encode(kv.image()))
    assert other.next_member_id == 6
    assert next_id(6, MemberChange(Change.UPDATE, 1, "h:9")) == 6


def test_an_image_that_would_give_an_id_again_is_refused() -> None:
    kv = KVStore()
    kv.apply(1, MemberChange(Change.BOOTSTRAP, members=THREE).command())
    kv.next_member_id = 2  # below member 2: a writer's bug
    with pytest.raises(ImageError, match="give a member's id again"):
        decode(encode(kv.image()))
