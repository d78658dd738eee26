"""A pure, deterministic Raft: no I/O, no clock, no threads. See rawnode.RawNode for the entry point."""

from .log import LogError, RaftLog
from .quorum import VoteResult, committed_index, majority, vote_result
from .raft import Config, Raft
from .rawnode import RawNode, Status
from .steps import Step, ready_steps
from .types import (
    NONE,
    Entry,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "NONE",
    "Config",
    "Entry",
    "HardState",
    "LogError",
    "Message",
    "MsgType",
    "ProposalDropped",
    "Raft",
    "RaftLog",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Status",
    "Step",
    "VoteResult",
    "committed_index",
    "majority",
    "ready_steps",
    "vote_result",
]
