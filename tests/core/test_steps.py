"""The Ready contract every driver follows (raftd.core.steps): these orders are what keep Raft safe."""

from collections.abc import Generator

import pytest

from raftd.core import (
    Entry,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMeta,
    Step,
    handle_ready,
    ready_steps,
    run_now,
)

APPEND = Message(MsgType.APP, to=2, frm=1, term=1)
ENTRY = Entry(1, 1, b"x")


def test_a_follower_saves_before_it_sends_and_applies_after() -> None:
    rd = Ready(hard_state=HardState(1, 1, 1), entries=[ENTRY], committed_entries=[ENTRY], messages=[APPEND])
    assert ready_steps(rd) == (Step.PERSIST, Step.SEND, Step.APPLY, Step.ADVANCE)


def test_a_leader_sends_early_but_still_applies_after_its_save() -> None:
    rd = Ready(entries=[ENTRY], committed_entries=[ENTRY], messages=[APPEND], send_early=True)
    assert ready_steps(rd) == (Step.SEND, Step.PERSIST, Step.APPLY, Step.ADVANCE)


def test_a_snapshot_is_installed_after_its_save_and_before_later_entries_apply() -> None:
    snap = Snapshot(SnapshotMeta(5, 1), b"")
    rd = Ready(snapshot=snap, committed_entries=[Entry(6, 1, b"")], read_states=[ReadState(6, b"c")])
    assert ready_steps(rd) == (Step.PERSIST, Step.INSTALL, Step.APPLY, Step.READS, Step.ADVANCE)


def test_an_empty_ready_is_still_saved_and_advanced() -> None:
    assert ready_steps(Ready()) == (Step.PERSIST, Step.ADVANCE)


class RecordingIO:
    """A driver that records its steps; one named step may raise, as the simulator's crash does."""

    def __init__(self, fail_at: str = "") -> None:
        self.done: list[str] = []
        self.fail_at = fail_at

    def _do(self, step: str) -> None:
        self.done.append(step)
        if step == self.fail_at:
            raise RuntimeError(f"crashed at {step}")

    async def persist(self, rd: Ready) -> None:
        self._do("persist")

    async def send(self, rd: Ready) -> None:
        self._do("send")

    async def install(self, rd: Ready) -> None:
        self._do("install")

    def apply(self, rd: Ready) -> None:
        self._do("apply")

    def reads(self, rd: Ready) -> None:
        self._do("reads")

    def advance(self, rd: Ready) -> None:
        self._do("advance")


def test_handle_ready_runs_each_step_once_in_the_contract_order() -> None:
    snap = Snapshot(SnapshotMeta(5, 1), b"image")
    rd = Ready(
        messages=[APPEND],
        snapshot=snap,
        committed_entries=[ENTRY],
        read_states=[ReadState(1, b"r")],
        hard_state=HardState(1, 0, 1),
    )
    io = RecordingIO()
    run_now(handle_ready(rd, io))
    assert io.done == [step.value for step in ready_steps(rd)]
    assert io.done == ["persist", "send", "install", "apply", "reads", "advance"]
    early = RecordingIO()
    run_now(handle_ready(Ready(messages=[APPEND], entries=[ENTRY], send_early=True), early))
    assert early.done == ["send", "persist", "advance"]


def test_a_step_that_raises_stops_the_ready_there() -> None:
    """The simulator crashes a node right after its save: nothing is sent, applied or advanced."""
    io = RecordingIO(fail_at="persist")
    with pytest.raises(RuntimeError, match="crashed at persist"):
        run_now(handle_ready(Ready(messages=[APPEND], committed_entries=[ENTRY]), io))
    assert io.done == ["persist"]


class _Waits:
    def __await__(self) -> Generator[None, None, None]:
        yield


def test_run_now_refuses_a_step_that_waits() -> None:
    """A driver without an event loop cannot wait: such a step is a bug, said at once, never a hang."""

    class WaitingIO(RecordingIO):
        async def persist(self, rd: Ready) -> None:
            await _Waits()

    with pytest.raises(RuntimeError, match="waited"):
        run_now(handle_ready(Ready(), WaitingIO()))
