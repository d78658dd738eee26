"""Durable Raft state: behaviour shared by SqliteStorage and its MemoryStorage twin, then what only a disk
can show (reopen, SIGKILL, locking, refusing foreign, newer or damaged databases without touching them)."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from raftd.core.types import Entry, HardState, Snapshot, SnapshotMeta
from raftd.storage import DirRecord, MemoryStorage, PersistedState, SqliteStorage, Storage, StorageError
from raftd.storage.checksum import VOTE_FILE, entry_crc, hard_state_crc

REPO = Path(__file__).resolve().parent.parent
CLUSTER = "c-test"
NODE = 1


def ents(first: int, last: int, term: int, tag: bytes = b"") -> list[Entry]:
    return [Entry(i, term, tag + b"cmd%d" % i) for i in range(first, last + 1)]


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    s: Storage = (
        SqliteStorage.open(tmp_path / "data", CLUSTER, NODE) if request.param == "sqlite" else MemoryStorage()
    )
    yield s
    s.close()


# -- behaviour both backends share --------------------------------------------------------------------


def test_fresh_store_is_empty(store: Storage) -> None:
    assert store.load() == PersistedState(HardState(), None, [])


def test_round_trip(store: Storage) -> None:
    entries = [Entry(1, 1), Entry(2, 1, b"k=v"), Entry(3, 2, bytes(range(256)))]
    store.save(HardState(term=2, vote=3, commit=2), entries)
    state = store.load()
    assert state == PersistedState(HardState(2, 3, 2), None, entries)
    assert state.entries[0].data == b""  # the leader's no-op keeps its empty payload, not None


def test_appends_accumulate(store: Storage) -> None:
    store.save(HardState(1, 1, 0), ents(1, 3, 1))
    store.save(None, ents(4, 4, 1))
    store.save(HardState(1, 1, 4), ents(5, 9, 1))
    assert store.load().entries == ents(1, 9, 1)
    assert store.load().hard_state == HardState(1, 1, 4)


def test_overwrite_truncates_the_conflicting_suffix(store: Storage) -> None:
    store.save(HardState(1, 0, 2), ents(1, 5, 1))
    store.save(HardState(2, 0, 2), ents(3, 4, 2, b"new"))
    assert store.load().entries == ents(1, 2, 1) + ents(3, 4, 2, b"new")


def test_overwrite_from_the_first_entry(store: Storage) -> None:
    store.save(HardState(1), ents(1, 3, 1))
    store.save(HardState(2), ents(1, 1, 2))
    assert store.load().entries == ents(1, 1, 2)


def test_hard_state_updates_alone_and_survives_entry_only_saves(store: Storage) -> None:
    store.save(HardState(1, 2, 0), [])
    store.save(HardState(3, 0, 0), [])
    store.save(None, ents(1, 2, 3))
    assert store.load().hard_state == HardState(3, 0, 0)
    store.save(HardState(3, 2, 2), [])
    assert store.load() == PersistedState(HardState(3, 2, 2), None, ents(1, 2, 3))


def test_empty_save_changes_nothing(store: Storage) -> None:
    store.save(HardState(1, 1, 1), ents(1, 1, 1))
    store.save(None, [])
    assert store.load() == PersistedState(HardState(1, 1, 1), None, ents(1, 1, 1))


def test_local_snapshot_discards_the_entries_it_covers(store: Storage) -> None:
    store.save(HardState(2, 1, 8), ents(1, 5, 1) + ents(6, 10, 2))
    snap = Snapshot(SnapshotMeta(6, 2), b"image@6")
    store.save(None, [], snap)
    assert store.load() == PersistedState(HardState(2, 1, 8), snap, ents(7, 10, 2))
    # The log goes on after the snapshot: append, then overwrite the tail.
    store.save(HardState(3, 1, 8), ents(9, 11, 3))
    assert store.load().entries == ents(7, 8, 2) + ents(9, 11, 3)
    # A later compaction covers more.
    snap2 = Snapshot(SnapshotMeta(10, 3), b"image@10")
    store.save(None, [], snap2)
    assert store.load() == PersistedState(HardState(3, 1, 8), snap2, ents(11, 11, 3))


def test_snapshot_at_the_last_index_leaves_an_empty_log(store: Storage) -> None:
    store.save(HardState(1, 1, 4), ents(1, 4, 1))
    snap = Snapshot(SnapshotMeta(4, 1), b"all")
    store.save(None, [], snap)
    assert store.load() == PersistedState(HardState(1, 1, 4), snap, [])
    store.save(HardState(1, 1, 5), ents(5, 5, 1))
    assert store.load().entries == ents(5, 5, 1)


def test_leader_snapshot_beyond_the_log_discards_every_entry(store: Storage) -> None:
    store.save(HardState(1, 0, 2), ents(1, 5, 1))
    snap = Snapshot(SnapshotMeta(20, 3), b"from leader")
    store.save(HardState(3, 0, 20), [], snap)
    assert store.load() == PersistedState(HardState(3, 0, 20), snap, [])
    store.save(None, ents(21, 22, 3))
    assert store.load().entries == ents(21, 22, 3)


def test_leader_snapshot_that_does_not_match_discards_the_tail_too(store: Storage) -> None:
    # Our entry 3 has term 1; the leader's snapshot says index 3 had term 2: entries 4, 5 do not follow it.
    store.save(HardState(2, 0, 2), ents(1, 5, 1))
    snap = Snapshot(SnapshotMeta(3, 2), b"from leader")
    store.save(HardState(2, 0, 3), [], snap)
    assert store.load() == PersistedState(HardState(2, 0, 3), snap, [])


def test_snapshot_and_entries_in_one_save(store: Storage) -> None:
    store.save(HardState(1, 0, 1), ents(1, 2, 1))
    snap = Snapshot(SnapshotMeta(10, 2), b"s")
    store.save(HardState(2, 0, 10), ents(11, 12, 2), snap)
    assert store.load() == PersistedState(HardState(2, 0, 10), snap, ents(11, 12, 2))


@pytest.mark.parametrize(
    ("hard_state", "entries", "snapshot", "message"),
    [
        (None, ents(7, 7, 2), None, "entries start at 7, leaving a gap after the last index 5"),
        (None, [Entry(6, 2), Entry(8, 2)], None, "entries are not contiguous: expected index 7, found 8"),
        (None, ents(2, 3, 2), None, "entry 2 is already covered by the snapshot at 2"),
        (None, ents(6, 6, 1), None, "entry 6 has term 1, below the term 2 before it"),
        (None, [Entry(6, 3), Entry(7, 2)], None, "entry 7 has term 2, below the term 3 before it"),
        (HardState(2, 0, 9), [], None, "commit index 9 is beyond the last log index 5"),
        (None, ents(4, 4, 3), None, "commit index 5 is beyond the last log index 4"),  # cuts a commit
        (None, [], Snapshot(SnapshotMeta(1, 1)), "snapshot at 1 is older than the stored snapshot at 2"),
    ],
)
def test_saves_that_would_break_the_log_are_refused_whole(
    store: Storage,
    hard_state: HardState | None,
    entries: list[Entry],
    snapshot: Snapshot | None,
    message: str,
) -> None:
    store.save(HardState(2, 0, 1), ents(1, 4, 1) + ents(5, 5, 2))
    store.save(HardState(2, 0, 5), [], Snapshot(SnapshotMeta(2, 1), b"s"))
    before = store.load()
    with pytest.raises(ValueError) as info:
        store.save(hard_state, entries, snapshot)
    assert str(info.value) == message
    assert store.load() == before


def test_an_image_staged_ahead_is_adopted_by_its_meta(store: Storage) -> None:
    """A local snapshot's image is written through stage_image as it is encoded; save(meta) adopts it."""
    store.save(HardState(1, 1, 9), ents(1, 9, 1))
    meta = SnapshotMeta(6, 1)
    with pytest.raises(ValueError, match="no image was staged for the snapshot at 6"):
        store.save(None, [], meta)
    assert store.load() == PersistedState(HardState(1, 1, 9), None, ents(1, 9, 1)), "refused whole"

    def write(out: BinaryIO) -> int:
        return out.write(b"image") + out.write(b"@6")

    assert store.stage_image(meta, write) == 7
    assert store.load_snapshot() is None, "staging alone changes nothing"
    store.save(None, [], meta)
    assert store.load() == PersistedState(HardState(1, 1, 9), Snapshot(meta, b"image@6"), ents(7, 9, 1))
    store.save(None, [], meta)  # the current image can be named again
    assert store.load() == PersistedState(HardState(1, 1, 9), Snapshot(meta, b"image@6"), ents(7, 9, 1))


