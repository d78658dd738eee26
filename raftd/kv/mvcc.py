"""The multi-version keyspace of issue 21 (etcd's data model) over one sqlite table.

Why sqlite and not Python objects: the keyspace is meant to hold ten million keys in a node of 150 MB and
restart in seconds (docs/design.md, "The multi-version keyspace"), so the keys live in a B-tree on disk and
memory holds only sqlite's bounded page cache; etcd's bbolt backend keeps its history on disk the same way.

One row per change of a key, `(key, mod_rev)` its primary key, so a key's history is contiguous and
ordered. A delete writes a tombstone (version 0). The value of a key at revision R is its row with the
greatest mod_rev <= R, unless that row is a tombstone. Within one revision (a transaction), `sub` numbers
the changes in the order they were made: the order watchers see them in. A transaction never writes one
key twice (DuplicateKey, as in etcd), so `(key, mod_rev)` is unique.

Every row, lease and meta value carries a crc32, checked whenever it is read: damage raises
KeyspaceCorrupt, and is never served.

Deterministic: the same operations in the same order leave every replica with the same rows. Each write
is one savepoint, so a request refused partway writes nothing.
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS mvcc_rev (key BLOB NOT NULL, mod_rev INTEGER NOT NULL, sub INTEGER NOT NULL,"
    " create_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL, value BLOB NOT NULL,"
    " crc INTEGER NOT NULL, PRIMARY KEY (key, mod_rev)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS mvcc_by_rev ON mvcc_rev (mod_rev, sub)",
    "CREATE TABLE IF NOT EXISTS mvcc_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL,"
    " crc INTEGER NOT NULL)",
    # Leases: their granted TTL. When each expires is the leader's business (raftd.api.etcd_lease), not
    # the replicated state's: it goes through the log as a revoke.
    "CREATE TABLE IF NOT EXISTS mvcc_lease (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL,"
    " crc INTEGER NOT NULL)",
    # The rows that name a lease: a revoke finds the keys to delete here (the latest row of each).
    "CREATE INDEX IF NOT EXISTS mvcc_by_lease ON mvcc_rev (lease, key) WHERE lease != 0",
)
_COLUMNS = "key, mod_rev, sub, create_rev, version, lease, value, crc"
_ROW = struct.Struct(">qqqqqI")
_META = struct.Struct(">q")
_LEASE = struct.Struct(">qq")
REVISION = "revision"
COMPACT_REVISION = "compact_revision"

Row = tuple[bytes, int, int, int, int, int, bytes, int]

# Plain writes buffered before one INSERT (Keyspace._flush), and the newest versions remembered
# (Keyspace._known): bounds on what a burst of writes makes a node hold beyond sqlite's own pages.
FLUSH_ROWS = 1024
KNOWN_KEYS = 65_536
_CHUNKS = tuple(1 << i for i in range(FLUSH_ROWS.bit_length() - 1, -1, -1))  # 1024, 512, ..., 1
_INSERT = f"INSERT INTO mvcc_rev ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_N = {
    n: f"INSERT INTO mvcc_rev ({_COLUMNS}) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * n)
    for n in _CHUNKS
}
_MISSING = object()


class KeyspaceError(Exception):
    """A request the keyspace refuses; nothing of it was written. str() is etcd's message for it."""


class Compacted(KeyspaceError):
    def __init__(self, compact_revision: int) -> None:
        super().__init__("mvcc: required revision has been compacted")
        self.compact_revision = compact_revision


class FutureRevision(KeyspaceError):
    def __init__(self) -> None:
        super().__init__("mvcc: required revision is a future revision")


class KeyNotFound(KeyspaceError):
    """A put with ignore_value or ignore_lease of a key that does not exist."""

    def __init__(self) -> None:
        super().__init__("key not found")


class LeaseNotFound(KeyspaceError):
    def __init__(self) -> None:
        super().__init__("requested lease not found")


class LeaseExists(KeyspaceError):
    def __init__(self) -> None:
        super().__init__("lease already exists")


class DuplicateKey(KeyspaceError):
    """A transaction that would write one key twice in one revision."""

    def __init__(self) -> None:
        super().__init__("duplicate key given in txn request")


class KeyspaceCorrupt(Exception):
    """A row whose checksum does not match: the node stops rather than serve it (RaftNode.damaged)."""


