"""A pure, deterministic Raft: no I/O, no clock, no threads. See rawnode.RawNode for the entry point."""

from .log import LogError, RaftLog
from .quorum import VoteResult, committed_index, majority, vote_result
from .raft import Config, Raft
from .rawnode import RawNode, Status
from .steps import ReadyIO, Step, handle_ready, ready_steps, run_now
from .types import (
    NONE,
    ConfChange,
    ConfChangeRefused,
    ConfChangeType,
    ConfState,
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
    "ConfChange",
    "ConfChangeRefused",
    "ConfChangeType",
    "ConfState",
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
    "ReadyIO",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Status",
    "Step",
    "VoteResult",
    "committed_index",
    "handle_ready",
    "majority",
    "ready_steps",
    "run_now",
    "vote_result",
]
