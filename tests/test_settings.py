"""The settings objects refuse values that would make a node misbehave rather than start it, and reach where
they are used: every limit from its flag or variable, the peer senders' from the node."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raftd.config import load_cluster
from raftd.consistency import StateHashes
from raftd.core import Message, MsgType
from raftd.identity import Identity
from raftd.node import RaftNode
from raftd.settings import DEFAULTS, MAX_REQUEST_FIELD_BYTES, Limits, Tuning
from raftd.storage import MemoryStorage
from raftd.transport.base import Peer
from raftd.transport.memory import MemoryNetwork
from raftd.transport.peer import PeerClient


@pytest.mark.parametrize("bad", [0, -1, True, "5"])
def test_a_tuning_value_must_be_a_positive_number(bad: object) -> None:
    with pytest.raises(ValueError, match="tick_s must be a positive number"):
        Tuning(tick_s=bad)  # type: ignore[arg-type]


def test_a_limit_of_zero_is_refused_except_where_zero_turns_a_check_off() -> None:
    with pytest.raises(ValueError, match="max_stream_requests must be a positive number, not 0"):
        Limits(max_stream_requests=0)
    assert Limits(corrupt_check_interval_s=0).corrupt_check_interval_s == 0
    assert Limits(auto_compaction_retention=0).auto_compaction_retention == 0  # as docs/operations.md says
    with pytest.raises(ValueError, match="corrupt_check_interval_s must be a positive number"):
        Limits(corrupt_check_interval_s=-1)


def test_a_key_or_value_limit_stays_within_what_clients_take() -> None:
    assert Limits(max_key_bytes=MAX_REQUEST_FIELD_BYTES, max_value_bytes=MAX_REQUEST_FIELD_BYTES)
    for name in ("max_key_bytes", "max_value_bytes"):
        with pytest.raises(ValueError, match=f"{name} is at most {MAX_REQUEST_FIELD_BYTES}, not"):
            Limits(**{name: MAX_REQUEST_FIELD_BYTES + 1})


def test_the_peer_backoff_starts_no_higher_than_it_ends() -> None:
    assert Tuning(peer_backoff_min_s=1.0, peer_backoff_max_s=1.0)
    with pytest.raises(ValueError, match="peer_backoff_min_s"):
        Tuning(peer_backoff_min_s=2.0, peer_backoff_max_s=1.0)


def _flag(field: str) -> str:
    """The raftd flag of a Limits field: stream_write_timeout_s is --stream-write-timeout."""
    return "--" + field.removesuffix("_s").replace("_", "-")


def _other_limits() -> Limits:
    """A value other than the default for every limit, within its bounds."""
    changed: dict[str, Any] = {}
    for field in dataclasses.fields(Limits):
        default = getattr(DEFAULTS, field.name)
        changed[field.name] = default + 0.5 if isinstance(default, float) else default + 1
    return Limits(**changed)


@pytest.mark.parametrize("source", ["flags", "variables"])
def test_every_limit_is_a_flag_and_a_variable_that_reaches_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """What a node runs with: each Limits field from its flag, or from its RAFTD_* variable."""
    from raftd import cli

    served: list[Limits] = []

    async def serve(*args: Any, **kwargs: Any) -> None:
        served.append(args[4])

    monkeypatch.setattr(cli, "serve", serve)
    monkeypatch.setattr(cli.malloc, "tune", lambda: None)
    monkeypatch.setattr(cli.logs, "setup", lambda *args: None)
    conf = tmp_path / "config.conf"
    conf.write_text("0 127.0.0.1 50000\n1 127.0.0.1 50001\n2 127.0.0.1 50002\n")
    wanted = _other_limits()
    args = ["0", "--config", str(conf), "--data-dir", str(tmp_path / "data")]
    for field in dataclasses.fields(Limits):
        flag, value = _flag(field.name), str(getattr(wanted, field.name))
        assert flag in cli.ENV, f"Limits.{field.name} has no flag {flag}"
        if source == "flags":
            args += [flag, value]
        else:
            monkeypatch.setenv(cli.ENV[flag], value)
    assert cli.node.main(args, prog_name="raftd", standalone_mode=False) is None
    assert served == [wanted]


def test_a_peer_s_queue_holds_at_most_max_peer_queue_messages() -> None:
    async def main() -> None:
        limits = Limits(max_peer_queue=3)
        client = PeerClient(2, "127.0.0.1:1", Identity("c"), lambda _peer: None, limits=limits)
        for _ in range(5):  # the sender never runs meanwhile: nothing leaves the queue
            client.send(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1))
        assert client.dropped == 2
        await client.close()

    asyncio.run(main())


def test_the_node_hands_its_settings_to_each_of_its_senders(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "nodes:\n" + "".join(f"  - {{id: {i}, host: 127.0.0.1, port: {1 + i}}}\n" for i in range(3))
    )
    limits, tuning = Limits(max_peer_queue=7), Tuning(peer_write_timeout_s=0.5)
    network = MemoryNetwork()
    made: list[tuple[int, Limits, Tuning]] = []

    def transport(
        peer: int,
        address: str,
        identity: Identity,
        on_unreachable: Callable[[int], None],
        hashes: StateHashes,
        limits: Limits,
        tuning: Tuning,
    ) -> Peer:
        made.append((peer, limits, tuning))
        return network.transport(1)(peer, address, identity, on_unreachable, hashes, limits, tuning)

    async def main() -> None:
        node = RaftNode(load_cluster(conf), 0, MemoryStorage(), limits, transport=transport, tuning=tuning)
        runner = asyncio.get_running_loop().create_task(node.run())
        await asyncio.sleep(0.01)
        await node.stop()
        await runner

    asyncio.run(main())
    assert made == [(2, limits, tuning), (3, limits, tuning)]


@pytest.mark.parametrize(
    ("mode", "retention", "period", "expected"),
    [
        ("revision", "10000", 0.0, (10_000, 0.0)),
        ("revision", "0", 30.0, (0, 30.0)),
        ("periodic", "1h", 0.0, (0, 3600.0)),
        ("periodic", "1h30m", 0.0, (0, 5400.0)),
        ("periodic", "90s", 0.0, (0, 90.0)),
        ("periodic", "2", 0.0, (0, 7200.0)),  # etcd: a bare number is hours
    ],
)
def test_etcd_s_compaction_flags_read_as_etcd_reads_them(
    mode: str, retention: str, period: float, expected: tuple[int, float]
) -> None:
    from raftd.cli import compaction

    assert compaction(mode, retention, period) == expected


@pytest.mark.parametrize(
    ("mode", "retention", "period"),
    [("revision", "1h", 0.0), ("periodic", "soon", 0.0), ("periodic", "-1h", 0.0), ("periodic", "1h", 5.0)],
)
def test_a_compaction_retention_that_does_not_read_is_a_usage_error(
    mode: str, retention: str, period: float
) -> None:
    import click

    from raftd.cli import compaction

    with pytest.raises(click.BadParameter):
        compaction(mode, retention, period)
