"""The replicated state machine: command encoding and exactly-once sessions."""

from __future__ import annotations

import hashlib
import struct
import tracemalloc
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftd.kv import (
    Command,
    CommandError,
    Image,
    ImageError,
    KVStore,
    Op,
    decode,
    encode,
    encode_to,
    table,
    verify,
)
from raftd.kv import image as image_module
from raftd.kv import store as store_module


@given(
    op=st.sampled_from(list(Op)),
    key=st.binary(min_size=1, max_size=64),
    value=st.binary(max_size=256),
    client=st.binary(max_size=40),
    seq=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_command_round_trip(op: Op, key: bytes, value: bytes, client: bytes, seq: int) -> None:
    for first in (None, True, False):
        cmd = Command(op, key, value, client, seq, first)
        assert Command.decode(cmd.encode()) == cmd


def test_entries_written_before_the_first_flag_read_as_unchecked() -> None:
    """The encoding of earlier releases is unchanged (their logs replay as they applied), and a session
    write of this one differs from it only in the op byte's flags."""
    legacy = b"\x01" + struct.pack(">QHII", 7, 1, 1, 1) + b"ckv"
    assert Command.decode(legacy) == Command(Op.PUT, b"k", b"v", b"c", 7, None)
    assert Command(Op.PUT, b"k", b"v", b"c", 7, None).encode() == legacy
    assert Command(Op.PUT, b"k", b"v", b"c", 7, True).encode() == b"\xc1" + legacy[1:]
    assert Command(Op.PUT, b"k", b"v", b"c", 7, False).encode() == b"\x81" + legacy[1:]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        Command(Op.PUT, b"k", b"v").encode()[:-1],
        b"\x09" + b"\x00" * 20,
        b"\x41" + Command(Op.PUT, b"k", b"v").encode()[1:],  # FIRST without CHECKED
    ],
)
def test_corrupt_commands_are_refused(data: bytes) -> None:
    with pytest.raises(CommandError):
        Command.decode(data)


def test_put_get_delete() -> None:
    kv = KVStore()
    assert kv.apply(1, Command(Op.PUT, b"a", b"1")).index == 1
    assert kv.get(b"a") == b"1"
    assert kv.apply(2, Command(Op.DELETE, b"a")).existed is True
    assert kv.get(b"a") is None
    assert kv.apply(3, Command(Op.DELETE, b"a")).existed is False
    assert kv.applied == 3


def test_retried_write_applies_once() -> None:
    kv = KVStore()
    first = kv.apply(1, Command(Op.PUT, b"k", b"v1", b"client", 1))
    kv.apply(2, Command(Op.PUT, b"k", b"other"))
    # The same (client, seq) again, e.g. after a lost reply: no effect, and the first outcome comes back.
    again = kv.apply(3, Command(Op.PUT, b"k", b"v1", b"client", 1))
    assert again == first
    assert kv.get(b"k") == b"other"
    # A retried delete keeps reporting what the first one saw.
    d1 = kv.apply(4, Command(Op.DELETE, b"k", b"", b"client", 2))
    kv.apply(5, Command(Op.PUT, b"k", b"back"))
    assert kv.apply(6, Command(Op.DELETE, b"k", b"", b"client", 2)) == d1
    assert kv.get(b"k") == b"back"


def test_writes_without_session_always_apply() -> None:
    kv = KVStore()
    kv.apply(1, Command(Op.PUT, b"k", b"1"))
    kv.apply(2, Command(Op.DELETE, b"k"))
    kv.apply(3, Command(Op.PUT, b"k", b"1"))
    assert kv.get(b"k") == b"1"