def test_closed_store_refuses_use(store: Storage) -> None:
    store.close()
    store.close()  # twice is fine
    with pytest.raises(StorageError, match="closed"):
        store.load()
    with pytest.raises(StorageError, match="closed"):
        store.save(HardState(1), [])


# -- sqlite only: what a disk adds --------------------------------------------------------------------


def open_store(data_dir: Path, cluster: str = CLUSTER, node: int = NODE) -> SqliteStorage:
    return SqliteStorage.open(data_dir, cluster, node)


def test_reopen_keeps_everything_and_the_log_goes_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    snap = Snapshot(SnapshotMeta(3, 1), b"image")
    with open_store(data) as s:
        s.save(HardState(2, 1, 5), ents(1, 5, 1) + ents(6, 8, 2))
        s.save(None, [], snap)
    with open_store(data) as s:
        assert s.load() == PersistedState(HardState(2, 1, 5), snap, ents(4, 5, 1) + ents(6, 8, 2))
        # save() validates against the reopened log: a gap is still refused, an overwrite still truncates.
        with pytest.raises(ValueError, match="gap"):
            s.save(None, ents(10, 10, 2))
        s.save(None, ents(7, 7, 3))
    with open_store(data) as s:
        assert s.load().entries == ents(4, 5, 1) + ents(6, 6, 2) + ents(7, 7, 3)


