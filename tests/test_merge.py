"""One keyspace: raftd.v1's keys move into the etcd keyspace at an Op.MERGE entry (raftd.kv.store)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftd.errors import NotCapable
from raftd.kv import Command, ImageError, KVStore, Op, decode, encode
from raftd.kv import image as image_module
from raftd.kv.mvcc import DeleteRangeRequest, PutRequest, RangeRequest, encode_request
from tests.nodes import commit_all, leader, logged, release_node


def _etcd_put(kv: KVStore, index: int, key: bytes, value: bytes) -> None:
    kv.apply(index, Command(Op.MVCC, b"", encode_request(PutRequest(key, value))))


def _store_before_merge() -> KVStore:
    kv = KVStore()
    kv.apply(1, Command(Op.PUT, b"a", b"1"))
    kv.apply(2, Command(Op.PUT, b"b", b"2", b"client", 1))
    kv.apply(3, Command(Op.PUT, b"gone", b"x"))
    kv.apply(4, Command(Op.DELETE, b"gone"))
    _etcd_put(kv, 5, b"b", b"etcd")  # the same name in the etcd keyspace: a namespace of its own so far
    _etcd_put(kv, 6, b"e", b"etcd only")
    return kv


def test_until_merged_the_two_apis_keep_separate_keys() -> None:
    kv = _store_before_merge()
    assert not kv.merged
    assert kv.get(b"b") == b"2"
    ks = kv.keyspace
    assert ks.revision == 2 and ks.get(b"a") is None and ks.get(b"b").value == b"etcd"  # type: ignore[union-attr]


def test_merge_moves_every_key_at_one_revision_and_the_raftd_v1_value_wins() -> None:
    kv = _store_before_merge()
    assert kv.data is not None
    order = [key for key, _ in kv.data.items()]
    result = kv.apply(7, Command(Op.MERGE, b""))
    assert kv.merged and result.revision == 3
    ks = kv.keyspace
    a, b, e = ks.get(b"a"), ks.get(b"b"), ks.get(b"e")
    assert a is not None and (a.value, a.create_revision, a.mod_revision, a.version) == (b"1", 3, 3, 1)
    # The key both APIs had: raftd.v1's value, as a new version of the etcd key (its history kept).
    assert b is not None and (b.value, b.create_revision, b.mod_revision, b.version) == (b"2", 1, 3, 2)
    assert e is not None and e.value == b"etcd only" and ks.get(b"gone") is None
    assert sorted(order) == [b"a", b"b"]
    assert [ev.kv.key for ev in ks.changes(2, b"\0", b"\0")] == order, "in the packed map's order"
    assert kv.get(b"a") == b"1" and kv.get(b"e") == b"etcd only"


def test_a_second_merge_changes_nothing() -> None:
    kv = _store_before_merge()
    kv.apply(7, Command(Op.MERGE, b""))
    before = list(kv.keyspace.rows())
    assert kv.apply(8, Command(Op.MERGE, b"")).revision == 3
    assert list(kv.keyspace.rows()) == before


def test_after_the_merge_raftd_v1_writes_are_keyspace_revisions() -> None:
    kv = _store_before_merge()
    kv.apply(7, Command(Op.MERGE, b""))
    put = kv.apply(8, Command(Op.PUT, b"a", b"new", b"client", 2))
    assert put.existed and put.revision == 4
    a = kv.keyspace.get(b"a")
    assert a is not None and (a.value, a.version, a.mod_revision) == (b"new", 2, 4)
    # A retried write still applies once: its session answers.
    assert kv.apply(9, Command(Op.PUT, b"a", b"new", b"client", 2)) == put
    assert kv.keyspace.revision == 4
    # b was an etcd key before the merge, and got raftd.v1's value as its second version in it.
    kv.apply(10, Command(Op.PUT, b"b", b"3"))
    b_kv = kv.keyspace.get(b"b")
    assert b_kv is not None and (b_kv.version, b_kv.create_revision) == (3, 1)
    deleted = kv.apply(10, Command(Op.DELETE, b"a"))
    assert deleted.existed and deleted.revision == 6 and kv.get(b"a") is None
    assert kv.apply(11, Command(Op.DELETE, b"a")).existed is False
    assert kv.keyspace.revision == 6, "deleting an absent key is no revision, as in etcd"
    # And an etcd write is seen by raftd.v1.
    _etcd_put(kv, 12, b"from etcd", b"\xff\x00")
    assert kv.get(b"from etcd") == b"\xff\x00"
    assert kv.keyspace.range(RangeRequest(b"\0", b"\0")).count == 3


def test_a_merged_image_round_trips_and_is_its_own_format() -> None:
    kv = _store_before_merge()
    kv.apply(7, Command(Op.MERGE, b""))
    raw = encode(kv.image())
    assert raw.startswith(image_module.MAGIC_V6)
    back = KVStore()
    back.restore(7, raw)
    assert back.merged and back.get(b"a") == b"1" and back.keyspace.revision == 3
    assert list(back.keyspace.rows()) == list(kv.keyspace.rows())
    assert encode(back.image()) == raw


def test_a_merged_empty_keyspace_is_still_merged_in_its_image() -> None:
    kv = KVStore()
    kv.apply(1, Command(Op.MERGE, b""))
    assert kv.merged and kv.keyspace.revision == 0
    back = KVStore()
    back.restore(1, encode(kv.image()))
    assert back.merged


def test_an_unmerged_store_keeps_writing_the_formats_the_previous_release_reads() -> None:
    kv = KVStore()
    kv.apply(1, Command(Op.PUT, b"a", b"1"))
    assert encode(kv.image()).startswith(image_module.MAGIC)
    _etcd_put(kv, 2, b"e", b"v")
    assert encode(kv.image()).startswith(image_module.MAGIC_V5)


def test_a_merged_image_that_also_holds_buckets_is_refused() -> None:
    kv = KVStore()
    kv.apply(1, Command(Op.PUT, b"a", b"1"))
    raw = bytearray(encode(kv.image()))
    # The same image relabelled as merged, its checksum made right: the buckets cannot be there.
    raw[: len(image_module.MAGIC)] = image_module.MAGIC_V6
    forged = _with_crc(bytes(raw[:-4]) + b"\0" + _empty_keyspace())
    with pytest.raises(ImageError, match="buckets used"):
        decode(forged)


def _empty_keyspace() -> bytes:
    from raftd.kv.mvcc import encode_image

    return encode_image(b"")


def _with_crc(body: bytes) -> bytes:
    import zlib

    return body + zlib.crc32(body).to_bytes(4, "little")


def test_replicas_that_took_snapshots_at_different_indexes_merge_alike() -> None:
    """A replica restored from an image taken before the merge and one that applied the whole log reach
    the same bytes: the merge is an entry, so both move the keys at the same index and revision."""
    entries = [
        Command(Op.PUT, b"k%d" % i, b"v%d" % i) if i % 3 else Command(Op.DELETE, b"k%d" % (i - 1))
        for i in range(1, 40)
    ]
    entries += [Command(Op.MERGE, b""), Command(Op.PUT, b"k1", b"after"), Command(Op.DELETE, b"k2")]
    whole = KVStore()
    for i, cmd in enumerate(entries, 1):
        whole.apply(i, cmd)
    for cut in (5, 39, 40):
        part = KVStore()
        for i, cmd in enumerate(entries[:cut], 1):
            part.apply(i, cmd)
        restored = KVStore()
        restored.restore(cut, encode(part.image()))
        for i, cmd in enumerate(entries[cut:], cut + 1):
            restored.apply(i, cmd)
        assert encode(restored.image()) == encode(whole.image()), cut


def _merges(node: object) -> list[int]:
    return [i for i, c in logged(node) if c.op is Op.MERGE]  # type: ignore[arg-type]


def test_the_leader_merges_only_once_every_peer_can_apply_the_entry(tmp_path: Path) -> None:
    async def main() -> None:
        node = await leader(tmp_path)
        node.propose_nowait(Command(Op.PUT, b"old", b"v"))
        await commit_all(node)
        node.peer_speaks(2, 6)
        node.peer_speaks(3, 5)  # node 2 (core id 3) runs the previous release
        node._take_input()
        await commit_all(node)
        assert _merges(node) == [] and not node.kv.merged and node.kv.keyspace.get(b"old") is None
        moved = node.keyspace_moved()
        node.peer_speaks(3, 6)
        node._take_input()
        (index,) = _merges(node)
        await commit_all(node)
        assert node.kv.merged and node.kv.keyspace.get(b"old") is not None
        assert moved.done(), "watchers are woken by the keys moving in"
        # raftd.v1 writes now wake them too.
        moved = node.keyspace_moved()
        node.propose_nowait(Command(Op.DELETE, b"old"))
        await commit_all(node)
        assert moved.done() and node.kv.keyspace.get(b"old") is None
        assert _merges(node) == [index], "proposed once"
        release_node(node)

    asyncio.run(main())


def test_etcd_deletes_of_raftd_v1_keys_after_the_merge(tmp_path: Path) -> None:
    kv = _store_before_merge()
    kv.apply(7, Command(Op.MERGE, b""))
    kv.apply(8, Command(Op.MVCC, b"", encode_request(DeleteRangeRequest(b"a", b"c"))))
    assert kv.get(b"a") is None and kv.get(b"b") is None and kv.get(b"e") == b"etcd only"


def test_once_merged_a_new_leader_takes_etcd_writes_before_its_peers_answer_it(tmp_path: Path) -> None:
    """A leader that has heard from no peer yet (just elected; one of them down): the merge in the log
    says every member applies etcd writes. Before the merge it cannot know, and refuses them."""

    async def main() -> None:
        node = await leader(tmp_path)
        put = Command(Op.MVCC, b"", encode_request(PutRequest(b"k", b"v")))
        with pytest.raises(NotCapable):
            node.propose_nowait(put)
        node.kv.merge()  # as an applied Op.MERGE entry (or a snapshot after one) leaves it
        node.propose_nowait(put)
        await commit_all(node)
        assert node.kv.get(b"k") == b"v"
        release_node(node)

    asyncio.run(main())
