"""When a node compacts its log: every N entries, or once the log outweighs the image and a floor."""

from __future__ import annotations

from raftd.settings import TUNING
from raftd.snapshots import snapshot_due

MIN_SNAPSHOT_LOG_BYTES = TUNING.min_snapshot_log_bytes

EVERY = 10_000


def test_the_entry_count_alone_triggers_a_snapshot() -> None:
    assert snapshot_due(EVERY, 0, 10**9, EVERY)
    assert not snapshot_due(EVERY - 1, 0, 0, EVERY)


def test_a_log_heavier_than_a_large_image_triggers_a_snapshot() -> None:
    image = 8 * MIN_SNAPSHOT_LOG_BYTES
    assert not snapshot_due(100, image - 1, image, EVERY)
    assert snapshot_due(100, image, image, EVERY)


def test_a_small_image_is_not_snapshotted_before_the_log_reaches_the_floor() -> None:
    assert not snapshot_due(100, MIN_SNAPSHOT_LOG_BYTES - 1, 1000, EVERY)
    assert snapshot_due(100, MIN_SNAPSHOT_LOG_BYTES, 1000, EVERY)