def test_load_snapshot_returns_the_latest_alone(store: Storage) -> None:
    assert store.load_snapshot() is None
    store.save(HardState(2, 1, 8), ents(1, 8, 2))
    snap = Snapshot(SnapshotMeta(6, 2), b"image@6")
    store.save(None, [], snap)
    assert store.load_snapshot() == snap
    store.reclaim()
    assert store.load() == PersistedState(HardState(2, 1, 8), snap, ents(7, 8, 2))


def test_reclaim_keeps_the_file_bounded_under_overwrites(tmp_path: Path) -> None:
    """Compaction frees pages; reclaim() must hand them back or the file grows with every write."""
    sizes = []
    with open_store(tmp_path) as s:
        index = 0
        for _ in range(20):
            batch = [Entry(index + k, 1, b"x" * 200) for k in range(1, 501)]
            index += 500
            s.save(HardState(1, 1, index), batch)
            s.save(None, [], Snapshot(SnapshotMeta(index, 1), b"i" * 1000))
            s.reclaim()
            sizes.append((tmp_path / "raft.db").stat().st_size + (tmp_path / "raft.db-wal").stat().st_size)
    assert max(sizes[5:]) <= 2 * sizes[4], sizes


def test_snapshot_images_live_beside_the_database(tmp_path: Path) -> None:
    """One image file, the current one: staged ahead of its save, older and orphaned ones removed."""
    with open_store(tmp_path) as s:
        s.save(HardState(1, 1, 9), ents(1, 9, 1))
        first = Snapshot(SnapshotMeta(4, 1), b"image@4")
        s.save(None, [], first)
        assert [p.name for p in tmp_path.glob("snapshot-*")] == [f"snapshot-{4:020d}-{1:020d}.img"]
        orphan = Snapshot(SnapshotMeta(6, 1), b"never adopted")
        s.stage_image(orphan.meta, lambda f: f.write(orphan.data))
        second = Snapshot(SnapshotMeta(8, 1), b"image@8")
        s.stage_image(second.meta, lambda f: f.write(second.data))
        assert s.load_snapshot() == first  # staging alone changes nothing
        s.save(None, [], second)
        assert [p.name for p in tmp_path.glob("snapshot-*")] == [f"snapshot-{8:020d}-{1:020d}.img"]
    with open_store(tmp_path) as s:
        assert s.load().snapshot == second
    (tmp_path / f"snapshot-{8:020d}-{1:020d}.img").unlink()
    with open_store(tmp_path) as s, pytest.raises(StorageError, match="current snapshot cannot be read"):
        s.load()


def test_a_leader_snapshot_adopted_while_a_local_image_is_written_leaves_that_file_alone(
    tmp_path: Path,
) -> None:
    """The disk thread may adopt a leader's snapshot while a worker thread still encodes a local image: the
    half-written file must survive it (deleting it failed the local snapshot, which stopped the node)."""
    with open_store(tmp_path) as s:
        s.save(HardState(1, 1, 9), ents(1, 9, 1))
        leader = Snapshot(SnapshotMeta(20, 2), b"leader@20")

        def write(out: BinaryIO) -> int:
            n = out.write(b"local")
            s.save(None, [], leader)  # meanwhile, on the disk thread
            return n + out.write(b"@6")

        assert s.stage_image(SnapshotMeta(6, 1), write) == 7
        assert s.load().snapshot == leader
        # The local image is an orphan now (the node sees it is older and drops it); the next save removes it.
        assert sorted(p.name for p in tmp_path.glob("snapshot-*")) == [
            f"snapshot-{6:020d}-{1:020d}.img",
            f"snapshot-{20:020d}-{2:020d}.img",
        ]

        def fail(out: BinaryIO) -> int:
            out.write(b"half")
            raise ValueError("the encoder failed")

        with pytest.raises(ValueError, match="encoder failed"):
            s.stage_image(SnapshotMeta(8, 2), fail)
        assert not list(tmp_path.glob("*.partial")), "a failed image leaves no file behind"
    (tmp_path / f"snapshot-{9:020d}-{2:020d}.partial").write_bytes(b"a crash while writing")
    with open_store(tmp_path) as s:
        assert not list(tmp_path.glob("*.partial")), "opening clears images left half written"
        assert s.load().snapshot == leader


def test_layout_pragmas_and_meta(tmp_path: Path) -> None:
    data = tmp_path / "a" / "b" / "data"  # parents are created
    with open_store(data, "prod", 2) as s:
        assert s.path == data / "raft.db"
        assert s._conn is not None
        assert s._conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert s._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert (data / "LOCK").read_text() == f"{os.getpid()}\n"
    conn = sqlite3.connect(data / "raft.db")
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    record = meta.pop("record")
    assert meta == {"schema_version": 2, "cluster": "prod", "node_id": 2}
    assert DirRecord.load(record) == s.record and len(s.record.incarnation) == 16
    columns = [(r[1], r[2], r[3], r[5]) for r in conn.execute("PRAGMA table_info(entries)")]
    assert columns == [
        ("idx", "INTEGER", 0, 1),
        ("term", "INTEGER", 1, 0),
        ("data", "BLOB", 1, 0),
        ("crc", "INTEGER", 1, 0),
    ]
    conn.close()


def test_save_from_another_thread(tmp_path: Path) -> None:
    # The node loads on its event loop and saves on a disk thread.
    with open_store(tmp_path / "data") as s:
        s.load()
        t = threading.Thread(target=s.save, args=(HardState(1, 1, 0), ents(1, 3, 1)))
        t.start()
        t.join()
        assert s.load().entries == ents(1, 3, 1)


CRASH_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from raftd.core.types import Entry, HardState, Snapshot, SnapshotMeta
    from raftd.storage import SqliteStorage

    s = SqliteStorage.open(Path(sys.argv[1]), "c-test", 1)
    for batch in range(50):
        first = batch * 20 + 1
        batch_entries = [Entry(i, batch + 1, b"v%d" % i) for i in range(first, first + 20)]
        s.save(HardState(batch + 1, 1, first - 1), batch_entries)
    s.save(None, [], Snapshot(SnapshotMeta(500, 25), b"image"))
    s.save(HardState(51, 2, 990), [Entry(990, 51, b"last")])
    print("saved", flush=True)
    time.sleep(60)
    """
)


def test_everything_saved_survives_sigkill(tmp_path: Path) -> None:
    """save() returning means the data is in sqlite's WAL, not in a buffer a dead process takes with it.

    SIGKILL does not lose the page cache, so this checks the commit protocol, not the fsync itself.
    """
    data = tmp_path / "data"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(data)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "saved\n"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert (data / "raft.db-wal").exists()  # never checkpointed by a close
    with open_store(data) as s:  # the dead process's lock went with it
        state = s.load()
    expected = [Entry(i, (i - 1) // 20 + 1, b"v%d" % i) for i in range(501, 990)]
    assert state == PersistedState(
        HardState(51, 2, 990), Snapshot(SnapshotMeta(500, 25), b"image"), [*expected, Entry(990, 51, b"last")]
    )


def test_second_open_of_a_held_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = open_store(data)
    first.save(HardState(1, 1, 0), ents(1, 1, 1))
    with pytest.raises(StorageError) as info:
        open_store(data)
    assert (
        str(info.value)
        == f"{data / 'raft.db'}: in use by another process (pid {os.getpid()} holds {data / 'LOCK'})"
    )
    assert first.load().entries == ents(1, 1, 1)  # the holder is unaffected
    first.close()
    with open_store(data) as again:
        assert again.load().entries == ents(1, 1, 1)


def test_other_process_holding_the_lock_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    open_store(data).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from raftd.storage import SqliteStorage;"
            "SqliteStorage.open(Path(sys.argv[1]), 'c-test', 1); print('open', flush=True); time.sleep(60)",
            str(data),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(StorageError, match=f"in use by another process \\(pid {holder.pid} "):
            open_store(data)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def assert_refused(data: Path, fragment: str, cluster: str = CLUSTER, node: int = NODE) -> None:
    """The open fails with a one-line message naming the database, and leaves the directory as it was
    (but for the LOCK file: never deleted, since another process may be about to lock it)."""
    db = data / "raft.db"
    before = db.read_bytes()
    listing = sorted({p.name for p in data.iterdir()} | {"LOCK"})
    with pytest.raises(StorageError) as info:
        open_store(data, cluster, node)
    message = str(info.value)
    assert message.startswith(f"{db}: "), message
    assert "\n" not in message
    assert fragment in message, message
    assert db.read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == listing
    with pytest.raises(StorageError):  # refused again, so nothing was "repaired" on the way
        open_store(data, cluster, node)


def make_store(data: Path, entries: int = 5) -> None:
    with open_store(data) as s:
        s.save(HardState(1, 1, 1), ents(1, entries, 1, b"x" * 100))


def test_another_cluster_is_refused(tmp_path: Path) -> None:
    make_store(tmp_path)
    assert_refused(
        tmp_path, "belongs to cluster 'c-test' node 1, not cluster 'c-other' node 1", cluster="c-other"
    )


def test_another_node_is_refused(tmp_path: Path) -> None:
    make_store(tmp_path)
    assert_refused(tmp_path, "belongs to cluster 'c-test' node 1, not cluster 'c-test' node 2", node=2)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    make_store(tmp_path)
    conn = sqlite3.connect(tmp_path / "raft.db")
    conn.execute("UPDATE meta SET value = 3 WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    assert_refused(tmp_path, "written by a newer raftd (schema 3; this one reads 2)")


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "raft.db").write_bytes(os.urandom(64 * 1024))
    assert_refused(tmp_path, "the database is corrupt")


def test_truncated_database_is_refused(tmp_path: Path) -> None:
    make_store(tmp_path, entries=2000)
    db = tmp_path / "raft.db"
    data = db.read_bytes()
    assert len(data) > 100_000
    db.write_bytes(data[: len(data) // 2])
    assert_refused(tmp_path, "the database is corrupt")


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "raft.db")
    conn.execute("CREATE TABLE notes (t TEXT)")
    conn.commit()
    conn.close()
    assert_refused(tmp_path, "not a raftd database")


def test_empty_file_from_a_crash_during_creation_is_initialised(tmp_path: Path) -> None:
    (tmp_path / "raft.db").touch()
    with open_store(tmp_path) as s:
        s.save(HardState(1), ents(1, 1, 1))
    with open_store(tmp_path) as s:
        assert s.load().entries == ents(1, 1, 1)


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("DELETE FROM entries WHERE idx = 3", "entries are not contiguous: expected index 3, found 4"),
        ("DELETE FROM entries WHERE idx = 1", "entries are not contiguous: expected index 1, found 2"),
        # Rows rewritten with their checksums: what a bug in raftd (not the disk) could leave behind.
        (
            "UPDATE hard_state SET commit_idx = 9, crc = hard_state_crc(term, vote, 9)",
            "commit index 9 is beyond the last log index 5",
        ),
        (
            "UPDATE entries SET term = 0, crc = entry_crc(idx, 0, data) WHERE idx = 4",
            "entry 4 has term 0, below the term 1 before it",
        ),
        ("DELETE FROM hard_state", "the hard state row is missing"),
    ],
)
def test_damaged_log_is_refused_on_load(tmp_path: Path, sql: str, problem: str) -> None:
    make_store(tmp_path)
    conn = sqlite3.connect(tmp_path / "raft.db")
    conn.create_function("entry_crc", 3, entry_crc)
    conn.create_function("hard_state_crc", 3, hard_state_crc)
    conn.execute(sql)
    conn.commit()
    conn.close()
    # Open or load, whichever notices first.
    with pytest.raises(StorageError) as info, open_store(tmp_path) as s:
        s.load()
    assert str(info.value).startswith(f"{tmp_path / 'raft.db'}: ")
    assert problem in str(info.value)


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(StorageError, match="cannot create the data directory"):
        open_store(tmp_path / "data")


def test_a_derived_name_gives_way_to_the_stored_one_but_the_node_id_never_does(tmp_path: Path) -> None:
    """name_given=False (a map without a name, whose derived name changes with its addresses): the
    directory keeps the name it was created with. Another node's directory is refused all the same."""
    make_store(tmp_path)
    with SqliteStorage.open(tmp_path, "c-other", NODE, name_given=False) as s:
        assert s.cluster_name == CLUSTER and s.load().hard_state == HardState(1, 1, 1)
    with pytest.raises(StorageError, match="not cluster 'c-test' node 2"):
        SqliteStorage.open(tmp_path, "c-other", 2, name_given=False)


def test_the_cluster_id_is_recorded_durably(tmp_path: Path) -> None:
    make_store(tmp_path)
    with open_store(tmp_path) as s:
        assert s.cluster_id == ""
        s.record_cluster_id("0123456789abcdef")
        assert s.cluster_id == "0123456789abcdef"
    with open_store(tmp_path) as s:
        assert s.cluster_id == "0123456789abcdef"
        assert s.load().hard_state == HardState(1, 1, 1)


# -- checksums and the vote record (issue 19) -----------------------------------------------------------


def _flip(db: Path, needle: bytes) -> None:
    """Flip one bit of the one place needle stands in the file, as a failing disk would."""
    raw = bytearray(db.read_bytes())
    at = raw.find(needle)
    assert at >= 0 and raw.find(needle, at + 1) < 0, "the needle must stand once in the file"
    raw[at + len(needle) // 2] ^= 0x01
    db.write_bytes(bytes(raw))


def test_a_flipped_bit_in_a_value_stops_the_load_naming_the_entry(tmp_path: Path) -> None:
    """The follower of the issue started and served the damaged value, even to linearizable reads."""
    with open_store(tmp_path) as s:
        s.save(
            HardState(1, 1, 3),
            [Entry(1, 1, b"a" * 50), Entry(2, 1, b"the-value-to-damage"), Entry(3, 1, b"c")],
        )
    _flip(tmp_path / "raft.db", b"the-value-to-damage")
    with open_store(tmp_path) as s, pytest.raises(StorageError) as info:
        s.load()
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'raft.db'}: log entry 2 is damaged"), message
    assert "replace this node: raftctl member remove ID" in message and "\n" not in message


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("UPDATE hard_state SET vote = 2", "the term, vote and commit index is damaged"),
        ("UPDATE entries SET idx = 7 WHERE idx = 5", "log entry 7 is damaged"),
        ("UPDATE snapshot SET term = 9", "the snapshot's record is damaged"),
    ],
)
def test_every_stored_row_is_checked(tmp_path: Path, sql: str, what: str) -> None:
    with open_store(tmp_path) as s:
        s.save(HardState(1, 1, 5), ents(1, 5, 1))
        s.save(None, [], Snapshot(SnapshotMeta(2, 1), b"image"))
    conn = sqlite3.connect(tmp_path / "raft.db")
    conn.execute(sql)
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match=what), open_store(tmp_path) as s:
        s.load()


def test_a_database_that_went_back_in_time_is_refused(tmp_path: Path) -> None:
    """A deleted -wal file, or an old copy put back: the node would be free to vote again in a term it
    already voted in. raft.vote remembers the newest term and vote the database had made durable."""
    with open_store(tmp_path) as s:
        s.save(HardState(1, 1, 0), [])
    old = (tmp_path / "raft.db").read_bytes()
    with open_store(tmp_path) as s:
        s.save(HardState(2, 3, 0), [])  # a vote in term 2
    assert (tmp_path / VOTE_FILE).read_text().split()[:2] == ["2", "3"]
    (tmp_path / "raft.db").write_bytes(old)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"raft.db{suffix}").unlink(missing_ok=True)
    with (
        pytest.raises(StorageError, match=r"went back in time: it holds term 1 .* recorded term 2"),
        open_store(tmp_path) as s,
    ):
        s.load()


def test_the_vote_record_lags_the_database_but_never_leads_it(tmp_path: Path) -> None:
    """Written after the database's commit: a crash in between leaves it older, which passes."""
    with open_store(tmp_path) as s:
        s.save(HardState(3, 2, 0), [])
    (tmp_path / VOTE_FILE).write_text(f"2 1 {hard_state_crc(2, 1, 0)}\n")
    with open_store(tmp_path) as s:
        assert s.load().hard_state == HardState(3, 2, 0)
    # Same term, no vote recorded yet: the database's later vote in that term is fine too.
    (tmp_path / VOTE_FILE).write_text(f"3 0 {hard_state_crc(3, 0, 0)}\n")
    with open_store(tmp_path) as s:
        assert s.load().hard_state == HardState(3, 2, 0)
    (tmp_path / VOTE_FILE).write_text("3 9 12345\n")
    with pytest.raises(StorageError, match=r"raft\.vote: damaged"):
        open_store(tmp_path)


def test_a_schema_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    """Written as the previous release wrote it (its schema, no checksums, no vote record)."""
    conn = sqlite3.connect(tmp_path / "raft.db")
    for statement in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)",
        "CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 0),"
        " term INTEGER NOT NULL, vote INTEGER NOT NULL, commit_idx INTEGER NOT NULL)",
        "CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 0),"
        " idx INTEGER NOT NULL, term INTEGER NOT NULL, data BLOB NOT NULL)",
        "CREATE TABLE entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, data BLOB NOT NULL)",
        "INSERT INTO hard_state (id, term, vote, commit_idx) VALUES (0, 2, 1, 3)",
        "INSERT INTO entries VALUES (1, 1, X'01'), (2, 2, X'02'), (3, 2, X'03')",
        f"INSERT INTO meta VALUES ('schema_version', 1), ('cluster', '{CLUSTER}'), ('node_id', {NODE})",
    ):
        conn.execute(statement)
    conn.commit()
    conn.close()
    with open_store(tmp_path) as s:
        state = s.load()
        assert state.hard_state == HardState(2, 1, 3)
        assert state.entries == [Entry(1, 1, b"\x01"), Entry(2, 2, b"\x02"), Entry(3, 2, b"\x03")]
        s.save(None, [Entry(4, 2, b"\x04")])
    assert (tmp_path / VOTE_FILE).read_text().split()[:2] == ["2", "1"]
    conn = sqlite3.connect(tmp_path / "raft.db")
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (2,)
    conn.execute("UPDATE entries SET data = X'09' WHERE idx = 2")  # damage after the migration is caught
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="log entry 2 is damaged"), open_store(tmp_path) as s:
        s.load()


def test_the_directory_record_is_drawn_once_and_kept(tmp_path: Path) -> None:
    """The incarnation is the directory's for good: a reopen keeps it, another directory gets another."""
    with open_store(tmp_path / "a") as s:
        first = s.record
        s.save_record(dataclasses.replace(first, voters=(0, 1, 2), removed=True))
    with open_store(tmp_path / "a") as s:
        assert s.record == dataclasses.replace(first, voters=(0, 1, 2), removed=True)
    with open_store(tmp_path / "b") as s:
        assert s.record.incarnation != first.incarnation


def test_a_directory_of_an_earlier_release_gets_its_record_on_first_open(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        s.save(HardState(1, 1, 0), [Entry(1, 1, b"x")])
    conn = sqlite3.connect(tmp_path / "raft.db")
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'record'")  # as a release before records wrote it
    conn.close()
    with open_store(tmp_path) as s:
        drawn = s.record
        assert drawn.voters is None and not drawn.removed and s.load().entries == [Entry(1, 1, b"x")]
    with open_store(tmp_path) as s:
        assert s.record == drawn


def test_a_damaged_directory_record_stops_the_node(tmp_path: Path) -> None:
    with open_store(tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / "raft.db")
    with conn:
        conn.execute("UPDATE meta SET value = replace(value, 'false', 'true ') WHERE key = 'record'")
    conn.close()
    with pytest.raises(StorageError, match="membership record is damaged"):
        open_store(tmp_path)
    assert DirRecord.load(DirRecord(voters=(1,)).dump()).voters == (1,)
