"""Hooks that let process-level tests hold the node at a chosen moment instead of relying on timing luck.

Each is an environment variable named RAFTD_TEST_*, read once at start; unset (always, outside tests) they
cost one comparison. They change only when an answer is given, never what is stored or replicated.
"""

from __future__ import annotations

import os

# Seconds a leader holds each write's answer after the write has committed and applied: a test can then
# kill the leader while a follower's forward of that write waits for the answer.
ANSWER_DELAY_S = float(os.environ.get("RAFTD_TEST_ANSWER_DELAY_S", "0") or 0)
