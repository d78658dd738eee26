"""The replicated state machine: command encoding and exactly-once sessions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftd.kv import Command, CommandError, KVStore, Op
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
