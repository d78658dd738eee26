"""The Ready contract every driver follows (raftd.core.steps): these orders are what keep Raft safe."""

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
    ready_steps,
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
