"""The keyspace in a file of its own (raftd.kv.mvcc.open_file), as a node keeps it: the same state and
images as in memory, views that later writes do not reach, and no file left behind."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from raftd.errors import FatalError
from raftd.kv import Command, KVStore, Op, encode, mvcc
from raftd.kv.mvcc import PutRequest, encode_request
from tests.nodes import commit_all, leader, release_node


def _writes(kv: KVStore, start: int, n: int) -> None:
    for i in range(start, start + n):
        kv.apply(i, Command(Op.PUT, b"k%d" % (i % 7), b"v%d" % i))
        if i % 5 == 0:
            kv.apply(i, Command(Op.DELETE, b"k%d" % (i % 3)))


def _stores(tmp_path: Path) -> tuple[KVStore, KVStore]:
    on_disk, in_memory = KVStore(tmp_path), KVStore()
    for kv in (on_disk, in_memory):
        kv.apply(1, Command(Op.MERGE, b""))
        _writes(kv, 2, 50)
        kv.apply(52, Command(Op.MVCC, b"", encode_request(PutRequest(b"etcd", b"\xff"))))
    return on_disk, in_memory


def test_a_keyspace_in_a_file_images_byte_for_byte_as_one_in_memory(tmp_path: Path) -> None:
    on_disk, in_memory = _stores(tmp_path)
    assert on_disk.keyspace.path is not None and on_disk.keyspace.path.exists()
    image = on_disk.image()
    assert isinstance(image.keyspace, mvcc.Frozen)
    assert encode(image) == encode(in_memory.image())


def test_an_image_is_the_state_when_it_was_taken_whatever_is_written_after(tmp_path: Path) -> None:
    on_disk, in_memory = _stores(tmp_path)
    image = on_disk.image()
    _writes(on_disk, 53, 40)  # while a snapshot would be encoding off the loop
    on_disk.keyspace.flush()
    assert encode(image) == encode(in_memory.image())
    assert encode(image) == encode(image), "a view reads again the same"


def test_a_restore_replaces_the_file_and_a_start_removes_what_was_left(tmp_path: Path) -> None:
    on_disk, in_memory = _stores(tmp_path)
    raw = encode(in_memory.image())
    first = on_disk.keyspace.path
    assert first is not None
    on_disk.restore(52, raw)
    assert not first.exists(), "the replaced keyspace's file goes"
    assert on_disk.keyspace.path is not None and on_disk.keyspace.path.exists()
    assert encode(on_disk.image()) == raw
    assert on_disk.get(b"etcd") == b"\xff"
    other = KVStore(tmp_path)
    other.discard()
    assert other.keyspace.path is not None and not other.keyspace.path.exists()
    mvcc.remove_files(tmp_path)
    assert list(tmp_path.glob(mvcc.KEYSPACE_FILES)) == []


def test_the_rows_hash_reads_a_view(tmp_path: Path) -> None:
    on_disk, in_memory = _stores(tmp_path)
    revision = on_disk.keyspace.revision
    view = mvcc.serialize(on_disk.keyspace, always=True)
    assert mvcc.hash_rows(view, revision) == mvcc.hash_rows(
        mvcc.serialize(in_memory.keyspace, always=True), revision
    )


def test_a_keyspace_file_that_cannot_be_written_stops_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under the keyspace's file stops the node with one line, as the log's would."""

    async def main() -> None:
        node = await leader(tmp_path)

        def full(*args: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(node.kv.keyspace, "flush", full)
        node.propose_nowait(Command(Op.PUT, b"k", b"v"))
        with pytest.raises(FatalError, match="cannot write the keyspace's file: database or disk is full"):
            await commit_all(node)
        release_node(node)

    asyncio.run(main())
