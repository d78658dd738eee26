"""What a node tells those who watch it, and the original project's log lines as one such watcher.

The loop reports events; it does not format lines. The original project's lines ("I am a leader. Term: 3")
are a compatibility surface people grep for, so they live in one observer, OriginalLines, and the health
service and metrics can watch the same events without touching the loop.
"""

from __future__ import annotations

import logging

from raftd.core import Role

log = logging.getLogger("raftd.node")


class NodeEvents:
    """Every event a node reports, each a no-op here: an observer overrides those it needs."""

    def started(self, term: int) -> None:
        """The node (re)started from its data directory as a follower: at boot, and after a suspension."""

    def became(self, prev: Role, role: Role, term: int) -> None:
        """The node's role changed from prev to role, in term."""

    def voted(self, node_id: int) -> None:
        """The node gave its vote to node_id (a config id) in its current term."""

    def suspending(self, seconds: float) -> None:
        """The node leaves the cluster for seconds (raftctl suspend)."""

    def changed(self) -> None:
        """Anything a client may see of the node's state changed: its role, its leader, suspension, stop."""


class OriginalLines(NodeEvents):
    """The original project's log lines, word for word (its README is our compatibility surface)."""

    def started(self, term: int) -> None:
        log.info("I am a follower. Term: %d", term)

    def became(self, prev: Role, role: Role, term: int) -> None:
        if role is Role.FOLLOWER:
            log.info("I am a follower. Term: %d", term)
        elif role is Role.PRE_CANDIDATE:
            log.info("The leader is dead")
        elif role is Role.CANDIDATE:
            if prev is Role.FOLLOWER:
                log.info("The leader is dead")
            log.info("I am a candidate. Term: %d", term)
        else:
            log.info("Votes received")
            log.info("I am a leader. Term: %d", term)

    def voted(self, node_id: int) -> None:
        log.info("Voted for node %d", node_id)

    def suspending(self, seconds: float) -> None:
        log.info("Sleeping for %s seconds", f"{seconds:g}")