def test_a_write_that_is_not_first_from_an_unknown_client_is_refused_and_never_applies() -> None:
    """Dissertation 6.3: a session the store no longer holds cannot tell a retry from a new write, so the
    write is refused (the client hears "session expired; the write may have applied")."""
    kv = KVStore()
    refused = kv.apply(1, Command(Op.PUT, b"k", b"v", b"stranger", 5, first=False))
    assert refused.expired and kv.get(b"k") is None and b"stranger" not in kv.sessions
    assert kv.applied == 1
    assert kv.apply(2, Command(Op.DELETE, b"k", b"", b"stranger", 6, first=False)).expired
    # Its first write makes the session; later ones (not first) apply as they come.
    assert not kv.apply(3, Command(Op.PUT, b"k", b"v1", b"c", 1, first=True)).expired
    assert not kv.apply(4, Command(Op.PUT, b"k", b"v2", b"c", 2, first=False)).expired
    assert kv.get(b"k") == b"v2"
    # An unchecked entry (written while a node of an earlier release was a member) keeps the old rule.
    assert not kv.apply(5, Command(Op.PUT, b"old", b"v", b"legacy", 9, first=None)).expired
    assert kv.get(b"old") == b"v"


def test_an_evicted_session_s_retry_is_refused_not_applied_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's probe: 10,001 writes from distinct client ids, then a client retries its write. It
    applied a second time (its session had been evicted); now it is refused."""
    kv = KVStore()
    kv.apply(1, Command(Op.PUT, b"counter", b"1", b"me", 1, first=True))
    kv.apply(2, Command(Op.PUT, b"counter", b"2", b"me", 2, first=False))
    kv.apply(3, Command(Op.PUT, b"counter", b"3"))
    for i in range(store_module.MAX_SESSIONS):
        kv.apply(4 + i, Command(Op.PUT, b"other", b"x", f"c{i}".encode(), 1, first=True))
    assert b"me" not in kv.sessions and len(kv.sessions) == store_module.MAX_SESSIONS
    retry = kv.apply(20_000, Command(Op.PUT, b"counter", b"2", b"me", 2, first=False))
    assert retry.expired
    assert kv.get(b"counter") == b"3", "the retried write must not apply again"


def test_the_session_limit_is_replicated_state() -> None:
    """Op.SESSION_LIMIT (raftd --max-sessions, proposed by the leader) evicts at once, the least recently
    used first, and every replica applying the log agrees."""
    replicas = [KVStore(), KVStore()]
    log = [Command(Op.PUT, b"k", b"v", f"c{i}".encode(), 1, first=True) for i in range(10)]
    log += [Command(Op.PUT, b"k", b"v", b"c3", 2, first=False), Command(Op.SESSION_LIMIT, b"", b"4")]
    log += [Command(Op.PUT, b"k", b"v", b"c0", 2, first=False)]  # evicted by the new limit
    for kv in replicas:
        results = [kv.apply(i, c) for i, c in enumerate(log, start=1)]
        assert kv.session_limit == 4
        assert list(kv.sessions) == [b"c7", b"c8", b"c9", b"c3"]
        assert results[-1].expired
    assert replicas[0].sessions == replicas[1].sessions
    restored = KVStore()
    restored.restore(replicas[0].applied, encode(replicas[0].image()))
    assert restored.session_limit == 4 and restored.sessions == replicas[0].sessions


@pytest.mark.parametrize("value", [b"", b"0", b"-1", b"ten", b"1" * 30])
def test_a_malformed_session_limit_entry_is_corrupt(value: bytes) -> None:
    with pytest.raises(CommandError):
        KVStore().apply(1, Command(Op.SESSION_LIMIT, b"", value))


def test_an_image_with_the_default_session_limit_keeps_the_earlier_format() -> None:
    """A node of the previous release reads RAFTDKV2 only: only a changed limit makes a RAFTDKV3."""
    kv = _filled()
    assert encode(kv.image()).startswith(b"RAFTDKV2")
    kv.apply(kv.applied + 1, Command(Op.SESSION_LIMIT, b"", b"3"))
    raw = encode(kv.image())
    assert raw.startswith(b"RAFTDKV3")
    assert decode(raw).session_limit == 3 and len(decode(raw).sessions) == 3


def test_sessions_are_bounded_and_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_SESSIONS", 3)
    replicas = [KVStore(), KVStore()]
    cmds = [Command(Op.PUT, b"k", str(i).encode(), f"c{i % 5}".encode(), i) for i in range(1, 40)]
    for kv in replicas:
        for i, c in enumerate(cmds, start=1):
            kv.apply(i, c)
    assert len(replicas[0].sessions) == 3
    assert replicas[0].sessions == replicas[1].sessions
    assert list(replicas[0].data.items()) == list(replicas[1].data.items())


def _filled(n: int = 200) -> KVStore:
    kv = KVStore()
    for i in range(1, n + 1):
        op = Op.DELETE if i % 7 == 0 else Op.PUT
        kv.apply(i, Command(op, f"k{i % 31}".encode(), f"v{i}".encode(), f"c{i % 5}".encode(), i))
    return kv


def test_image_round_trip_keeps_data_and_sessions() -> None:
    kv = _filled()
    restored = KVStore()
    restored.restore(kv.applied, encode(kv.image()))
    assert list(restored.data.items()) == list(kv.data.items())
    assert restored.sessions == kv.sessions
    assert restored.applied == kv.applied
    # The sessions still deduplicate after a restore: a retried write applies once.
    client, (seq, result) = next(iter(kv.sessions.items()))
    assert restored.apply(999, Command(Op.PUT, b"k0", b"again", client, seq)) == result


def test_replicas_at_the_same_index_encode_to_the_same_bytes() -> None:
    """One replica applies the whole log, another restores an image halfway and applies the rest: the
    images they take at the end are byte-identical (the map's order is a function of the log)."""
    log = [
        Command(Op.DELETE if i % 5 == 0 else Op.PUT, f"k{i % 13}".encode(), f"v{i}".encode(), b"c", i)
        for i in range(1, 300)
    ]
    whole, restored = KVStore(), KVStore()
    for i, cmd in enumerate(log, start=1):
        whole.apply(i, cmd)
        if i == 150:
            restored.restore(i, encode(whole.image()))
        elif i > 150:
            restored.apply(i, cmd)
    assert encode(whole.image()) == encode(restored.image())


def test_the_image_is_a_copy() -> None:
    kv = _filled(10)
    image = kv.image()
    kv.apply(11, Command(Op.PUT, b"new", b"v"))
    kv.apply(12, Command(Op.PUT, b"k1", b"changed"))
    assert dict(image.items()) == dict(_filled(10).data.items())


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[:-1],  # truncated
        lambda raw: raw[:20] + bytes([raw[20] ^ 0xFF]) + raw[21:],  # a flipped byte
        lambda raw: b"NOTRAFTD" + raw[8:],  # foreign
        lambda raw: b"",
    ],
)
def test_damaged_images_are_refused(damage: Callable[[bytes], bytes]) -> None:
    raw = encode(_filled().image())
    with pytest.raises(ImageError):
        decode(damage(raw))
    with pytest.raises(ImageError):
        verify(damage(raw))