class SortOrder(enum.IntEnum):  # etcd's RangeRequest.SortOrder numbers
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):  # etcd's RangeRequest.SortTarget numbers
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareTarget(enum.IntEnum):  # etcd's Compare.CompareTarget numbers
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class CompareResult(enum.IntEnum):  # etcd's Compare.CompareResult numbers
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change, as a watcher sees it: a delete's kv holds only the key and mod_revision, as etcd's."""

    deleted: bool
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class RangeRequest:
    key: bytes
    range_end: bytes = b""
    revision: int = 0  # 0 or less: the current one
    limit: int = 0  # 0: no limit
    keys_only: bool = False
    count_only: bool = False
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class PutRequest:
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class DeleteRangeRequest:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class Compare:
    key: bytes
    target: CompareTarget
    result: CompareResult
    value: bytes | int  # bytes for VALUE, an int for the others
    range_end: bytes = b""


@dataclass(frozen=True, slots=True)
class TxnRequest:
    compare: tuple[Compare, ...] = ()
    success: tuple[Request, ...] = ()
    failure: tuple[Request, ...] = ()


Request = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    more: bool
    count: int


@dataclass(frozen=True, slots=True)
class PutResult:
    prev_kv: KeyValue | None  # only when asked for and the key existed


@dataclass(frozen=True, slots=True)
class DeleteRangeResult:
    deleted: int
    prev_kvs: list[KeyValue]  # only when asked for


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    responses: list[Result]


Result = RangeResult | PutResult | DeleteRangeResult | TxnResult


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) every key starting with prefix (etcd's GetPrefixRangeEnd):
    the prefix with its last byte below 0xff incremented; b"\\x00" (no upper bound) when there is none."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


def _bounds(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None] | None:
    """[low, high) of a range, high None for no upper bound; None for a single key (no range_end)."""
    if not range_end:
        return None
    return key, None if range_end == b"\x00" else range_end


def _where(low: bytes, high: bytes | None) -> tuple[str, tuple[bytes, ...]]:
    """The SQL condition for [low, high) (high None: no upper bound), and its parameters."""
    return ("key >= ?", (low,)) if high is None else ("key >= ? AND key < ?", (low, high))


def _crc(key: bytes, mod_rev: int, sub: int, create_rev: int, version: int, lease: int, value: bytes) -> int:
    head = _ROW.pack(mod_rev, sub, create_rev, version, lease, len(key))
    return zlib.crc32(value, zlib.crc32(key, zlib.crc32(head)))


def _meta_crc(name: str, value: int) -> int:
    return zlib.crc32(_META.pack(value), zlib.crc32(name.encode()))


def _lease_crc(lease: int, ttl: int) -> int:
    return zlib.crc32(_LEASE.pack(lease, ttl))


def _checked(row: Row) -> KeyValue:
    key, mod_rev, sub, create_rev, version, lease, value, crc = row
    if _crc(key, mod_rev, sub, create_rev, version, lease, value) != crc:
        raise KeyspaceCorrupt(f"the keyspace row of key {key!r} at revision {mod_rev} is damaged (checksum)")
    return KeyValue(key, value, create_rev, mod_rev, version, lease)


def _compare(c: Compare, kv: KeyValue) -> bool:
    mine: bytes | int
    if c.target == CompareTarget.VALUE:
        mine = kv.value
    elif c.target == CompareTarget.VERSION:
        mine = kv.version
    elif c.target == CompareTarget.CREATE:
        mine = kv.create_revision
    elif c.target == CompareTarget.MOD:
        mine = kv.mod_revision
    else:
        mine = kv.lease
    theirs = c.value
    if isinstance(mine, bytes) != isinstance(theirs, bytes):
        raise TypeError(
            f"compare on {c.target.name} takes {'bytes' if isinstance(mine, bytes) else 'an int'}"
        )
    order = (mine > theirs) - (mine < theirs)  # type: ignore[operator]
    if c.result == CompareResult.EQUAL:
        return order == 0
    if c.result == CompareResult.NOT_EQUAL:
        return order != 0
    if c.result == CompareResult.GREATER:
        return order > 0
    return order < 0


_SORT_KEYS = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


@dataclass
class _Writing:
    """One revision being written: the changes made so far in it."""

    revision: int
    changes: int = 0
    written: set[bytes] = field(default_factory=set)


class Keyspace:
    """The keyspace in conn's database (its tables made if absent, unless it is only read: a Frozen
    view's). One writer: the node's apply loop. path: its file, None in memory."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None, *, create: bool = True) -> None:
        self.conn = conn
        self.path = path
        for statement in _SCHEMA if create else ():
            conn.execute(statement)
        stored = self._meta(REVISION)
        self.compact_revision = self._meta(COMPACT_REVISION)
        # The revision is kept here and written to mvcc_meta only when the database is copied (sync_meta):
        # an upsert per write cost a tenth of raftd.v1's writes at 64 clients. Every revision writes a row,
        # and compaction keeps every row above its point, so the newest row, or failing that the
        # compaction point, tells the revision of a database closed without one.
        newest = conn.execute("SELECT max(mod_rev) FROM mvcc_rev").fetchone()[0] or 0
        self.revision = max(stored, int(newest), self.compact_revision)
        self._revision_stored = stored
        # Why plain writes are buffered and their keys' newest versions remembered: every sqlite call
        # lets go of the GIL, and on the apply loop, with another thread busy, each one cost a wait for
        # that thread's turn (writes at 64 clients fell to 0.58x of the packed map's). A plain write
        # makes no sqlite call when its key's newest version is known; its row waits in _pending, and
        # up to FLUSH_ROWS of them go in one INSERT (_flush), before anything else reads or writes
        # mvcc_rev, and at the end of each batch of applied entries (flush()).
        self._pending: list[Row] = []
        # key -> (create_revision, version) of its newest row, or None when that is a tombstone or
        # there is none: what _latest() would say now. Every key with a row in _pending is here.
        self._known: dict[bytes, tuple[int, int] | None] = {}

    def _meta(self, name: str) -> int:
        row = self.conn.execute("SELECT value, crc FROM mvcc_meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            return 0
        if _meta_crc(name, row[0]) != row[1]:
            raise KeyspaceCorrupt(f"the keyspace's {name} is damaged (checksum)")
        return int(row[0])

    def flush(self) -> None:
        """Write the buffered rows (at the end of a batch of applies, before any other use of the table)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        at = 0
        for n in _CHUNKS:
            while len(pending) - at >= n:
                self.conn.execute(_INSERT_N[n], [v for row in pending[at : at + n] for v in row])
                at += n
        if len(self._known) > KNOWN_KEYS:
            self._known.clear()

    def sync_meta(self) -> None:
        """Write the revision to mvcc_meta, before a copy of the database is taken."""
        self.flush()
        if self._revision_stored != self.revision:
            self._set_meta(REVISION, self.revision)
            self._revision_stored = self.revision

    def _set_meta(self, name: str, value: int) -> None:
        self.conn.execute(
            "INSERT INTO mvcc_meta (name, value, crc) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value, crc = excluded.crc",
            (name, value, _meta_crc(name, value)),
        )

    # -- reads ---------------------------------------------------------------------------------------

    def revision_of(self, revision: int) -> int:
        """The revision a read at `revision` sees, or Compacted / FutureRevision."""
        if revision <= 0:
            return self.revision
        if revision > self.revision:
            raise FutureRevision()
        if revision < self.compact_revision:
            raise Compacted(self.compact_revision)
        return revision

    def get(self, key: bytes, revision: int = 0) -> KeyValue | None:
        """The key's value at revision (0: now), None when it does not exist then."""
        return self._latest(key, self.revision_of(revision))

    def _latest(self, key: bytes, at: int) -> KeyValue | None:
        self.flush()
        return self._select_latest(key, at)

    def _select_latest(self, key: bytes, at: int) -> KeyValue | None:
        """_latest() without writing the buffered rows first: for a key that has none of them."""
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM mvcc_rev WHERE key = ? AND mod_rev <= ? ORDER BY mod_rev DESC LIMIT 1",
            (key, at),
        ).fetchone()
        if row is None:
            return None
        kv = _checked(row)
        return kv if kv.version else None

    def _live(self, low: bytes, high: bytes | None, at: int, limit: int = 0) -> Iterator[KeyValue]:
        """The keys of [low, high) that exist at revision at, in key order (sqlite's max() takes the other
        columns from the row with the greatest mod_rev of each key)."""
        self.flush()
        where, args = _where(low, high)
        sql = (
            f"SELECT key, max(mod_rev), sub, create_rev, version, lease, value, crc FROM mvcc_rev"
            f" WHERE {where} AND mod_rev <= ? GROUP BY key HAVING version > 0 ORDER BY key"
        )
        if limit > 0:
            sql += f" LIMIT {int(limit)}"
        for row in self.conn.execute(sql, (*args, at)):
            yield _checked(row)

    def _count(self, low: bytes, high: bytes | None, at: int) -> int:
        self.flush()
        where, args = _where(low, high)
        sql = (
            f"SELECT count(*) FROM (SELECT max(mod_rev), version FROM mvcc_rev WHERE {where} AND mod_rev <= ?"
            " GROUP BY key HAVING version > 0)"
        )
        return int(self.conn.execute(sql, (*args, at)).fetchone()[0])

    def _matching(self, key: bytes, range_end: bytes, at: int) -> list[KeyValue]:
        bounds = _bounds(key, range_end)
        if bounds is None:
            kv = self._latest(key, at)
            return [] if kv is None else [kv]
        return list(self._live(bounds[0], bounds[1], at))

    def range(self, r: RangeRequest) -> RangeResult:
        """etcd's Range: the limit applies after filters and sorting; count is of the whole range."""
        return self._range(r, self.revision_of(r.revision))

    def _range(self, r: RangeRequest, at: int) -> RangeResult:
        bounds = _bounds(r.key, r.range_end)
        if bounds is None:
            kv = self._latest(r.key, at)
            kvs = [] if kv is None else [kv]
            count = len(kvs)
        else:
            plain = (
                r.sort_order == SortOrder.NONE
                or (r.sort_target == SortTarget.KEY and r.sort_order == SortOrder.ASCEND)
            ) and not (
                r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision
            )
            # Unsorted and unfiltered: one row past the limit tells whether there are more.
            kvs = list(self._live(bounds[0], bounds[1], at, r.limit + 1 if plain and r.limit > 0 else 0))
            count = self._count(bounds[0], bounds[1], at) if plain and r.limit > 0 else len(kvs)
        kvs = [kv for kv in kvs if _passes(r, kv)]
        if r.sort_order != SortOrder.NONE and not (
            r.sort_target == SortTarget.KEY and r.sort_order == SortOrder.ASCEND
        ):
            kvs.sort(key=_SORT_KEYS[r.sort_target], reverse=r.sort_order == SortOrder.DESCEND)
        more = False
        if r.limit > 0 and len(kvs) > r.limit:
            kvs, more = kvs[: r.limit], True
        if r.count_only:
            return RangeResult([], more, count)
        if r.keys_only:
            kvs = [
                KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in kvs
            ]
        return RangeResult(kvs, more, count)

    def changes(
        self, after: int, key: bytes, range_end: bytes = b"", limit: int = 1000, until: int | None = None
    ) -> list[Event]:
        """The changes to [key, range_end) (a single key when range_end is empty) made after revision
        `after` (and up to `until`), in revision order, at most limit of them (-1: all): what a watcher
        is sent next."""
        if after + 1 < self.compact_revision:
            raise Compacted(self.compact_revision)
        self.flush()
        bounds = _bounds(key, range_end)
        where, args = ("key = ?", (key,)) if bounds is None else _where(*bounds)
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM mvcc_rev WHERE mod_rev > ? AND mod_rev <= ? AND {where}"
            " ORDER BY mod_rev, sub LIMIT ?",
            (after, self.revision if until is None else until, *args, limit),
        ).fetchall()
        events = []
        for row in rows:
            kv = _checked(row)
            if kv.version:
                events.append(Event(False, kv))
            else:
                events.append(Event(True, KeyValue(kv.key, b"", 0, kv.mod_revision, 0, 0)))
        return events

    def previous(self, event: Event) -> KeyValue | None:
        """The key as it was just before the event (a watcher's prev_kv), None if it did not exist; also
        None when that revision has been compacted away."""
        return self._latest(event.kv.key, event.kv.mod_revision - 1)

    # -- writes: each call is one revision, or none when it changes nothing ---------------------------

    def put(self, r: PutRequest) -> PutResult:
        if not (r.lease or r.prev_kv or r.ignore_value or r.ignore_lease):
            return self._plain_put(r.key, r.value)
        with self._writing() as w:
            return self._put(w, r)

    def delete_range(self, r: DeleteRangeRequest) -> DeleteRangeResult:
        if not r.range_end and not r.prev_kv:
            return self._plain_delete(r.key)
        with self._writing() as w:
            return self._delete(w, r)

    # The hot path of raftd.v1's writes, which are all of this kind: a request nothing can refuse is one
    # INSERT, atomic without a savepoint. Each writes what _put and _delete would, row for row.

    def _newest(self, key: bytes) -> tuple[int, int] | None:
        """(create_revision, version) of the key now, None when it does not exist."""
        known = self._known.get(key, _MISSING)
        if known is not _MISSING:
            return known  # type: ignore[return-value]  # a tuple or None: _MISSING was ruled out
        kv = self._select_latest(key, self.revision)  # not in _known: none of its rows are pending
        newest = None if kv is None else (kv.create_revision, kv.version)
        self._known[key] = newest
        return newest

    def _plain_put(self, key: bytes, value: bytes) -> PutResult:
        prev = self._newest(key)
        revision = self.revision + 1
        create, version = (revision, 1) if prev is None else (prev[0], prev[1] + 1)
        self._buffer(key, revision, create, version, value)
        return PutResult(None)

    def _plain_delete(self, key: bytes) -> DeleteRangeResult:
        if self._newest(key) is None:
            return DeleteRangeResult(0, [])
        self._buffer(key, self.revision + 1, 0, 0, b"")
        return DeleteRangeResult(1, [])

    def _buffer(self, key: bytes, revision: int, create: int, version: int, value: bytes) -> None:
        self._pending.append(
            (key, revision, 0, create, version, 0, value, _crc(key, revision, 0, create, version, 0, value))
        )
        self._known[key] = (create, version) if version else None
        self.revision = revision
        if len(self._pending) >= FLUSH_ROWS:
            self.flush()

    def _insert(
        self, key: bytes, mod_rev: int, sub: int, create: int, version: int, lease: int, value: bytes
    ) -> None:
        self.conn.execute(
            _INSERT,
            (
                key,
                mod_rev,
                sub,
                create,
                version,
                lease,
                value,
                _crc(key, mod_rev, sub, create, version, lease, value),
            ),
        )

    def txn(self, r: TxnRequest) -> TxnResult:
        """etcd's Txn: the compares, then one branch's requests, in order, at one revision. A request sees
        the writes of the ones before it. DuplicateKey before anything is written."""
        check_txn(r)
        with self._writing() as w:
            return self._txn(w, r)

    def compact(self, revision: int) -> None:
        """Forget every version of every key that revision no longer needs: reads and watches from below
        it fail with Compacted from now on. Costs in proportion to the changes since the last compaction."""
        if revision <= self.compact_revision:
            raise Compacted(self.compact_revision)
        if revision > self.revision:
            raise FutureRevision()
        self.flush()
        # In one statement, in sqlite rather than a Python loop per key (a compaction of a thousand writes
        # ran on the apply loop for milliseconds): of each key changed since the last compaction, every
        # row older than its newest at `revision`, and that one too when it is a tombstone.
        self.conn.execute(
            "DELETE FROM mvcc_rev WHERE (key, mod_rev) IN (SELECT r.key, r.mod_rev FROM mvcc_rev AS r"
            " JOIN (SELECT key, max(mod_rev) AS newest, version FROM mvcc_rev WHERE mod_rev <= :at"
            " AND key IN (SELECT DISTINCT key FROM mvcc_rev WHERE mod_rev > :since AND mod_rev <= :at)"
            " GROUP BY key) AS k ON r.key = k.key"
            " WHERE r.mod_rev < k.newest OR (r.mod_rev = k.newest AND k.version = 0))",
            {"at": revision, "since": self.compact_revision},
        )
        self.compact_revision = revision
        self._set_meta(COMPACT_REVISION, revision)

    def merge(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Put every (key, value) at one revision, in the order given (Op.MERGE: raftd.v1's keys moving
        in); a key already here gets a new version, as a put would. How many were put.

        In bulk rather than through put(): a million keys move in seconds, not minutes, on every replica
        at once."""
        existing = {kv.key: kv for kv in self._live(b"", None, self.revision)}  # _live() flushes
        self._known.clear()
        revision = self.revision + 1
        rows = []
        for sub, (key, value) in enumerate(items):
            prev = existing.get(key)
            create, version = (revision, 1) if prev is None else (prev.create_revision, prev.version + 1)
            crc = _crc(key, revision, sub, create, version, 0, value)
            rows.append((key, revision, sub, create, version, 0, value, crc))
        if not rows:
            return 0
        with self._writing() as w:
            self.conn.executemany(_INSERT, rows)
            w.changes = len(rows)
        return len(rows)

    # -- leases ------------------------------------------------------------------------------------------

    def lease_ttl(self, lease: int) -> int | None:
        """The TTL the lease was granted, None when there is no such lease."""
        row = self.conn.execute("SELECT ttl, crc FROM mvcc_lease WHERE id = ?", (lease,)).fetchone()
        if row is None:
            return None
        if _lease_crc(lease, row[0]) != row[1]:
            raise KeyspaceCorrupt(f"the keyspace's lease {lease} is damaged (checksum)")
        return int(row[0])

    def lease_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM mvcc_lease").fetchone()[0])

    def leases(self) -> list[tuple[int, int]]:
        """Every lease and its granted TTL, by id."""
        out = []
        for lease, ttl, crc in self.conn.execute("SELECT id, ttl, crc FROM mvcc_lease ORDER BY id"):
            if _lease_crc(lease, ttl) != crc:
                raise KeyspaceCorrupt(f"the keyspace's lease {lease} is damaged (checksum)")
            out.append((int(lease), int(ttl)))
        return out

    def lease_keys(self, lease: int) -> list[bytes]:
        """The keys attached to the lease now (their latest version names it), in key order."""
        self.flush()
        candidates = self.conn.execute(
            # "lease != 0" lets sqlite use the partial index, which it cannot infer from a parameter.
            "SELECT DISTINCT key FROM mvcc_rev WHERE lease = ? AND lease != 0 ORDER BY key",
            (lease,),
        ).fetchall()
        keys = []
        for (key,) in candidates:
            kv = self._latest(key, self.revision)
            if kv is not None and kv.lease == lease:
                keys.append(key)
        return keys

    def grant(self, r: LeaseGrantRequest) -> None:
        if r.id <= 0:
            raise ValueError("a lease id is chosen before the grant is logged")
        if self.lease_ttl(r.id) is not None:
            raise LeaseExists()
        self.conn.execute(
            "INSERT INTO mvcc_lease (id, ttl, crc) VALUES (?, ?, ?)", (r.id, r.ttl, _lease_crc(r.id, r.ttl))
        )

    def revoke(self, r: LeaseRevokeRequest) -> int:
        """Delete the lease and every key attached to it, at one revision (none when no key was); how many
        keys went."""
        if self.lease_ttl(r.id) is None:
            raise LeaseNotFound()
        with self._writing() as w:
            keys = self.lease_keys(r.id)
            for key in keys:
                self._write(w, KeyValue(key, b"", 0, w.revision, 0, 0))
            self.conn.execute("DELETE FROM mvcc_lease WHERE id = ?", (r.id,))
        return len(keys)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[_Writing]:
        """One revision's writes, undone together when a request fails partway (a KeyNotFound after a txn's
        first put, a compacted read inside it), so that a refusal writes nothing, as etcd's checks do."""
        self.flush()
        w = _Writing(self.revision + 1)
        self.conn.execute("SAVEPOINT mvcc_write")
        try:
            yield w
        except BaseException:
            self._known.clear()  # it may name versions the rollback undoes
            self.conn.execute("ROLLBACK TO mvcc_write")
            self.conn.execute("RELEASE mvcc_write")
            raise
        self.conn.execute("RELEASE mvcc_write")
        if w.changes:
            self.revision = w.revision

    def _at(self, w: _Writing) -> int:
        """The revision a read inside w sees: its own writes once it made some."""
        return w.revision if w.changes else self.revision

    def _write(self, w: _Writing, kv: KeyValue) -> None:
        self._insert(kv.key, w.revision, w.changes, kv.create_revision, kv.version, kv.lease, kv.value)
        self._known[kv.key] = (kv.create_revision, kv.version) if kv.version else None
        w.changes += 1
        w.written.add(kv.key)

    def _put(self, w: _Writing, r: PutRequest) -> PutResult:
        if r.key in w.written:
            raise DuplicateKey()
        prev = self._latest(r.key, self._at(w))
        if prev is None and (r.ignore_value or r.ignore_lease):
            raise KeyNotFound()
        value = prev.value if r.ignore_value and prev is not None else r.value
        lease = prev.lease if r.ignore_lease and prev is not None else r.lease
        if lease and self.lease_ttl(lease) is None:
            raise LeaseNotFound()
        if prev is None:
            kv = KeyValue(r.key, value, w.revision, w.revision, 1, lease)
        else:
            kv = KeyValue(r.key, value, prev.create_revision, w.revision, prev.version + 1, lease)
        self._write(w, kv)
        return PutResult(prev if r.prev_kv else None)

    def _delete(self, w: _Writing, r: DeleteRangeRequest) -> DeleteRangeResult:
        gone = self._matching(r.key, r.range_end, self._at(w))
        for kv in gone:
            self._write(w, KeyValue(kv.key, b"", 0, w.revision, 0, 0))
        return DeleteRangeResult(len(gone), gone if r.prev_kv else [])

    def _txn(self, w: _Writing, r: TxnRequest) -> TxnResult:
        at = self._at(w)
        succeeded = all(self._holds(c, at) for c in r.compare)
        responses: list[Result] = []
        for op in r.success if succeeded else r.failure:
            if isinstance(op, RangeRequest):
                responses.append(self._range(op, self._txn_read_revision(op, w)))
            elif isinstance(op, PutRequest):
                responses.append(self._put(w, op))
            elif isinstance(op, DeleteRangeRequest):
                responses.append(self._delete(w, op))
            else:
                responses.append(self._txn(w, op))
        return TxnResult(succeeded, responses)

    def _txn_read_revision(self, r: RangeRequest, w: _Writing) -> int:
        if r.revision <= 0:
            return self._at(w)
        return self.revision_of(r.revision)

    def _holds(self, c: Compare, at: int) -> bool:
        """etcd's applyCompare: every key of the range must pass; a missing key compares as all zeros,
        except on its value, which no compare can match."""
        kvs = self._matching(c.key, c.range_end, at)
        if not kvs:
            return c.target != CompareTarget.VALUE and _compare(c, KeyValue(c.key, b"", 0, 0, 0, 0))
        return all(_compare(c, kv) for kv in kvs)

    # -- whole-keyspace views --------------------------------------------------------------------------

    def rows(self) -> Iterable[Row]:
        """Every stored row in key and revision order (checked): for comparing replicas in tests and for
        the state hash."""
        self.flush()
        for row in self.conn.execute(f"SELECT {_COLUMNS} FROM mvcc_rev ORDER BY key, mod_rev"):
            _checked(row)
            yield row


def check_txn(r: TxnRequest) -> None:
    """DuplicateKey if the transaction would write one key twice (checked again when it applies)."""
    _check_intervals(r.success)
    _check_intervals(r.failure)


def sizes(ks: Keyspace) -> tuple[int, int]:
    """(bytes the keyspace's database takes, bytes of it in use): etcd's dbSize and dbSizeInUse."""
    ks.flush()
    pages = ks.conn.execute("PRAGMA page_count").fetchone()[0]
    free = ks.conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = ks.conn.execute("PRAGMA page_size").fetchone()[0]
    return int(pages * size), int((pages - free) * size)


def _passes(r: RangeRequest, kv: KeyValue) -> bool:
    if r.min_mod_revision and kv.mod_revision < r.min_mod_revision:
        return False
    if r.max_mod_revision and kv.mod_revision > r.max_mod_revision:
        return False
    if r.min_create_revision and kv.create_revision < r.min_create_revision:
        return False
    return not (r.max_create_revision and kv.create_revision > r.max_create_revision)


def _covers(ranges: Sequence[tuple[bytes, bytes | None]], key: bytes) -> bool:
    return any(low <= key and (high is None or key < high) for low, high in ranges)


def _check_intervals(requests: Sequence[Request]) -> tuple[set[bytes], list[tuple[bytes, bytes | None]]]:
    """etcd's checkIntervals: no put of a key that another put or a delete of the same branch touches,
    nested transactions included (a key put in both branches of one nested txn is fine: only one runs).
    Deletes may overlap each other. Returns the branch's puts and delete ranges."""
    dels: list[tuple[bytes, bytes | None]] = []
    for op in requests:
        if isinstance(op, DeleteRangeRequest):
            bounds = _bounds(op.key, op.range_end)
            dels.append(bounds if bounds is not None else (op.key, op.key + b"\x00"))
    puts: set[bytes] = set()
    for op in requests:
        if not isinstance(op, TxnRequest):
            continue
        puts_then, dels_then = _check_intervals(op.success)
        puts_else, dels_else = _check_intervals(op.failure)
        for key in puts_then:
            if key in puts or _covers(dels, key):
                raise DuplicateKey()
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or _covers(dels, key):
                raise DuplicateKey()
            puts.add(key)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in requests:
        if isinstance(op, PutRequest):
            if op.key in puts or _covers(dels, op.key):
                raise DuplicateKey()
            puts.add(op.key)
    return puts, dels


# -- the log's encoding of a request: a tag byte, then its fields (big-endian; bytes as u32 length + data) --

_CODEC_VERSION = 1
_Q = struct.Struct(">q")
_L = struct.Struct(">I")
_PUT, _DELETE, _RANGE, _TXN, _COMPACT = b"P", b"D", b"R", b"T", b"C"
_GRANT, _REVOKE = b"G", b"V"


@dataclass(frozen=True, slots=True)
class CompactRequest:
    revision: int


@dataclass(frozen=True, slots=True)
class LeaseGrantRequest:
    id: int  # chosen by the leader before it is logged, when the client leaves it to the server
    ttl: int  # seconds


@dataclass(frozen=True, slots=True)
class LeaseRevokeRequest:
    id: int


LoggedRequest = (
    PutRequest | DeleteRangeRequest | TxnRequest | CompactRequest | LeaseGrantRequest | LeaseRevokeRequest
)


class RequestDecodeError(ValueError):
    """An entry that does not decode: damage that the entry's checksum missed, or a foreign writer."""


def encode_request(r: LoggedRequest) -> bytes:
    """A write as a log entry's value (Op.MVCC): replicas decode it and apply it alike."""
    out = bytearray([_CODEC_VERSION])
    if isinstance(r, CompactRequest):
        out += _COMPACT + _Q.pack(r.revision)
    elif isinstance(r, LeaseGrantRequest):
        out += _GRANT + _Q.pack(r.id) + _Q.pack(r.ttl)
    elif isinstance(r, LeaseRevokeRequest):
        out += _REVOKE + _Q.pack(r.id)
    else:
        _encode_op(out, r)
    return bytes(out)


def _bytes(out: bytearray, data: bytes) -> None:
    out += _L.pack(len(data))
    out += data


def _encode_op(out: bytearray, r: Request) -> None:
    if isinstance(r, PutRequest):
        out += _PUT
        _bytes(out, r.key)
        _bytes(out, r.value)
        out += _Q.pack(r.lease)
        out.append(r.prev_kv | r.ignore_value << 1 | r.ignore_lease << 2)
    elif isinstance(r, DeleteRangeRequest):
        out += _DELETE
        _bytes(out, r.key)
        _bytes(out, r.range_end)
        out.append(r.prev_kv)
    elif isinstance(r, RangeRequest):
        out += _RANGE
        _bytes(out, r.key)
        _bytes(out, r.range_end)
        for n in (r.revision, r.limit, r.min_mod_revision, r.max_mod_revision):
            out += _Q.pack(n)
        for n in (r.min_create_revision, r.max_create_revision):
            out += _Q.pack(n)
        out += bytes([r.keys_only | r.count_only << 1, r.sort_order, r.sort_target])
    else:
        out += _TXN
        out += _L.pack(len(r.compare))
        for c in r.compare:
            _bytes(out, c.key)
            _bytes(out, c.range_end)
            out += bytes([c.target, c.result])
            if isinstance(c.value, bytes):
                _bytes(out, c.value)
            else:
                out += _Q.pack(c.value)
        for branch in (r.success, r.failure):
            out += _L.pack(len(branch))
            for op in branch:
                _encode_op(out, op)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RequestDecodeError("truncated request")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        return int(_Q.unpack(self.take(8))[0])

    def count(self) -> int:
        n = int(_L.unpack(self.take(4))[0])
        if n > len(self.data):  # every item takes a byte at least: a count beyond that is damage
            raise RequestDecodeError("a count beyond the request's size")
        return n

    def blob(self) -> bytes:
        return self.take(self.count())

    def byte(self) -> int:
        return self.take(1)[0]


