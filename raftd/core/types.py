"""Value types that cross the core's boundary: entries, messages, hard state, Ready."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NONE = 0
"""Node id meaning "nobody": no vote, no known leader. Real node ids are therefore >= 1 inside the core."""


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class MsgType(enum.Enum):
    # Local messages: never sent over the network, only fed to step() by the owner of the node.
    HUP = "hup"
    BEAT = "beat"
    PROP = "prop"
    # Network messages.
    APP = "app"
    APP_RESP = "app-resp"
    VOTE = "vote"
    VOTE_RESP = "vote-resp"
    PRE_VOTE = "pre-vote"
    PRE_VOTE_RESP = "pre-vote-resp"
    SNAP = "snap"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat-resp"
    TRANSFER_LEADER = "transfer-leader"
    TIMEOUT_NOW = "timeout-now"
    READ_INDEX = "read-index"
    READ_INDEX_RESP = "read-index-resp"
    # Local reports from the transport about a follower.
    UNREACHABLE = "unreachable"
    SNAP_STATUS = "snap-status"


LOCAL_MESSAGES = frozenset(
    {MsgType.HUP, MsgType.BEAT, MsgType.PROP, MsgType.UNREACHABLE, MsgType.SNAP_STATUS}
)

CAMPAIGN_TRANSFER = b"campaign-transfer"
"""Vote context marking an election forced by leadership transfer; it overrides the leader lease."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. An entry with empty data is the leader's no-op."""

    index: int
    term: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it leaves the node."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


class ConfChangeType(enum.Enum):
    ADD_LEARNER = "add-learner"
    ADD_VOTER = "add-voter"  # a new voter, or a learner promoted
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change (single-server changes, dissertation 4.1): it travels in a log entry whose data
    the owner encodes (and decodes: Config.conf_change_of), and takes effect on each node as soon as the
    node appends it, committed or not."""

    type: ConfChangeType
    node: int


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership: who votes, and who only receives the log."""

    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    # The membership as of index; None when the owner gave none (then installing it changes no membership).
    conf: ConfState | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine image covering the log up to meta.index; data is opaque to the core."""

    meta: SnapshotMeta = SnapshotMeta()
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Message:
    type: MsgType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting to the owner when it changes; never persisted."""

    lead: int = NONE
    role: Role = Role.FOLLOWER


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read confirmed by a quorum: it may be served once the applied index reaches index."""

    index: int
    context: bytes


@dataclass(slots=True)
class Ready:
    """One batch of work for the owner of a node.

    Ordering contract: persist hard_state, snapshot and entries (one durable transaction) before sending
    messages, then apply committed_entries, then call advance(). Messages may depend on the persisted state
    (a vote, an acknowledgement of entries), so sending first would break Raft's safety. Exception: when
    send_early is set (a leader whose term and vote are already durable), the messages may be sent before
    or while persisting; everything else keeps its order.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    send_early: bool = False

    def is_empty(self) -> bool:
        return not (
            self.soft_state
            or self.hard_state
            or self.entries
            or self.snapshot
            or self.committed_entries
            or self.messages
            or self.read_states
        )


class ProposalDropped(Exception):
    """A proposal the node cannot take now: no leader known, or a leadership transfer under way."""


class ConfChangeRefused(Exception):
    """A membership change the leader will not propose, so it never applies. invalid: the request itself is
    wrong (an unknown or duplicate id); otherwise the moment is (a change pending, a learner far behind,
    a quorum that would be lost), and the same request may succeed later."""

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid
