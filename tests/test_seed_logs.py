"""The original API's log lines never amplify input (issue 19): a refused 10 MB SetVal logged 20 MB."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from raftd.api.seed import LOG_TEXT_CHARS, clip
from raftd.pb import raft_pb2
from tests.nodes import leader
from tests.test_outcomes import Served


def test_short_text_is_printed_as_the_original_did() -> None:
    assert clip("k") == "k" and clip("hello world") == "hello world" and clip("ключ") == "ключ"


def test_long_text_is_cut_with_its_length_and_control_characters_escaped() -> None:
    assert clip("x" * 1000) == "x" * LOG_TEXT_CHARS + "... (1000 characters)"
    assert clip("a\nI am a leader. Term: 99") == "a\\nI am a leader. Term: 99"
    assert "\n" not in clip("\n" * 500) and len(clip("\n" * 500)) < 300


def test_a_huge_refused_setval_logs_a_line_of_bounded_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="raftd")

    async def main() -> None:
        node = await leader(tmp_path)
        async with Served(node) as served:
            big = "v" * (3 * 1024 * 1024)  # over the 1 MiB limit, under this test server's 4 MiB messages
            reply = await served.seed.SetVal(raft_pb2.SetValRequest(key="k", value=big), timeout=30)
            assert reply.verdict is False  # refused, never applied
        node.storage.close()

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "setval" in r.getMessage()]
    assert lines and all(len(line) < 200 for line in lines), [line[:120] for line in lines]