def decode_request(data: bytes) -> LoggedRequest:
    """The request encode_request wrote; RequestDecodeError for anything else."""
    reader = _Reader(data)
    try:
        if reader.byte() != _CODEC_VERSION:
            raise RequestDecodeError(f"request encoding {data[:1]!r} is not one this node reads")
        tag = data[1:2]
        if tag == _COMPACT:
            reader.take(1)
            result: LoggedRequest = CompactRequest(reader.integer())
        elif tag == _GRANT:
            reader.take(1)
            result = LeaseGrantRequest(reader.integer(), reader.integer())
        elif tag == _REVOKE:
            reader.take(1)
            result = LeaseRevokeRequest(reader.integer())
        else:
            op = _decode_op(reader, depth=0)
            if isinstance(op, RangeRequest):
                raise RequestDecodeError("a range is not a write")
            result = op
    except (ValueError, struct.error) as e:
        if isinstance(e, RequestDecodeError):
            raise
        raise RequestDecodeError(f"undecodable request: {e}") from None
    if reader.pos != len(data):
        raise RequestDecodeError(f"{len(data) - reader.pos} unexpected trailing bytes in a request")
    return result


MAX_TXN_DEPTH = 32  # nested transactions a log entry may hold; etcd's clients nest one or two


def _decode_op(reader: _Reader, depth: int) -> Request:
    tag = reader.take(1)
    if tag == _PUT:
        key, value, lease, flags = reader.blob(), reader.blob(), reader.integer(), reader.byte()
        return PutRequest(key, value, lease, bool(flags & 1), bool(flags & 2), bool(flags & 4))
    if tag == _DELETE:
        return DeleteRangeRequest(reader.blob(), reader.blob(), bool(reader.byte()))
    if tag == _RANGE:
        key, end = reader.blob(), reader.blob()
        revision, limit, min_mod, max_mod, min_create, max_create = (reader.integer() for _ in range(6))
        flags, order, target = reader.byte(), reader.byte(), reader.byte()
        return RangeRequest(
            key, end, revision, limit, bool(flags & 1), bool(flags & 2), SortOrder(order),
            SortTarget(target), min_mod, max_mod, min_create, max_create,
        )  # fmt: skip
    if tag != _TXN:
        raise RequestDecodeError(f"unknown request tag {tag!r}")
    if depth >= MAX_TXN_DEPTH:
        raise RequestDecodeError("transactions nested too deep")
    compares = []
    for _ in range(reader.count()):
        key, end = reader.blob(), reader.blob()
        target, result = CompareTarget(reader.byte()), CompareResult(reader.byte())
        against: bytes | int = reader.blob() if target == CompareTarget.VALUE else reader.integer()
        compares.append(Compare(key, target, result, against, end))
    success = tuple(_decode_op(reader, depth + 1) for _ in range(reader.count()))
    failure = tuple(_decode_op(reader, depth + 1) for _ in range(reader.count()))
    return TxnRequest(tuple(compares), success, failure)