@given(st.dictionaries(st.binary(min_size=1, max_size=20), st.binary(max_size=40), max_size=50))
def test_image_round_trip_any_map(data: dict[bytes, bytes]) -> None:
    assert dict(decode(encode(Image.of(data))).items()) == data


def _v1_image(keys: list[bytes], values: list[bytes], sessions: bytes = b"", n_sessions: int = 0) -> bytes:
    """An image as versions before the packed map wrote it (raftd.kv.image's docstring has the layout)."""
    body = (
        b"RAFTDKV1"
        + struct.pack(
            f"<II{len(keys)}I{len(values)}I", len(keys), n_sessions, *map(len, keys), *map(len, values)
        )
        + b"".join(keys)
        + b"".join(values)
        + sessions
    )
    return body + struct.pack("<I", zlib.crc32(body))


def test_images_earlier_versions_wrote_stay_readable() -> None:
    """Images on disk and in backups from before the packed map load with their data and sessions."""
    written_before = bytes.fromhex(
        "52414654444b56310200000001000000020000000400000002000000000000006b316b657932763101006307000000"
        "000000000300000000000000017ba46040"
    )
    assert _v1_image([b"k1", b"key2"], [b"v1", b""], b"\x01\x00c" + struct.pack("<QQB", 7, 3, 1), 1) == (
        written_before
    )
    image = decode(written_before)
    assert dict(image.items()) == {b"k1": b"v1", b"key2": b""}
    assert image.sessions == OrderedDict([(b"c", (7, 3, True))])
    assert image == Image.of({b"k1": b"v1", b"key2": b""}, OrderedDict([(b"c", (7, 3, True))]))


