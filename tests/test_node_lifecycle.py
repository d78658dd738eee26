"""The driver's lifecycle in-process: resuming from a suspension, stopping."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from raftd.core import NONE, Entry, HardState, Message, MsgType, Snapshot, SnapshotMeta
from raftd.errors import TargetUnreachable, Unavailable
from raftd.kv import Command, Image, KVStore, Op, encode
from raftd.node import RaftNode
from raftd.server import _hand_over
from raftd.settings import TUNING
from raftd.storage import PersistedState, SqliteStorage
from tests.nodes import follower, leader, release_node, running


def test_resuming_reloads_the_state_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restoring a large image takes seconds (1M keys: over a second): the loop keeps answering meanwhile.
    Were the load run on the loop, it would block the loop, and the release below would never come."""

    async def main() -> None:
        node = follower(tmp_path)
        started, release = threading.Event(), threading.Event()
        load = node._load

        def slow_load() -> tuple[PersistedState, KVStore]:
            started.set()
            if not release.wait(2):
                raise AssertionError("the load ran on the event loop")
            return load()

        monkeypatch.setattr(node, "_load", slow_load)
        resuming = asyncio.get_running_loop().create_task(node._suspend(0.01))
        while not started.is_set():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # the loop runs while the load waits
        assert not resuming.done() and node.suspended
        with pytest.raises(Unavailable, match="suspended"):
            node.local_read(b"k")
        release.set()
        await asyncio.wait_for(resuming, 5)
        assert not node.suspended
        assert node.local_read(b"k") == (None, 0)
        release_node(node)

    asyncio.run(main())


def test_a_stopping_node_takes_no_more_work_from_the_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() shuts the threads down and the server then closes the database while the loop may be parked
    at an await: the loop must not take another Ready after that (its save would fail like a broken disk,
    and a clean SIGTERM would exit as fatal)."""

    async def main() -> None:
        node = follower(tmp_path)
        saves: list[list[Entry]] = []
        original = node.storage.save

        def save(hs: HardState | None, entries: list[Entry], snapshot: Snapshot | None = None) -> None:
            saves.append(entries)
            original(hs, entries, snapshot)

        monkeypatch.setattr(node.storage, "save", save)
        node.stopping = True
        entry = Entry(1, 1, b"x")
        node.deliver([Message(MsgType.APP, to=1, frm=2, term=1, entries=(entry,))])
        node._take_input()
        assert node.raw.has_ready()
        await node._drain_ready()
        assert saves == [] and node.raw.has_ready()
        release_node(node)

    asyncio.run(main())


def test_a_transfer_to_an_unreachable_node_gives_up_at_once(tmp_path: Path) -> None:
    """When the whole cluster stops at once, the leader's hand-over target is gone: the leader must not
    wait out its deadline (a second at every shutdown) for a transfer that cannot happen, nor go on
    refusing writes for an election timeout after it gave up."""

    async def main() -> None:
        node = follower(tmp_path)
        # Node 0 (core id 1) wins term 2 with node 1's (pre-)vote; nothing runs the loop or sends anything.
        node.raw.campaign()
        for kind in (MsgType.PRE_VOTE_RESP, MsgType.VOTE_RESP):
            await node._drain_ready()
            node.deliver([Message(kind, to=1, frm=2, term=2)])
            node._take_input()
        await node._drain_ready()
        assert node.is_leader()
        target = SimpleNamespace(reachable=True)
        node.peers[3] = target  # type: ignore[assignment]
        transfer = asyncio.get_running_loop().create_task(node.transfer_leader(2))
        await asyncio.sleep(0)
        node._take_input()
        assert node.raw.raft.lead_transferee == 3
        target.reachable = False
        with pytest.raises(Unavailable, match="node 2 is unreachable"):
            await asyncio.wait_for(transfer, 2)
        node._take_input()
        assert node.raw.raft.lead_transferee == NONE
        write = node.propose_nowait(Command(Op.PUT, b"k", b"v"))
        node._take_input()
        assert not write.done() and list(node.pending.waiting) == [2], "the write was taken, not refused"
        release_node(node)

    asyncio.run(main())


def test_a_ready_queues_behind_a_busy_disk_thread_instead_of_stalling_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ready saves run on the loop, but while the disk thread is busy (a snapshot's save, reclaim) a save
    there would hold the storage's lock for tens of ms: the Ready then queues behind it instead."""

    async def main() -> None:
        node = follower(tmp_path)
        savers: list[str] = []
        original = node.storage.save

        def save(hs: HardState | None, entries: list[Entry], snapshot: Snapshot | None = None) -> None:
            savers.append(threading.current_thread().name)
            original(hs, entries, snapshot)

        monkeypatch.setattr(node.storage, "save", save)
        release = threading.Event()
        busy = asyncio.get_running_loop().create_task(node.on_disk(release.wait, 5.0))
        await asyncio.sleep(0)
        node.deliver([Message(MsgType.APP, to=1, frm=2, term=1, entries=(Entry(1, 1, b"x"),))])
        node._take_input()
        drain = asyncio.get_running_loop().create_task(node._drain_ready())
        await asyncio.sleep(0.05)
        assert savers == [] and not drain.done(), "the save waits its turn; the loop runs meanwhile"
        release.set()
        await asyncio.wait_for(drain, 5)
        await busy
        assert savers == ["raftd-disk_0"]
        node.deliver(
            [Message(MsgType.APP, to=1, frm=2, term=1, index=1, log_term=1, entries=(Entry(2, 1, b"y"),))]
        )
        node._take_input()
        await node._drain_ready()
        assert savers[1] == threading.current_thread().name, "with the disk thread idle, saved on the loop"
        assert node.storage.load().entries[-1] == Entry(2, 1, b"y")
        release_node(node)

    asyncio.run(main())