# -- the keyspace in a state image: the same rows on every replica, whatever its pages look like ----------

_IMAGE_HEAD = struct.Struct(">qqQ")  # revision, compact revision, rows
_IMAGE_ROW = struct.Struct(">IqqqqqI")  # len(key), mod_rev, sub, create_rev, version, lease, len(value)


def open_memory(serialized: bytes = b"") -> Keyspace:
    """A keyspace in memory: empty, or the one serialize() copied."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    if serialized:
        conn.deserialize(serialized)
    return Keyspace(conn)


CACHE_KIB = 16 * 1024  # sqlite's page cache for a keyspace in a file: what of it a node holds in memory


def open_file(path: Path, serialized: bytes = b"") -> Keyspace:
    """A keyspace in a file of its own: empty, or the one serialize() copied.

    Why a file when nothing in it must survive a crash: a node rebuilds its state from the snapshot and
    the log at every start, but a keyspace in memory costs its whole size (a million keys, 110 MB, and
    as much again while a snapshot copied it). In a file, memory holds sqlite's page cache (CACHE_KIB),
    and a snapshot reads a view of it (freeze()) while writes go on. Nothing is synced: the file is
    removed at the next start (remove_files)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    if serialized:
        source = sqlite3.connect(":memory:")
        try:
            source.deserialize(serialized)
            source.backup(conn)
        finally:
            source.close()
    conn.execute("PRAGMA journal_mode=WAL")  # a view's read transaction does not stop the writer
    return Keyspace(conn, path)


KEYSPACE_FILES = "keyspace-*.db*"


def remove_files(directory: Path) -> None:
    """The keyspace files a node left behind (at its start: the state is rebuilt from the snapshot)."""
    for leftover in directory.glob(KEYSPACE_FILES):
        leftover.unlink(missing_ok=True)


def discard(ks: Keyspace) -> None:
    """Remove a replaced keyspace's file; a read in flight on it finishes (the file stays open)."""
    if ks.path is not None:
        for suffix in ("", "-wal", "-shm"):
            ks.path.with_name(ks.path.name + suffix).unlink(missing_ok=True)


def why_unwritable(ks: Keyspace) -> str:
    """What the system says when the keyspace's files grow: the cause sqlite's "disk I/O error" hides (a
    full disk, a file size limit), as ": No space left on device", or "" when they grow. For a node that
    stops because a write failed: the files are rebuilt at its next start, so the bytes added here do no
    harm."""
    if ks.path is None:
        return ""
    for path in (ks.path.with_name(ks.path.name + "-wal"), ks.path):
        try:
            with path.open("ab") as f:
                f.write(bytes(1 << 16))  # more than a page: a file just short of a limit fails too
        except OSError as e:
            return f": {e.strerror or e}"
    return ""


