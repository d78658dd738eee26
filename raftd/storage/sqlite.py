"""Durable Raft state in one sqlite3 file: hard state, log and snapshot, each save one fsynced transaction.

Layout of a data directory: raft.db (with its -wal/-shm while open), the current snapshot image in
snapshot-INDEX-TERM.img (a large image written inside the database would hold its write lock, and with it
every Ready, for hundreds of milliseconds), and LOCK, which an open store holds with flock so two processes
never write one log. Opening never repairs or resets anything: a database of
another cluster or node, of a newer schema, or damaged, is refused with a StorageError and left as found.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from raftd.core.types import Entry, HardState, Snapshot, SnapshotMeta

from .base import DirRecord, LogShape, PersistedState, StorageError, plan_save, shape_of, state_problem
from .checksum import RECOVER, VoteRecord, entry_crc, hard_state_crc, snapshot_crc

# 2: every row carries a crc (raftd/storage/checksum.py); version 1 files are migrated in place on open.
SCHEMA_VERSION = 2
DB_NAME = "raft.db"
LOCK_NAME = "LOCK"

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)",
    "CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 0),"
    " term INTEGER NOT NULL, vote INTEGER NOT NULL, commit_idx INTEGER NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 0),"
    " idx INTEGER NOT NULL, term INTEGER NOT NULL, data BLOB NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, data BLOB NOT NULL,"
    " crc INTEGER NOT NULL)",
    "INSERT INTO hard_state (id, term, vote, commit_idx, crc)"
    f" VALUES (0, 0, 0, 0, {hard_state_crc(0, 0, 0)})",
)


class SqliteStorage:
    """The node's disk: one process at a time (the LOCK file), any thread (a mutex serialises calls)."""

    def __init__(self, db: Path, conn: sqlite3.Connection, lock_fd: int) -> None:
        """Use open(): it validates the directory and takes the lock this object then owns."""
        self.path = db
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        # Readies are saved on the event loop, snapshots on a disk thread: calls must not interleave.
        self._mutex = threading.Lock()
        self._shape = self._read_shape(conn)
        self._votes = VoteRecord(db.parent, self._hard_state_row(conn))
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.cluster_name: str = meta["cluster"]  # as created: may differ from the map's derived name now
        self.cluster_id: str = meta.get("cluster_id", "")  # raftd.identity; "" until applied
        stored = meta.get("record")
        try:
            self.record = DirRecord.load(stored) if stored is not None else DirRecord()
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(
                f"{db}: the directory's membership record is damaged ({e}); {RECOVER}"
            ) from None
        if stored is None:  # a new directory, or one of a release before incarnations: drawn now, once
            self.save_record(self.record)

    @classmethod
    def open(cls, data_dir: Path, cluster: str, node_id: int, *, name_given: bool = True) -> SqliteStorage:
        """Open (or create) the store in data_dir for this cluster and node, or refuse with StorageError.

        name_given=False: the name was derived from the map's addresses, so a directory created under
        another derived name (an address changed since) is this cluster's still, and keeps its name.
        """
        data_dir = Path(data_dir)
        db = data_dir / DB_NAME
        try:
            _make_dir(data_dir)
        except OSError as e:
            raise StorageError(f"{db}: cannot create the data directory: {e.strerror or e}") from e
        lock_fd = _take_lock(data_dir, db)
        try:
            is_new, version = (
                (True, SCHEMA_VERSION)
                if not db.exists()
                else _inspect(db, cluster if name_given else None, node_id)
            )
            conn = _connect(db)
            try:
                if is_new:
                    _create(conn, cluster, node_id)
                    _fsync_dir(data_dir)  # the new file's name must survive a power cut too
                elif version == 1:
                    _migrate_v1(conn)
                # Images half written when the last process stopped: nobody is writing them now.
                for partial in data_dir.glob("snapshot-*.partial"):
                    partial.unlink(missing_ok=True)
                return cls(db, conn, lock_fd)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as e:
            os.close(lock_fd)
            raise StorageError(f"{db}: cannot open the database: {e}") from e
        except BaseException:
            os.close(lock_fd)
            raise

    def load(self) -> PersistedState:
        """Read everything back, refusing a log that breaks the invariants save() keeps."""
        with self._mutex:
            conn = self._open_conn()
            try:
                term, vote, commit = self._hard_state_row(conn)
                snap_row = conn.execute("SELECT idx, term, crc FROM snapshot").fetchone()
                rows = conn.execute("SELECT idx, term, data, crc FROM entries ORDER BY idx").fetchall()
            except sqlite3.Error as e:
                raise StorageError(f"{self.path}: cannot read the database: {e}") from e
            if snap_row and snap_row[2] != snapshot_crc(snap_row[0], snap_row[1]):
                raise self._damaged("the snapshot's record")
            entries = []
            for index, entry_term, data, crc in rows:
                if crc != entry_crc(index, entry_term, data):
                    raise self._damaged(f"log entry {index}")
                entries.append(Entry(index, entry_term, data))
            self._votes.check(HardState(term, vote, commit))
            snapshot = self._read_snapshot(snap_row[:2]) if snap_row else None
            state = PersistedState(HardState(term, vote, commit), snapshot, entries)
            problem = state_problem(state)
            if problem:
                raise StorageError(f"{self.path}: the stored log is damaged: {problem}")
            self._shape = shape_of(state)
            return state

    def save(
        self,
        hard_state: HardState | None,
        entries: list[Entry],
        snapshot: Snapshot | SnapshotMeta | None = None,
    ) -> None:
        """Write one Ready's worth of state in ONE transaction, durable (fsynced) when this returns.

        save(snapshot=...) replaces the stored snapshot and discards every stored entry with index <=
        snapshot.meta.index and any entry that does not follow it: unless the log holds the snapshot's
        last entry (local compaction), the log after it starts empty (a snapshot installed from the
        leader). Then entries overwrite the log from entries[0].index on (a follower's conflicting suffix
        goes), and hard_state replaces the stored one. A call that would break the log raises ValueError
        and writes nothing. A snapshot given as its meta adopts the image that stage_image wrote for it.
        """
        with self._mutex:
            conn = self._open_conn()
            if hard_state is None and not entries and snapshot is None:
                return  # an empty Ready part: no transaction, no fsync
            meta = snapshot.meta if isinstance(snapshot, Snapshot) else snapshot
            shape, keep_tail = plan_save(self._shape, hard_state, entries, meta, self._stored_term)
            if meta is not None and not self._snapshot_file(meta).exists():
                if not isinstance(snapshot, Snapshot):
                    raise ValueError(f"no image was staged for the snapshot at {meta.index}")
                self.stage_image(meta, _writer(snapshot.data))
            with self._transaction(conn, "cannot save"):
                if meta is not None:
                    # The image itself is in its own file (stage_image); the row makes it the current one.
                    conn.execute(
                        "INSERT OR REPLACE INTO snapshot (id, idx, term, data, crc) VALUES (0, ?, ?, ?, ?)",
                        (meta.index, meta.term, b"", snapshot_crc(meta.index, meta.term)),
                    )
                    if keep_tail:
                        conn.execute("DELETE FROM entries WHERE idx <= ?", (meta.index,))
                    else:
                        conn.execute("DELETE FROM entries")
                if entries:
                    if entries[0].index <= self._shape.last_index:  # appending needs no delete
                        conn.execute("DELETE FROM entries WHERE idx >= ?", (entries[0].index,))
                    conn.executemany(
                        "INSERT INTO entries (idx, term, data, crc) VALUES (?, ?, ?, ?)",
                        [(e.index, e.term, e.data, entry_crc(e.index, e.term, e.data)) for e in entries],
                    )
                if hard_state is not None:
                    hs = hard_state
                    conn.execute(
                        "UPDATE hard_state SET term = ?, vote = ?, commit_idx = ?, crc = ? WHERE id = 0",
                        (hs.term, hs.vote, hs.commit, hard_state_crc(hs.term, hs.vote, hs.commit)),
                    )
            if hard_state is not None:
                # After the commit: the record may lag the database, never lead it.
                self._votes.record(hard_state)
            self._shape = shape
            if meta is not None:
                self._drop_other_snapshots(meta)

    def stage_image(self, meta: SnapshotMeta, write: Callable[[BinaryIO], int]) -> int:
        """Have write() put an image into its own durable file, ahead of the save() that adopts it.

        Safe from any thread and needs no database lock, so a large image is written while Readies keep
        being saved; save() then only records which file is current. An image never adopted (a crash in
        between) is removed by the next snapshot save.
        """
        final = self._snapshot_file(meta)
        partial = final.with_suffix(".partial")
        try:
            with open(partial, "wb") as f:
                size = write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, final)
            _fsync_dir(final.parent)
        except BaseException as e:
            partial.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise StorageError(f"{final}: cannot write the snapshot: {e.strerror or e}") from e
            raise
        return size

    def _snapshot_file(self, meta: SnapshotMeta) -> Path:
        return self.path.parent / f"snapshot-{meta.index:020d}-{meta.term:020d}.img"

    def _read_snapshot(self, row: tuple[int, int]) -> Snapshot:
        meta = SnapshotMeta(row[0], row[1])
        path = self._snapshot_file(meta)
        try:
            return Snapshot(meta, path.read_bytes())
        except OSError as e:
            raise StorageError(f"{path}: the current snapshot cannot be read: {e.strerror or e}") from e

    def _drop_other_snapshots(self, current: SnapshotMeta) -> None:
        """Older and orphaned images; not a .partial one, which a local snapshot may be writing meanwhile."""
        keep = self._snapshot_file(current)
        for path in self.path.parent.glob("snapshot-*.img"):
            if path != keep:
                path.unlink(missing_ok=True)

    def record_cluster_id(self, cluster_id: str) -> None:
        """Keep the cluster's id (raftd.identity) for good; durable when this returns."""
        with self._mutex:
            conn = self._open_conn()
            with self._transaction(conn, "cannot save the cluster id"):
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('cluster_id', ?)", (cluster_id,)
                )
            self.cluster_id = cluster_id

    def save_record(self, record: DirRecord) -> None:
        with self._mutex:
            conn = self._open_conn()
            with self._transaction(conn, "cannot save the directory's membership record"):
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('record', ?)", (record.dump(),)
                )
            self.record = record

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection, what: str) -> Iterator[None]:
        """One write transaction, committed (and so fsynced) at the end of the block; rolled back and
        raised as a StorageError saying `what` failed when sqlite fails."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise StorageError(f"{self.path}: {what}: {e}") from e

    def load_snapshot(self) -> Snapshot | None:
        """The stored snapshot alone: what a leader streams to a follower that is too far behind."""
        with self._mutex:
            try:
                row = self._open_conn().execute("SELECT idx, term FROM snapshot").fetchone()
            except sqlite3.Error as e:
                raise StorageError(f"{self.path}: cannot read the snapshot: {e}") from e
        return self._read_snapshot(row) if row else None

    def reclaim(self) -> None:
        """Give the pages freed by compaction back to the file system, and shrink the WAL.

        Without this a steady overwrite workload grows the file forever: compaction frees pages but sqlite
        keeps them. Runs after a snapshot, not on the hot path.
        """
        with self._mutex:
            conn = self._open_conn()
            try:
                conn.execute("PRAGMA incremental_vacuum").fetchall()
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as e:
                raise StorageError(f"{self.path}: cannot reclaim space: {e}") from e

    def close(self) -> None:
        """Close the database (checkpointing its WAL) and release the directory; safe to call twice."""
        with self._mutex:
            if self._conn is None:
                return
            try:
                self._conn.close()
            finally:
                self._conn = None
                os.close(self._lock_fd)  # closing the descriptor releases the flock

    def __enter__(self) -> SqliteStorage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"{self.path}: the storage is closed")
        return self._conn

    def _stored_term(self, index: int) -> int | None:
        row = (
            self._open_conn()
            .execute("SELECT term, data, crc FROM entries WHERE idx = ?", (index,))
            .fetchone()
        )
        if row is None:
            return None
        if row[2] != entry_crc(index, row[0], row[1]):
            raise self._damaged(f"log entry {index}")
        return int(row[0])

    def _hard_state_row(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        row = conn.execute("SELECT term, vote, commit_idx, crc FROM hard_state").fetchone()
        if row is None:
            raise StorageError(f"{self.path}: the stored state is damaged: the hard state row is missing")
        term, vote, commit, crc = row
        if crc != hard_state_crc(term, vote, commit):
            raise self._damaged("the term, vote and commit index")
        return int(term), int(vote), int(commit)

    def _damaged(self, what: str) -> StorageError:
        return StorageError(f"{self.path}: {what} is damaged (its checksum does not match); {RECOVER}")

    def _read_shape(self, conn: sqlite3.Connection) -> LogShape:
        """The shape save() validates against, from a few indexed lookups rather than the whole log."""
        commit = self._hard_state_row(conn)[2]
        snap = conn.execute("SELECT idx, term FROM snapshot").fetchone() or (0, 0)
        last = conn.execute("SELECT idx, term FROM entries ORDER BY idx DESC LIMIT 1").fetchone() or snap
        return LogShape(snap[0], snap[1], last[0], last[1], commit)


def _make_dir(data_dir: Path) -> None:
    if data_dir.is_dir():
        return
    data_dir.mkdir(parents=True)
    _fsync_dir(data_dir.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _take_lock(data_dir: Path, db: Path) -> int:
    """Hold data_dir/LOCK exclusively for as long as the store is open; it records the holder's pid."""
    lock_path = data_dir / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StorageError(f"{db}: cannot open the lock file {lock_path}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StorageError(f"{db}: in use by another process (pid {holder} holds {lock_path})") from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _inspect(db: Path, cluster: str | None, node_id: int) -> tuple[bool, int]:
    """Validate an existing file through a read-only connection, so refusing it cannot change it.

    Returns whether the file holds no tables at all (a crash during creation: it is created afresh), and
    its schema version.
    """
    sidecars = [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm")]
    ours = [p for p in sidecars if not p.exists()]  # the read-only connection may create these
    uri = f"file:{urllib.parse.quote(str(db.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            problem, is_new, version = _check(conn, db, cluster, node_id)
        finally:
            conn.close()
    except sqlite3.OperationalError as e:
        problem, is_new, version = f"{db}: cannot read the database: {e}", False, 0
    except sqlite3.DatabaseError as e:
        problem, is_new, version = f"{db}: the database is corrupt: {e}", False, 0
    if problem:
        for p in ours:
            p.unlink(missing_ok=True)
        raise StorageError(problem)
    return is_new, version


def _check(
    conn: sqlite3.Connection, db: Path, cluster: str | None, node_id: int
) -> tuple[str | None, bool, int]:
    """(problem, is_new, schema version). cluster=None: any cluster name will do (see SqliteStorage.open);
    the node id must match."""
    result = conn.execute("PRAGMA quick_check").fetchall()
    if result != [("ok",)]:
        return f"{db}: the database is corrupt: {result[0][0]}", False, 0
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None, True, SCHEMA_VERSION
    if "meta" not in tables:
        return f"{db}: not a raftd database (no meta table)", False, 0
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    version = meta.get("schema_version")
    if not isinstance(version, int):
        return f"{db}: not a raftd database (no schema version)", False, 0
    if version > SCHEMA_VERSION:
        return f"{db}: written by a newer raftd (schema {version}; this one reads {SCHEMA_VERSION})", False, 0
    if version not in (1, SCHEMA_VERSION):
        return f"{db}: unknown schema version {version} (this raftd reads {SCHEMA_VERSION})", False, 0
    stored = meta.get("cluster")
    if not isinstance(stored, str):
        return f"{db}: not a raftd database (no cluster name)", False, 0
    if (stored, meta.get("node_id")) != (cluster or stored, node_id):
        return (
            (
                f"{db}: belongs to cluster {stored!r} node {meta.get('node_id')}, "
                f"not cluster {cluster or stored!r} node {node_id}"
            ),
            False,
            0,
        )
    return None, False, version


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2 in place, in one transaction: every row gets its checksum. (What a version 1 file held
    was never checked; from here on it is.)"""
    conn.create_function("entry_crc", 3, entry_crc, deterministic=True)
    conn.create_function("hard_state_crc", 3, hard_state_crc, deterministic=True)
    conn.create_function("snapshot_crc", 2, snapshot_crc, deterministic=True)
    conn.execute("BEGIN IMMEDIATE")
    for table in ("entries", "hard_state", "snapshot"):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN crc INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE entries SET crc = entry_crc(idx, term, data)")
    conn.execute("UPDATE hard_state SET crc = hard_state_crc(term, vote, commit_idx)")
    conn.execute("UPDATE snapshot SET crc = snapshot_crc(idx, term)")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
    conn.execute("COMMIT")


def _writer(data: bytes) -> Callable[[BinaryIO], int]:
    return lambda f: f.write(data)


def _connect(db: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are exactly the BEGIN IMMEDIATE ... COMMIT that save() issues.
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    # Only takes effect on a new, empty file, and only before the WAL switch writes its first page: it
    # lets reclaim() return the pages compaction frees to the file system.
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    # Keep the WAL small: checkpoint every 64 pages (256 KiB) and cut the file back to that afterwards.
    conn.execute("PRAGMA wal_autocheckpoint=64")
    conn.execute("PRAGMA journal_size_limit=262144")
    conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit: durable when save() returns
    return conn


def _create(conn: sqlite3.Connection, cluster: str, node_id: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("schema_version", SCHEMA_VERSION), ("cluster", cluster), ("node_id", node_id)],
    )
    conn.execute("COMMIT")
