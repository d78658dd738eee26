"""The multi-version keyspace (raftd/kv/mvcc.py): etcd's rules one by one, then against a naive model."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftd.api.etcd_watch import PAGE_BYTES, _within_bytes
from raftd.backup import Backup, BackupError, pack_for_etcd, unpack
from raftd.kv import Command, CommandError, ImageError, KVStore, Op, decode, encode, mvcc
from raftd.kv.mvcc import (
    Compacted,
    CompactRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResult,
    DuplicateKey,
    FutureRevision,
    KeyNotFound,
    Keyspace,
    KeyspaceCorrupt,
    KeyValue,
    LeaseExists,
    LeaseGrantRequest,
    LeaseNotFound,
    LeaseRevokeRequest,
    PutRequest,
    PutResult,
    RangeRequest,
    RangeResult,
    RequestDecodeError,
    Row,
    SortOrder,
    SortTarget,
    TxnRequest,
    decode_request,
    encode_request,
    prefix_end,
)


@pytest.fixture
def ks() -> Iterator[Keyspace]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    yield Keyspace(conn)
    conn.close()


def put(ks: Keyspace, key: bytes, value: bytes = b"v", **kw: object) -> PutResult:
    return ks.put(PutRequest(key, value, **kw))  # type: ignore[arg-type]


def keys(result: RangeResult) -> list[bytes]:
    return [kv.key for kv in result.kvs]


def test_each_write_is_one_revision_and_keys_carry_create_mod_and_version(ks: Keyspace) -> None:
    assert ks.revision == 0
    put(ks, b"a", b"1")
    put(ks, b"b", b"1")
    put(ks, b"a", b"2")
    assert ks.revision == 3
    assert ks.get(b"a") == KeyValue(b"a", b"2", create_revision=1, mod_revision=3, version=2, lease=0)
    assert ks.get(b"b") == KeyValue(b"b", b"1", 2, 2, 1, 0)


def test_a_delete_resets_the_version_and_a_new_put_creates_the_key_again(ks: Keyspace) -> None:
    put(ks, b"a")
    put(ks, b"a")
    assert ks.delete_range(DeleteRangeRequest(b"a")).deleted == 1
    assert ks.revision == 3 and ks.get(b"a") is None
    put(ks, b"a", b"again")
    assert ks.get(b"a") == KeyValue(b"a", b"again", 4, 4, 1, 0)


def test_a_delete_of_nothing_takes_no_revision(ks: Keyspace) -> None:
    put(ks, b"a")
    assert ks.delete_range(DeleteRangeRequest(b"zz")) == DeleteRangeResult(0, [])
    assert ks.delete_range(DeleteRangeRequest(b"b", b"c")).deleted == 0
    assert ks.revision == 1


def test_reads_at_a_past_revision_see_the_key_as_it_was(ks: Keyspace) -> None:
    put(ks, b"a", b"1")
    put(ks, b"a", b"2")
    ks.delete_range(DeleteRangeRequest(b"a"))
    assert ks.get(b"a", 1) is not None and ks.get(b"a", 1).value == b"1"  # type: ignore[union-attr]
    assert ks.get(b"a", 2).value == b"2"  # type: ignore[union-attr]
    assert ks.get(b"a", 3) is None
    with pytest.raises(FutureRevision, match="future revision"):
        ks.get(b"a", 4)


def test_ranges_prefixes_limits_and_counts(ks: Keyspace) -> None:
    for k in (b"foo", b"foo/a", b"foo/b", b"fop", b"fo", b"\xff\xff"):
        put(ks, k)
    assert keys(ks.range(RangeRequest(b"foo", prefix_end(b"foo")))) == [b"foo", b"foo/a", b"foo/b"]
    assert prefix_end(b"foo") == b"fop" and prefix_end(b"a\xff") == b"b" and prefix_end(b"\xff") == b"\x00"
    page = ks.range(RangeRequest(b"foo", prefix_end(b"foo"), limit=2))
    assert keys(page) == [b"foo", b"foo/a"] and page.more and page.count == 3
    last = ks.range(RangeRequest(b"foo", prefix_end(b"foo"), limit=3))
    assert not last.more and last.count == 3
    # range_end b"\0": every key from key on; key b"\0" too: the whole keyspace.
    assert keys(ks.range(RangeRequest(b"fop", b"\x00"))) == [b"fop", b"\xff\xff"]
    assert ks.range(RangeRequest(b"\x00", b"\x00")).count == 6
    assert keys(ks.range(RangeRequest(b"z", b"a"))) == []  # an end before the start is empty
    counted = ks.range(RangeRequest(b"\x00", b"\x00", count_only=True))
    assert counted.kvs == [] and counted.count == 6
    bare = ks.range(RangeRequest(b"foo", keys_only=True)).kvs[0]
    assert bare.value == b"" and bare.version == 1


def test_sorting_and_filters_apply_before_the_limit(ks: Keyspace) -> None:
    put(ks, b"a", b"3")  # rev 1
    put(ks, b"b", b"1")  # rev 2
    put(ks, b"c", b"2")  # rev 3
    put(ks, b"a", b"3")  # rev 4: a is now the latest modified
    by_mod = ks.range(
        RangeRequest(b"a", b"d", limit=2, sort_order=SortOrder.DESCEND, sort_target=SortTarget.MOD)
    )
    assert keys(by_mod) == [b"a", b"c"] and by_mod.more and by_mod.count == 3
    by_value = ks.range(RangeRequest(b"a", b"d", sort_order=SortOrder.ASCEND, sort_target=SortTarget.VALUE))
    assert keys(by_value) == [b"b", b"c", b"a"]
    assert keys(ks.range(RangeRequest(b"a", b"d", sort_order=SortOrder.DESCEND))) == [b"c", b"b", b"a"]
    assert keys(ks.range(RangeRequest(b"a", b"d", min_mod_revision=3))) == [b"a", b"c"]
    assert keys(ks.range(RangeRequest(b"a", b"d", max_create_revision=2))) == [b"a", b"b"]


def test_compaction_refuses_older_reads_and_keeps_what_newer_ones_need(ks: Keyspace) -> None:
    put(ks, b"a", b"1")  # 1
    put(ks, b"a", b"2")  # 2
    put(ks, b"b", b"1")  # 3
    ks.delete_range(DeleteRangeRequest(b"b"))  # 4
    put(ks, b"a", b"3")  # 5
    ks.compact(4)
    with pytest.raises(Compacted) as e:
        ks.get(b"a", 3)
    assert e.value.compact_revision == 4 and "compacted" in str(e.value)
    assert ks.get(b"a", 4).value == b"2"  # type: ignore[union-attr]
    assert ks.get(b"b", 4) is None
    stored = [(row[0], row[1]) for row in ks.rows()]
    assert stored == [(b"a", 2), (b"a", 5)]  # a's first version and b's tombstone are gone
    with pytest.raises(Compacted):
        ks.compact(4)
    with pytest.raises(FutureRevision):
        ks.compact(6)
    with pytest.raises(Compacted):
        ks.changes(2, b"a")


def test_changes_come_in_revision_order_with_deletes_bare(ks: Keyspace) -> None:
    put(ks, b"k1", b"a")
    ks.txn(TxnRequest(success=(PutRequest(b"k2", b"b"), PutRequest(b"k0", b"c"))))
    ks.delete_range(DeleteRangeRequest(b"k", prefix_end(b"k")))
    events = ks.changes(0, b"k", prefix_end(b"k"))
    seen = [(e.deleted, e.kv.key, e.kv.mod_revision) for e in events]
    # Within revision 2 the txn's order (k2 then k0); the delete of revision 3 in key order.
    assert seen == [
        (False, b"k1", 1),
        (False, b"k2", 2),
        (False, b"k0", 2),
        (True, b"k0", 3),
        (True, b"k1", 3),
        (True, b"k2", 3),
    ]
    assert events[3].kv == KeyValue(b"k0", b"", 0, 3, 0, 0)
    assert ks.previous(events[3]) == KeyValue(b"k0", b"c", 2, 2, 1, 0)
    assert [e.kv.key for e in ks.changes(1, b"k1")] == [b"k1"]
    assert len(ks.changes(0, b"k", prefix_end(b"k"), limit=2)) == 2


def test_a_txn_is_one_revision_and_sees_its_own_writes(ks: Keyspace) -> None:
    put(ks, b"x", b"old")
    res = ks.txn(
        TxnRequest(
            compare=(Compare(b"x", CompareTarget.VALUE, CompareResult.EQUAL, b"old"),),
            success=(
                PutRequest(b"x", b"new", prev_kv=True),
                PutRequest(b"y", b"1"),
                RangeRequest(b"x", b"z"),
            ),
        )
    )
    assert res.succeeded and ks.revision == 2
    assert res.responses[0] == PutResult(KeyValue(b"x", b"old", 1, 1, 1, 0))
    seen = res.responses[2]
    assert isinstance(seen, RangeResult)
    assert [(kv.key, kv.value, kv.mod_revision) for kv in seen.kvs] == [(b"x", b"new", 2), (b"y", b"1", 2)]
    # A read-only txn takes no revision.
    assert not ks.txn(
        TxnRequest(compare=(Compare(b"x", CompareTarget.VERSION, CompareResult.LESS, 2),))
    ).succeeded
    assert ks.revision == 2


def test_compares_on_missing_keys_and_ranges(ks: Keyspace) -> None:
    def holds(*compare: Compare) -> bool:
        return ks.txn(TxnRequest(compare=compare)).succeeded

    assert holds(Compare(b"none", CompareTarget.CREATE, CompareResult.EQUAL, 0))  # the lock idiom
    assert holds(Compare(b"none", CompareTarget.VERSION, CompareResult.EQUAL, 0))
    # No compare on the value of a missing key holds, not even "not equal".
    assert not holds(Compare(b"none", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"x"))
    assert not holds(Compare(b"none", CompareTarget.VALUE, CompareResult.EQUAL, b""))
    put(ks, b"r1", b"a")
    put(ks, b"r2", b"b")
    assert holds(Compare(b"r", CompareTarget.VERSION, CompareResult.EQUAL, 1, range_end=b"s"))
    assert not holds(Compare(b"r", CompareTarget.VALUE, CompareResult.EQUAL, b"a", range_end=b"s"))
    assert holds(Compare(b"r", CompareTarget.MOD, CompareResult.GREATER, 0, range_end=b"s"))
    assert holds(Compare(b"r1", CompareTarget.LEASE, CompareResult.EQUAL, 0))
    assert holds(Compare(b"r1", CompareTarget.VALUE, CompareResult.LESS, b"b"))


@pytest.mark.parametrize(
    "ops",
    [
        (PutRequest(b"a"), PutRequest(b"a")),
        (DeleteRangeRequest(b"a", b"c"), PutRequest(b"b")),
        (PutRequest(b"a"), TxnRequest(success=(PutRequest(b"a"),))),
        (DeleteRangeRequest(b"a"), TxnRequest(failure=(PutRequest(b"a"),))),
    ],
)
def test_a_txn_that_writes_a_key_twice_is_refused_whole(ks: Keyspace, ops: tuple[object, ...]) -> None:
    with pytest.raises(DuplicateKey, match="duplicate key given in txn request"):
        ks.txn(TxnRequest(success=ops))  # type: ignore[arg-type]
    assert ks.revision == 0 and list(ks.rows()) == []


def test_a_key_put_in_both_branches_of_a_nested_txn_and_overlapping_deletes_are_fine(ks: Keyspace) -> None:
    nested = TxnRequest(success=(PutRequest(b"a", b"then"),), failure=(PutRequest(b"a", b"else"),))
    ks.txn(TxnRequest(success=(nested, DeleteRangeRequest(b"m", b"o"), DeleteRangeRequest(b"n", b"p"))))
    assert ks.get(b"a").value == b"then"  # type: ignore[union-attr]


def test_a_request_that_fails_partway_writes_nothing(ks: Keyspace) -> None:
    put(ks, b"a")
    with pytest.raises(KeyNotFound):
        ks.txn(TxnRequest(success=(PutRequest(b"b", b"1"), PutRequest(b"missing", ignore_value=True))))
    with pytest.raises(FutureRevision):
        ks.txn(TxnRequest(success=(PutRequest(b"b", b"1"), RangeRequest(b"a", revision=9))))
    assert ks.revision == 1 and ks.get(b"b") is None
    put(ks, b"a", b"kept", ignore_lease=True)
    ks.grant(LeaseGrantRequest(7, 10))
    put(ks, b"a", ignore_value=True, lease=7)
    assert ks.get(b"a") == KeyValue(b"a", b"kept", 1, 3, 3, 7)


def test_the_keyspace_survives_a_reopen_and_damage_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db, isolation_level=None)
    ks = Keyspace(conn)
    put(ks, b"a", b"1")
    put(ks, b"b", b"2")
    ks.compact(1)
    conn.close()
    conn = sqlite3.connect(db, isolation_level=None)
    again = Keyspace(conn)
    assert (again.revision, again.compact_revision) == (2, 1), "closed without its revision written"
    put(again, b"c", b"3")
    again.sync_meta()
    assert Keyspace(conn).revision == 3
    conn.execute("UPDATE mvcc_rev SET value = ? WHERE key = ?", (b"X", b"b"))
    with pytest.raises(KeyspaceCorrupt, match=r"key b'b' at revision 2 is damaged"):
        again.get(b"b")
    with pytest.raises(KeyspaceCorrupt):
        again.range(RangeRequest(b"a", b"c"))
    conn.execute("UPDATE mvcc_meta SET value = 99 WHERE name = 'revision'")
    with pytest.raises(KeyspaceCorrupt, match="revision is damaged"):
        Keyspace(conn)
    conn.close()


# -- the model: every revision's whole state as a dict, the rules written the naive way ---------------

KEYS = [b"a", b"ab", b"b", b"ba", b"c"]


class Model:
    def __init__(self) -> None:
        self.states: list[dict[bytes, KeyValue]] = [{}]  # index: revision
        self.compacted = 0

    @property
    def revision(self) -> int:
        return len(self.states) - 1

    def apply(self, op: tuple[object, ...]) -> None:
        kind = op[0]
        now = dict(self.states[-1])
        rev = self.revision + 1
        if kind == "put":
            _, key, value = op
            assert isinstance(key, bytes) and isinstance(value, bytes)
            old = now.get(key)
            create, version = (old.create_revision, old.version + 1) if old else (rev, 1)
            now[key] = KeyValue(key, value, create, rev, version, 0)
        elif kind == "delete":
            _, low, high = op
            gone = [k for k in now if _in(k, low, high)]  # type: ignore[arg-type]
            if not gone:
                return
            for k in gone:
                del now[k]
        elif kind == "cas":
            _, key, version, value = op
            old = now.get(key)  # type: ignore[call-overload]
            if (old.version if old else 0) != version:
                return
            assert isinstance(key, bytes) and isinstance(value, bytes)
            create, v = (old.create_revision, old.version + 1) if old else (rev, 1)
            now[key] = KeyValue(key, value, create, rev, v, 0)
        elif kind in ("refused", "flush"):
            return
        self.states.append(now)


def _in(key: bytes, low: bytes, high: bytes) -> bool:
    return key == low if not high else low <= key and (high == b"\x00" or key < high)


def _to_keyspace(ks: Keyspace, op: tuple[object, ...]) -> None:
    kind = op[0]
    if kind == "put":
        ks.put(PutRequest(op[1], op[2]))  # type: ignore[arg-type]
    elif kind == "delete":
        ks.delete_range(DeleteRangeRequest(op[1], op[2]))  # type: ignore[arg-type]
    elif kind == "cas":
        _, key, version, value = op
        compare = Compare(key, CompareTarget.VERSION, CompareResult.EQUAL, version)  # type: ignore[arg-type]
        ks.txn(TxnRequest(compare=(compare,), success=(PutRequest(key, value),)))  # type: ignore[arg-type]
    elif kind == "refused":  # a txn that writes a key, then is refused: the write is undone
        _, key, value = op
        missing = PutRequest(b"zz", ignore_value=True)  # never in KEYS: KeyNotFound
        with pytest.raises(KeyNotFound):
            ks.txn(TxnRequest(success=(PutRequest(key, value), missing)))  # type: ignore[arg-type]
    elif kind == "flush":
        ks.flush()


key_st = st.sampled_from(KEYS)
op_st = st.one_of(
    st.tuples(st.just("put"), key_st, st.binary(max_size=3)),
    st.tuples(st.just("delete"), key_st, st.sampled_from([b"", b"b", b"c", b"\x00", b"a"])),
    st.tuples(st.just("cas"), key_st, st.integers(0, 3), st.binary(max_size=3)),
    st.tuples(st.just("compact"), st.integers(0, 40)),
    st.tuples(st.just("refused"), key_st, st.binary(max_size=3)),
    st.tuples(st.just("flush")),
)


def test_plain_writes_follow_every_other_kind_of_write_to_their_key(ks: Keyspace) -> None:
    """A plain put or delete takes its key's newest version from what the keyspace remembers
    (Keyspace._known): every other write of the key must keep that right."""
    ks.put(PutRequest(b"a", b"1"))
    cas = Compare(b"a", CompareTarget.VERSION, CompareResult.EQUAL, 1)
    ks.txn(TxnRequest(compare=(cas,), success=(PutRequest(b"a", b"2"),)))
    ks.put(PutRequest(b"a", b"3"))
    assert ks.get(b"a") == KeyValue(b"a", b"3", 1, 3, 3, 0)
    ks.delete_range(DeleteRangeRequest(b"a", b"b"))  # a range: not the plain path
    assert ks.delete_range(DeleteRangeRequest(b"a")).deleted == 0
    ks.put(PutRequest(b"a", b"new"))
    assert ks.get(b"a") == KeyValue(b"a", b"new", 5, 5, 1, 0)
    ks.grant(LeaseGrantRequest(7, 60))
    ks.put(PutRequest(b"a", b"leased", lease=7))
    ks.revoke(LeaseRevokeRequest(7))
    assert ks.get(b"a") is None
    ks.put(PutRequest(b"a", b"again"))
    assert ks.get(b"a") == KeyValue(b"a", b"again", 8, 8, 1, 0)
    with pytest.raises(KeyNotFound):  # refused after writing a: the write is undone
        ks.txn(TxnRequest(success=(PutRequest(b"a", b"x"), PutRequest(b"zz", ignore_value=True))))
    ks.put(PutRequest(b"a", b"after"))
    assert ks.get(b"a") == KeyValue(b"a", b"after", 8, 9, 2, 0)


def _kept(rows: list[Row], at: int) -> list[Row]:
    """The rows a compaction at `at` keeps, the naive way: every row above it and, of each key, its newest
    row at or below it unless that is a tombstone."""
    newest: dict[bytes, Row] = {}
    for row in rows:
        if row[1] <= at:
            newest[row[0]] = row
    return [r for r in rows if r[1] > at or (newest.get(r[0]) is r and r[4] != 0)]


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(op_st, max_size=40),
    reads=st.lists(st.tuples(st.integers(0, 45), key_st, key_st), max_size=8),
)
def test_the_keyspace_agrees_with_a_naive_model(
    ops: list[tuple[object, ...]], reads: list[tuple[int, bytes, bytes]]
) -> None:
    _agrees_with_the_model(ops, reads)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(op_st, max_size=40),
    reads=st.lists(st.tuples(st.integers(0, 45), key_st, key_st), max_size=8),
)
def test_the_keyspace_agrees_with_the_model_when_its_buffers_are_tiny(
    ops: list[tuple[object, ...]], reads: list[tuple[int, bytes, bytes]]
) -> None:
    """Buffered rows written every second plain write, the newest versions forgotten at every flush: the
    same answers (mvcc.FLUSH_ROWS, mvcc.KNOWN_KEYS)."""
    bounds = mvcc.FLUSH_ROWS, mvcc.KNOWN_KEYS
    mvcc.FLUSH_ROWS, mvcc.KNOWN_KEYS = 2, 0
    try:
        _agrees_with_the_model(ops, reads)
    finally:
        mvcc.FLUSH_ROWS, mvcc.KNOWN_KEYS = bounds


def _agrees_with_the_model(ops: list[tuple[object, ...]], reads: list[tuple[int, bytes, bytes]]) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    ks, model = Keyspace(conn), Model()
    for op in ops:
        if op[0] == "compact":
            rev = op[1]
            assert isinstance(rev, int)
            if model.compacted < rev <= model.revision:
                before = list(ks.rows())
                ks.compact(rev)
                model.compacted = rev
                assert list(ks.rows()) == _kept(before, rev), "exactly what newer reads need stays"
            continue
        _to_keyspace(ks, op)
        model.apply(op)
        assert ks.revision == model.revision
    for rev, low, high in reads:
        state_of = model.states[rev] if rev <= model.revision else None
        if state_of is None:
            with pytest.raises(FutureRevision):
                ks.range(RangeRequest(low, high, revision=rev))
            continue
        if 0 < rev < model.compacted:
            with pytest.raises(Compacted):
                ks.range(RangeRequest(low, high, revision=rev))
            continue
        expect = sorted(
            (kv for k, kv in (state_of if rev else model.states[-1]).items() if _in(k, low, high)),
            key=lambda kv: kv.key,
        )
        assert ks.range(RangeRequest(low, high, revision=rev)).kvs == expect
        # A watch from just after the compaction point replays exactly the model's changes since.
        start = max(rev, model.compacted)
        events = ks.changes(start, b"\x00", b"\x00", limit=10_000)
        replayed = dict(model.states[start]) if start else {}
        for e in events:
            if e.deleted:
                replayed.pop(e.kv.key)
            else:
                replayed[e.kv.key] = e.kv
        assert replayed == model.states[-1]
    # Compaction never changes what the reads it allows return.
    assert [kv for kv in ks.range(RangeRequest(b"\x00", b"\x00")).kvs] == sorted(
        model.states[-1].values(), key=lambda kv: kv.key
    )
    conn.close()


# -- the log's encoding of a request, and the keyspace in state images and the state machine ----------------

bytes_st = st.binary(max_size=6)
range_st = st.builds(
    RangeRequest,
    bytes_st,
    bytes_st,
    st.integers(-5, 2**40),
    st.integers(0, 2**40),
    st.booleans(),
    st.booleans(),
    st.sampled_from(SortOrder),
    st.sampled_from(SortTarget),
)
put_st = st.builds(
    PutRequest,
    bytes_st,
    bytes_st,
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
delete_st = st.builds(DeleteRangeRequest, bytes_st, bytes_st, st.booleans())
compare_st = st.sampled_from(CompareTarget).flatmap(
    lambda t: st.builds(
        Compare,
        bytes_st,
        st.just(t),
        st.sampled_from(CompareResult),
        bytes_st if t == CompareTarget.VALUE else st.integers(-(2**63), 2**63 - 1),
        bytes_st,
    )
)
request_st = st.recursive(
    st.one_of(range_st, put_st, delete_st),
    lambda inner: st.builds(
        TxnRequest,
        st.lists(compare_st, max_size=3).map(tuple),
        st.lists(inner, max_size=3).map(tuple),
        st.lists(inner, max_size=3).map(tuple),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(request=st.one_of(put_st, delete_st, request_st.filter(lambda r: not isinstance(r, RangeRequest))))
def test_requests_survive_the_log_encoding(request: object) -> None:
    assert decode_request(encode_request(request)) == request  # type: ignore[arg-type]


def test_a_damaged_request_does_not_decode() -> None:
    good = encode_request(TxnRequest(success=(PutRequest(b"k", b"v"),)))
    for bad in (good[:-1], good + b"x", b"\x02" + good[1:], good[:1] + b"Z" + good[2:], b""):
        with pytest.raises(RequestDecodeError):
            decode_request(bad)
    assert decode_request(encode_request(CompactRequest(7))) == CompactRequest(7)


def test_state_images_carry_the_keyspace_and_stay_readable_without_it() -> None:
    store = KVStore()
    assert encode(store.image()).startswith(b"RAFTDKV2")  # nothing written: the previous release reads it
    store.apply(1, Command(Op.PUT, b"plain", b"v"))
    store.apply(2, Command(Op.MVCC, b"", encode_request(PutRequest(b"etcd", b"1"))))
    store.apply(3, Command(Op.MVCC, b"", encode_request(PutRequest(b"etcd", b"2"))))
    store.apply(4, Command(Op.MVCC, b"", encode_request(CompactRequest(1))))
    raw = encode(store.image())
    assert raw.startswith(b"RAFTDKV5")
    again = KVStore()
    again.restore(4, raw)
    assert again.get(b"plain") == b"v"
    ks = again.keyspace
    assert (ks.revision, ks.compact_revision) == (2, 1)
    assert ks.get(b"etcd") == KeyValue(b"etcd", b"2", 1, 2, 2, 0)
    assert ks.get(b"etcd", 1) == KeyValue(b"etcd", b"1", 1, 1, 1, 0)  # the compaction point stays readable
    # The same rows encode the same bytes, whatever the pages of either copy look like.
    assert encode(again.image()) == raw
    with pytest.raises(ImageError):
        decode(raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:])


def test_the_state_machine_answers_keyspace_writes_and_refusals_alike_everywhere() -> None:
    stores = [KVStore(), KVStore()]
    entries = [
        Command(Op.MVCC, b"", encode_request(PutRequest(b"a", b"1"))),
        Command(Op.MVCC, b"", encode_request(PutRequest(b"missing", ignore_value=True))),
        Command(Op.MVCC, b"", encode_request(TxnRequest(success=(DeleteRangeRequest(b"a"),)))),
    ]
    results = [[s.apply(i, cmd) for i, cmd in enumerate(entries, start=1)] for s in stores]
    first, second = results
    assert [r.revision for r in first] == [1, 1, 2] == [r.revision for r in second]
    assert isinstance(first[1].answer, KeyNotFound) and isinstance(second[1].answer, KeyNotFound)
    assert list(stores[0].keyspace.rows()) == list(stores[1].keyspace.rows())
    with pytest.raises(CommandError):
        KVStore().apply(1, Command(Op.MVCC, b"", b"\x01Q"))


def test_leases_hold_keys_and_a_revoke_deletes_them_at_one_revision(ks: Keyspace) -> None:
    ks.grant(LeaseGrantRequest(5, 30))
    with pytest.raises(LeaseExists):
        ks.grant(LeaseGrantRequest(5, 30))
    with pytest.raises(LeaseNotFound):
        put(ks, b"x", lease=6)
    assert ks.revision == 0
    put(ks, b"a", lease=5)
    put(ks, b"b", lease=5)
    put(ks, b"c", lease=5)
    put(ks, b"c", b"detached")  # its latest version names no lease: the revoke leaves it
    assert ks.lease_keys(5) == [b"a", b"b"] and ks.leases() == [(5, 30)]
    assert ks.revoke(LeaseRevokeRequest(5)) == 2
    assert ks.revision == 5 and ks.get(b"a") is None and ks.get(b"b") is None and ks.get(b"c") is not None
    assert [(e.deleted, e.kv.key, e.kv.mod_revision) for e in ks.changes(4, b"\x00", b"\x00")] == [
        (True, b"a", 5),
        (True, b"b", 5),
    ]
    with pytest.raises(LeaseNotFound):
        ks.revoke(LeaseRevokeRequest(5))
    ks.grant(LeaseGrantRequest(9, 10))
    assert ks.revoke(LeaseRevokeRequest(9)) == 0 and ks.revision == 5  # no key: no revision


def test_leases_ride_in_the_image() -> None:
    store = KVStore()
    store.apply(1, Command(Op.MVCC, b"", encode_request(LeaseGrantRequest(77, 20))))
    raw = encode(store.image())
    assert raw.startswith(b"RAFTDKV5")  # a lease alone is state to keep
    again = KVStore()
    again.restore(1, raw)
    assert again.keyspace.leases() == [(77, 20)]
    assert decode_request(encode_request(LeaseRevokeRequest(77))) == LeaseRevokeRequest(77)


def test_a_backup_as_etcds_snapshot_stream_carries_it() -> None:
    store = KVStore()
    store.apply(1, Command(Op.MVCC, b"", encode_request(PutRequest(b"k", b"v"))))
    image = encode(store.image())
    raw = pack_for_etcd(Backup("c", 1, 1, image))
    assert len(raw) % 512 == 32  # what etcdctl snapshot save checks
    assert unpack(raw) == Backup("c", 1, 1, image)
    damaged = raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]
    with pytest.raises(BackupError, match="SHA-256"):
        unpack(damaged)


def test_a_watch_page_keeps_whole_revisions_within_its_bytes(ks: Keyspace) -> None:
    big = b"x" * (PAGE_BYTES // 4)
    put(ks, b"a", big)  # revision 1
    ks.txn(TxnRequest(success=(PutRequest(b"b", big), PutRequest(b"c", big))))  # revision 2: two events
    put(ks, b"d", big)  # revision 3: past the budget
    events = ks.changes(0, b"\x00", b"\x00")
    kept, trimmed = _within_bytes(events)
    assert trimmed and [e.kv.key for e in kept] == [b"a", b"b", b"c"]
    huge = ks.changes(1, b"b", b"d")  # one revision, whatever its size, goes whole
    assert _within_bytes(huge) == (huge, False)
    assert [e.kv.key for e in ks.changes(0, b"\x00", b"\x00", until=2)] == [b"a", b"b", b"c"]


def test_the_rows_hash_is_the_same_on_replicas_and_covers_the_revision_asked() -> None:
    def keyspace(last: bytes) -> Keyspace:
        ks = mvcc.open_memory()
        put(ks, b"a", b"1")
        put(ks, b"b", last)
        return ks

    one, same, other = keyspace(b"2"), keyspace(b"2"), keyspace(b"3")

    def hash_of(ks: Keyspace, rev: int) -> int:
        return mvcc.hash_rows(mvcc.serialize(ks, always=True), rev)

    assert hash_of(one, 2) == hash_of(same, 2) != hash_of(other, 2)
    assert hash_of(one, 1) == hash_of(other, 1), "the rows up to revision 1 are the same"
    damaged = mvcc.serialize(one, always=True)
    copy = mvcc.open_memory(damaged)
    copy.conn.execute("UPDATE mvcc_rev SET value = ? WHERE key = ?", (b"X", b"b"))
    with pytest.raises(KeyspaceCorrupt):
        mvcc.hash_rows(mvcc.serialize(copy, always=True), 2)