class Frozen:
    """A file-backed keyspace as it was when frozen: a read transaction on a connection of its own, which
    sees none of the writes after it. Read off the loop (an image's encoding, a hash); closed when
    dropped."""

    def __init__(self, path: Path) -> None:
        self.conn: sqlite3.Connection | None = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False
        )
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT count(*) FROM mvcc_meta").fetchone()  # the transaction's view starts here

    def keyspace(self) -> Keyspace:
        if self.conn is None:
            raise ValueError("a closed view of the keyspace")
        return Keyspace(self.conn, create=False)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def __del__(self) -> None:
        self.close()


Copy = bytes | Frozen  # what an image holds of the keyspace: serialize()'s bytes, or a view of its file


def serialize(ks: Keyspace, always: bool = False) -> Copy:
    """A copy of the whole keyspace, cheap to take: sqlite's pages (in memory), or a view of its file;
    b"" while it is empty (unless always), so that an image of a cluster that never used it reads on
    nodes of the previous release."""
    if not always and ks.revision == 0 and ks.compact_revision == 0 and not ks.lease_count():
        return b""
    ks.sync_meta()
    if ks.path is not None:
        return Frozen(ks.path)
    return ks.conn.serialize()


@contextlib.contextmanager
def _reading(copy: Copy) -> Iterator[Keyspace]:
    if isinstance(copy, Frozen):
        yield copy.keyspace()
        return
    ks = open_memory(copy)
    try:
        yield ks
    finally:
        ks.conn.close()


IMAGE_PART_ROWS = 4096  # rows per part of an image: a part goes to the file before the next is made


def image_parts(copy: Copy) -> Iterator[bytes]:
    """The keyspace's rows in key and revision order, each checked on the way, then its leases: the
    image's keyspace section, in parts, so that it is never whole in memory."""
    with _reading(copy) as ks:
        (n,) = ks.conn.execute("SELECT count(*) FROM mvcc_rev").fetchone()
        yield _IMAGE_HEAD.pack(ks.revision, ks.compact_revision, n)
        parts: list[bytes] = []
        for key, mod_rev, sub, create_rev, version, lease, value, _ in ks.rows():
            parts += (
                _IMAGE_ROW.pack(len(key), mod_rev, sub, create_rev, version, lease, len(value)),
                key,
                value,
            )
            if len(parts) >= 3 * IMAGE_PART_ROWS:
                yield b"".join(parts)
                parts = []
        leases = ks.leases()
        parts.append(_L.pack(len(leases)))
        parts.extend(_LEASE.pack(lease, ttl) for lease, ttl in leases)
        yield b"".join(parts)


def encode_image(copy: Copy) -> bytes:
    """image_parts() joined."""
    return b"".join(image_parts(copy))


def decode_image(view: memoryview, pos: int) -> tuple[bytes, int]:
    """(serialized keyspace, position after it) of encode_image's bytes at pos; ValueError if malformed."""
    revision, compact_revision, n = _IMAGE_HEAD.unpack_from(view, pos)
    pos += _IMAGE_HEAD.size
    if not 0 <= compact_revision <= revision:
        raise ValueError("keyspace revisions out of order")
    ks = open_memory()
    try:
        rows = []
        for _ in range(n):
            nk, mod_rev, sub, create_rev, version, lease, nv = _IMAGE_ROW.unpack_from(view, pos)
            pos += _IMAGE_ROW.size
            key, value = bytes(view[pos : pos + nk]), bytes(view[pos + nk : pos + nk + nv])
            pos += nk + nv
            if len(key) != nk or len(value) != nv or not 0 < mod_rev <= revision:
                raise ValueError("a malformed keyspace row")
            crc = _crc(key, mod_rev, sub, create_rev, version, lease, value)
            rows.append((key, mod_rev, sub, create_rev, version, lease, value, crc))
        (n_leases,) = _L.unpack_from(view, pos)
        pos += _L.size
        leases = []
        for _ in range(n_leases):
            lease, ttl = _LEASE.unpack_from(view, pos)
            pos += _LEASE.size
            leases.append((lease, ttl, _lease_crc(lease, ttl)))
        ks.conn.execute("BEGIN")
        try:
            ks.conn.executemany(f"INSERT INTO mvcc_rev ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            ks.conn.executemany("INSERT INTO mvcc_lease (id, ttl, crc) VALUES (?, ?, ?)", leases)
        except sqlite3.IntegrityError:
            raise ValueError("a keyspace row or lease twice") from None
        ks._set_meta(REVISION, revision)
        ks._set_meta(COMPACT_REVISION, compact_revision)
        ks.conn.execute("COMMIT")
        return ks.conn.serialize(), pos
    finally:
        ks.conn.close()


def hash_rows(copy: Copy, revision: int) -> int:
    """A CRC-32 of every row of a serialize()d keyspace up to revision, in key and revision order, each
    checked on the way (etcd's HashKV: replicas with the same compaction point agree). For a worker
    thread: it reads every row."""
    with _reading(copy) as ks:
        crc = 0
        sql = f"SELECT {_COLUMNS} FROM mvcc_rev WHERE mod_rev <= ? ORDER BY key, mod_rev"
        for row in ks.conn.execute(sql, (revision,)):
            kv = _checked(row)
            head = _IMAGE_ROW.pack(
                len(kv.key), kv.mod_revision, row[2], kv.create_revision, kv.version, kv.lease, len(kv.value)
            )
            crc = zlib.crc32(kv.value, zlib.crc32(kv.key, zlib.crc32(head, crc)))
        return crc