def test_readies_are_saved_on_the_loop_while_an_image_is_read_for_a_follower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a large image to send holds the storage's lock for its row only: the Readies of the same
    time must not queue behind the file read on the disk thread."""

    async def main() -> None:
        node = follower(tmp_path)
        release = threading.Event()

        def slow_load() -> Snapshot | None:
            release.wait(5.0)
            return None

        monkeypatch.setattr(node.storage, "load_snapshot", slow_load)
        sending = asyncio.get_running_loop().create_task(
            node.snapshots.send(SimpleNamespace(), Message(MsgType.SNAP, to=3, frm=1, term=1))  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.01)
        node.deliver([Message(MsgType.APP, to=1, frm=2, term=1, entries=(Entry(1, 1, b"x"),))])
        node._take_input()
        await asyncio.wait_for(node._drain_ready(), 2)
        assert not sending.done(), "the image is still being read"
        assert node.storage.load().entries == [Entry(1, 1, b"x")]
        release.set()
        await asyncio.wait_for(sending, 5)
        assert node.snapshots.reports == [(3, False)]
        release_node(node)

    asyncio.run(main())


def test_stopping_while_a_snapshot_is_being_saved_ends_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() during the save of a leader's snapshot: the loop still installs the image afterwards (on the
    snapshot thread), so stop() must let it finish before it shuts the threads down."""

    async def main() -> None:
        node = follower(tmp_path)
        save = node.storage.save
        saving = threading.Event()

        def slow_save(*args: object) -> None:
            saving.set()
            time.sleep(0.3)
            save(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(node.storage, "save", slow_save)
        runner = asyncio.get_running_loop().create_task(node.run())
        image = encode(Image.of({b"k": b"v"}))
        snap = Snapshot(SnapshotMeta(5, 1), image)
        node.deliver([Message(MsgType.SNAP, to=1, frm=2, term=1, snapshot=snap)])
        while not saving.is_set():  # the loop takes the snapshot in its first Ready
            await asyncio.sleep(0.005)
        await node.stop()
        await asyncio.wait_for(runner, 5)  # ends without an error
        assert node.kv.applied == 5
        node.storage.close()

    asyncio.run(main())


def test_the_loop_keeps_one_timer_while_input_wakes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every wake used to arm a fresh timer and cancel it: under load the event loop's timer heap filled
    with dead entries. The loop now keeps its alarm while the time it wakes for stays the same, re-arms it
    when that time moves, and arms a new one once it has rung."""

    async def main() -> None:
        node = follower(tmp_path)
        loop = asyncio.get_running_loop()
        armed: list[float] = []
        call_at = loop.call_at

        def recording_call_at(
            when: float, callback: Any, *args: object, **kwargs: Any
        ) -> asyncio.TimerHandle:
            if callback == node._ring:
                armed.append(when)
            return call_at(when, callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_at", recording_call_at)
        runner = loop.create_task(node.run())
        await asyncio.sleep(0.02)
        first = len(armed)
        assert first >= 1
        for _ in range(200):  # input keeps waking the loop well within one tick
            node.deliver([])
            await asyncio.sleep(0)
        assert len(armed) - first <= 3, "input woke the loop 200 times; the alarm stayed armed"
        assert node._alarm is not None and not node._alarm.cancelled()
        before = len(armed)
        node._set_alarm(loop.time() + 0.01)  # a sooner wake replaces the alarm
        sooner = node._alarm
        assert sooner is not None and len(armed) == before + 1
        await asyncio.sleep(0.05)  # it rings: the loop wakes and arms the next one
        assert not sooner.cancelled() and node._alarm is not sooner
        assert len(armed) == before + 2 and armed[-1] > sooner.when()
        await node.stop()
        await asyncio.wait_for(runner, 5)
        node.storage.close()

    asyncio.run(main())


async def committed_write(node: RaftNode, key: bytes, value: bytes) -> None:
    """The leader (core id 2) appends one write and commits it; the follower stores and applies it."""
    index = node.raw.raft.log.last_index() + 1
    prev_term = node.raw.raft.log.term(index - 1) or 0
    entry = Entry(index, node.raw.raft.term, Command(Op.PUT, key, value).encode())
    node.deliver(
        [
            Message(
                MsgType.APP,
                to=1,
                frm=2,
                term=node.raw.raft.term,
                index=index - 1,
                log_term=prev_term,
                entries=(entry,),
                commit=index,
            )
        ]
    )
    node._take_input()
    await node._drain_ready()
    assert node.local_read(key) == (value, index)


def test_a_resumed_node_serves_no_read_before_its_stored_log_is_applied(tmp_path: Path) -> None:
    """After a suspension the state machine is rebuilt from the image alone; the log after it comes back
    only as the loop applies it. A local read in between returned None for a key written long before."""

    async def main() -> None:
        node = follower(tmp_path)
        await committed_write(node, b"k", b"v")
        await node._suspend(0.01)  # the loop that would apply the log does not run here
        with pytest.raises(Unavailable, match="applying its stored log"):
            node.local_read(b"k")
        await node._drain_ready()
        assert node.local_read(b"k")[0] == b"v"
        release_node(node)

    asyncio.run(main())


def test_the_loop_applies_the_stored_log_as_soon_as_a_suspension_ends(tmp_path: Path) -> None:
    """Not at its next tick or message: this follower hears nothing for 100 s."""

    async def main() -> None:
        node = follower(tmp_path)
        await committed_write(node, b"k", b"v")
        async with running(node):
            await asyncio.sleep(0.05)
            node.suspend(0.05)
            await asyncio.sleep(0.3)
            assert not node.suspended
            assert node.local_read(b"k")[0] == b"v"

    asyncio.run(main())


def test_a_hand_over_skipped_for_an_unreachable_target_does_not_read_as_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stopping a whole cluster logged "Leadership hand-over failed: node 2 is unreachable" (issue 17)."""

    class Stopping:
        tuning = TUNING  # how long the hand-over may take (shutdown_transfer_s)

        def is_leader(self) -> bool:
            return True

        def best_transfer_target(self) -> int:
            return 2

        async def transfer_leader(self, target: int) -> int:
            raise TargetUnreachable(target)

    caplog.set_level(logging.INFO, logger="raftd")
    asyncio.run(_hand_over(Stopping()))  # type: ignore[arg-type]
    assert caplog.messages == [
        "Handing leadership to node 2 before stopping",
        "Hand-over skipped: node 2 unreachable (the cluster may be stopping)",
    ]


def test_a_node_boots_when_its_snapshot_is_newer_than_its_stored_commit_index(tmp_path: Path) -> None:
    """A local snapshot is saved without the commit index, which waits for the next write: a node that
    stopped in between stored commit 4 beside an image at 5, and its boot refused the state ("persisted
    commit 4 is outside the log [5, 5]"). Found by the simulator of the shipped node."""
    node = follower(tmp_path)
    cluster = node.cluster
    release_node(node)
    storage = SqliteStorage.open(tmp_path / "data", cluster.name, 0)
    storage.save(HardState(term=1, vote=NONE, commit=4), [Entry(i, 1, b"") for i in range(1, 6)])
    kv = KVStore()
    for i in range(1, 6):
        kv.skip(i)
    storage.save(None, [], Snapshot(SnapshotMeta(5, 1), encode(kv.image())))
    storage.close()
    again = RaftNode(cluster, 0, SqliteStorage.open(tmp_path / "data", cluster.name, 0))
    assert again.raw.committed == 5 and again.kv.applied == 5
    release_node(again)


def test_a_halt_stops_the_node_at_once_as_a_crash_would(tmp_path: Path) -> None:
    """halt() is the simulator's crash: the loop, its timer and its background work end wherever they
    wait, nothing queued for a peer leaves, and no caller is answered (a crashed process answers none);
    what was saved stays for the next boot."""

    async def main() -> None:
        node = await leader(tmp_path)
        runner = asyncio.get_running_loop().create_task(node.run())
        await asyncio.sleep(0.02)
        write = node.propose_nowait(Command(Op.PUT, b"k", b"v"))
        await asyncio.sleep(0.02)  # proposed and saved; no follower acknowledges it
        background = set(node._background)
        assert background and not write.done()
        node.halt()
        await asyncio.sleep(0)
        assert runner.cancelled() and all(task.cancelled() for task in background)
        assert node._alarm is None and not write.done()
        assert node.storage.load().entries[-1].data == Command(Op.PUT, b"k", b"v").encode()
        for peer in node.peers.values():
            await peer.close()
        release_node(node)

    asyncio.run(main())
