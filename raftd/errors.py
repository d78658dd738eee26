"""What a request to the node can fail with, and what each failure promises about a write.

The rule, for every API: a refusal (Unavailable, NotLeader) means the write never applies; OutcomeUnknown
means it may have applied. SessionExpired is a refusal of this attempt that cannot speak for the write's
earlier attempts, so clients report it as unknown too. raftd.pending fails requests by this rule; the
services map these to gRPC statuses and the raftd-outcome trailer (raftd.api.common).
"""

from __future__ import annotations

from raftd.config import NodeAddr


class Unavailable(Exception):
    """The request was refused before it was proposed (no leader, suspended, stopping): a write failed with
    it has not applied and never will. Safe to retry."""


class LeaderChanging(Unavailable):
    """No leader is known, or the leader changed under a read: refused, and worth retrying once a leader
    is known (unary reads do so within the call's deadline, as etcd's server does)."""


class OutcomeUnknown(Unavailable):
    """The write was proposed, but this node can no longer tell whether it commits: it may have applied,
    or may still apply (suspended, stopped or deposed with it in the log)."""


class NotCapable(Unavailable):
    """Refused before it was proposed: a member runs an earlier release that could not apply the entry
    (a rolling upgrade in progress)."""


class SessionExpired(Exception):
    """A write refused when it reached the state machine: not its client's first, and the cluster holds no
    session for that client any more (evicted: raftd --max-sessions). It never applies; an earlier attempt
    of it may have."""

    def __init__(self) -> None:
        super().__init__("session expired; the write may have applied")


class TargetUnreachable(Unavailable):
    """A leadership transfer given up because its target is unreachable (stopped, partitioned)."""

    def __init__(self, target: int) -> None:
        super().__init__(f"node {target} is unreachable")
        self.target = target


class NotLeader(Exception):
    """This node does not lead; leader is where to send the request (None when unknown)."""

    def __init__(self, leader: NodeAddr | None) -> None:
        super().__init__(f"not the leader; leader is {leader.address if leader else 'unknown'}")
        self.leader = leader


class FatalError(Exception):
    """The node cannot go on safely (its disk failed); it must stop."""


# Why a peer refuses a node's traffic for good (raftd.node.RaftNode.peer_refusal): the refused node stops.
REMOVED = "removed from the cluster"
WRONG_INCARNATION = "this id belongs to another data directory; rejoin under a new id"


class Removed(Exception):
    """This node was removed from the cluster: it stops with exit status 0, and stays out when restarted
    (its data directory records it), rather than restarting in a loop."""

    def __init__(self) -> None:
        super().__init__(REMOVED)