def test_the_image_format_is_pinned() -> None:
    """Replicas of different versions at one index must agree on the bytes: a format change shows here."""
    image = Image.of({b"k1": b"v1", b"key2": b""}, OrderedDict([(b"c", (7, 3, True))]))
    raw = encode(image)
    assert raw.startswith(b"RAFTDKV2" + struct.pack("<IIII", table.BUCKET_BITS, 2, 1, 2))
    assert len(raw) == 8 + 16 + 2 * (4 + 4) + (8 + 2 + 2) + (8 + 4) + (2 + 1 + 17) + 4
    assert hashlib.sha256(raw).hexdigest() == PINNED_IMAGE_SHA256
    assert decode(raw) == image


PINNED_IMAGE_SHA256 = "38556e54fd1e197802467f87519d334c87324c20312a74fcb132d2ea858a4feb"


def test_large_earlier_images_load_across_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_module, "SLICE", 3)
    pairs = {f"key{i}".encode(): f"value{i}".encode() * (i % 3) for i in range(100)}
    image = decode(_v1_image(list(pairs), list(pairs.values())))
    assert dict(image.items()) == pairs
    assert image == Image.of(pairs)  # put in the earlier image's order, as a replica applying them would


def test_large_images_round_trip_across_bucket_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_module, "BUCKET_SLICE", 3)
    kv = _filled(100)
    raw = encode(kv.image())
    restored = KVStore()
    restored.restore(kv.applied, raw)
    assert list(restored.data.items()) == list(kv.data.items())  # the same order, too
    assert restored.sessions == kv.sessions
    assert restored.applied == kv.applied
    assert encode(restored.image()) == raw


def _v2_image(buckets: dict[int, bytes], count: int) -> bytes:
    """A current-format image with hand-made buckets (and a valid checksum), for the load-time checks."""
    used = sorted(buckets)
    n = len(used)
    body = (
        b"RAFTDKV2"
        + struct.pack(
            f"<IIII{n}I{n}I", table.BUCKET_BITS, count, 0, n, *used, *(len(buckets[b]) for b in used)
        )
        + b"".join(buckets[b] for b in used)
    )
    return body + struct.pack("<I", zlib.crc32(body))


def _entry(key: bytes, value: bytes) -> bytes:
    return table.ENTRY.pack(len(key), len(value)) + key + value


def test_a_hand_made_image_loads_when_well_formed() -> None:
    """The control for the refusals below: the helper makes images the loader accepts."""
    a, b = table.bucket_of(b"a"), table.bucket_of(b"b")
    image = decode(_v2_image({a: _entry(b"a", b"1"), b: _entry(b"b", b"2")}, 2))
    assert dict(image.items()) == {b"a": b"1", b"b": b"2"}


@pytest.mark.parametrize(
    ("buckets", "count", "error"),
    [
        ({table.bucket_of(b"a"): _entry(b"a", b"1") * 2}, 2, "duplicate"),
        ({table.bucket_of(b"a") ^ 1: _entry(b"a", b"1")}, 1, "belongs elsewhere"),
        ({table.bucket_of(b"a"): _entry(b"a", b"1")}, 2, "1 keys where the header says 2"),
        ({table.bucket_of(b"a"): _entry(b"a", b"1")[:-1]}, 1, "runs past"),
        ({table.bucket_of(b"a"): _entry(b"a", b"1") + b"\x00"}, 1, "truncated entry header"),
        ({table.bucket_of(b"a"): _entry(b"a", b"1"), 5: b""}, 1, "listed but empty"),
        ({table.N_BUCKETS: _entry(b"a", b"1")}, 1, "out of order or range"),
    ],
)
def test_an_image_that_breaks_the_map_s_rules_is_refused(
    buckets: dict[int, bytes], count: int, error: str
) -> None:
    kv = _filled(10)
    with pytest.raises(ImageError, match=error):
        kv.restore(99, _v2_image(buckets, count))
    assert kv.applied == 10  # a refused image leaves the state as it was


