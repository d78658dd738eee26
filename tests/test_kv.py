"""The replicated state machine: command encoding and exactly-once sessions."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftd.kv import Command, CommandError, Image, ImageError, KVStore, Op, decode, encode, verify
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
    cmd = Command(op, key, value, client, seq)
    assert Command.decode(cmd.encode()) == cmd


@pytest.mark.parametrize(
    "data", [b"", b"\x01", Command(Op.PUT, b"k", b"v").encode()[:-1], b"\x09" + b"\x00" * 20]
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


def test_sessions_are_bounded_and_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_SESSIONS", 3)
    replicas = [KVStore(), KVStore()]
    cmds = [Command(Op.PUT, b"k", str(i).encode(), f"c{i % 5}".encode(), i) for i in range(1, 40)]
    for kv in replicas:
        for i, c in enumerate(cmds, start=1):
            kv.apply(i, c)
    assert len(replicas[0].sessions) == 3
    assert replicas[0].sessions == replicas[1].sessions
    assert replicas[0].data == replicas[1].data


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
    assert restored.data == kv.data
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
    assert b"new" not in image.keys
    assert b"changed" not in image.values


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
    image = decode(encode(Image.of(data)))
    assert dict(zip(image.keys, image.values, strict=True)) == data
    assert image.keys == list(data)


def test_the_image_format_is_the_one_earlier_versions_wrote() -> None:
    """Images on disk and in backups from before stay readable, and replicas of mixed versions agree."""
    written_before = bytes.fromhex(
        "52414654444b56310200000001000000020000000400000002000000000000006b316b657932763101006307000000"
        "000000000300000000000000017ba46040"
    )
    image = Image.of({b"k1": b"v1", b"key2": b""}, OrderedDict([(b"c", (7, 3, True))]))
    assert encode(image) == written_before
    assert decode(written_before) == image


def test_large_images_round_trip_across_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_module, "SLICE", 3)
    monkeypatch.setattr(store_module, "SLICE", 3)
    kv = _filled(100)
    raw = encode(kv.image())
    restored = KVStore.from_image(kv.applied, raw)
    assert list(restored.data.items()) == list(kv.data.items())  # the same order, too
    assert restored.sessions == kv.sessions
    assert restored.applied == kv.applied
    assert encode(restored.image()) == raw


def test_an_image_with_a_key_twice_is_refused() -> None:
    raw = encode(Image([b"a", b"b", b"a"], [b"1", b"2", b"3"], OrderedDict()))
    kv = _filled(10)
    with pytest.raises(ImageError, match="duplicate"):
        kv.restore(99, raw)
    assert kv.applied == 10  # a refused image leaves the state as it was