def test_an_image_of_another_bucket_count_is_refused() -> None:
    raw = bytearray(_v2_image({}, 0))
    assert decode(bytes(raw)) == Image.of({})
    raw[8:12] = struct.pack("<I", table.BUCKET_BITS + 1)
    raw[-4:] = struct.pack("<I", zlib.crc32(raw[:-4]))
    with pytest.raises(ImageError, match="buckets"):
        decode(bytes(raw))


def test_an_earlier_image_with_a_key_twice_is_refused() -> None:
    raw = _v1_image([b"a", b"b", b"a"], [b"1", b"2", b"3"])
    kv = _filled(10)
    with pytest.raises(ImageError, match="duplicate"):
        kv.restore(99, raw)
    assert kv.applied == 10


_ops = st.lists(
    st.tuples(
        st.booleans(),
        st.sampled_from([b"a", b"ab", b"b", b"ba", b"aba", b"\x01\x00", b"k"]),
        st.binary(max_size=6),
    ),
    max_size=60,
)


@given(_ops)
def test_the_packed_map_behaves_like_a_dict(ops: list[tuple[bool, bytes, bytes]]) -> None:
    """All keys in one bucket, keys that are parts of other keys and values that hold keys: only a whole
    key at an entry boundary may match."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(table, "bucket_of", lambda key: 0)
        m, model = table.PackedMap(), dict[bytes, bytes]()
        for put, key, value in ops:
            if put:
                m.put(key, value)
                model[key] = value
            else:
                assert m.delete(key) == (model.pop(key, None) is not None)
            assert len(m) == len(model)
            for k in (b"a", b"ab", b"b", b"ba", b"aba", b"\x01\x00", b"k", b"zz"):
                assert m.get(k) == model.get(k)
        assert list(m.items()) == list(model.items())  # updates keep their place: the dict's order


def test_a_length_table_cut_short_is_refused_as_an_image_error() -> None:
    """A table of lengths whose size is not a multiple of 4 (review finding: a bare ValueError escaped)."""
    body = b"RAFTDKV2" + struct.pack("<IIII", table.BUCKET_BITS, 1, 0, 1) + b"\x01\x00"
    with pytest.raises(ImageError, match="truncated length table"):
        decode(body + struct.pack("<I", zlib.crc32(body)))


@pytest.mark.parametrize(
    "sessions",
    [
        b"\x01\x00c" + struct.pack("<QQB", 7, 3, 1) + b"\x01\x00c" + struct.pack("<QQB", 8, 4, 0),
        b"\x01\x00c" + struct.pack("<QQB", 7, 3, 2),
    ],
)
def test_malformed_sessions_are_refused(sessions: bytes) -> None:
    """A client twice, or an "existed" flag that is neither 0 nor 1: such an image would load but not
    encode back to the same bytes."""
    with pytest.raises(ImageError, match="malformed sessions"):
        decode(_v1_image([b"k"], [b"v"], sessions, 2 if sessions.count(b"c") == 2 else 1))


def test_an_image_written_to_a_file_is_never_held_whole(tmp_path: Path) -> None:
    """A node snapshots a million keys (about 40 MB) through encode_to into the image's file: the memory
    it takes meanwhile must not grow with the image, or a snapshot in progress adds the image to RSS."""
    image = Image.of({b"key%07d" % i: b"v" * 16 for i in range(400_000)})
    tracemalloc.start()
    try:
        with (tmp_path / "image").open("wb") as f:
            size = encode_to(image, f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == (tmp_path / "image").stat().st_size and size > 12_000_000
    assert peak < size / 2, f"encoding a {size:,}-byte image to a file took {peak:,} bytes"
    assert (tmp_path / "image").read_bytes() == encode(image)
