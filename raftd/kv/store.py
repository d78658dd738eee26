"""The replicated state machine: the multi-version keyspace (raftd.kv.mvcc) that the etcd API and raftd.v1
serve, plus client sessions for exactly-once writes.

raftd.v1's keys lived in a packed map of their own (raftd.kv.table) before the keyspace existed. A store
holds them there until an Op.MERGE entry applies: the leader logs one once every member speaks the
protocol that applies it, so that a rolling upgrade keeps each node able to read the others' snapshots
and every replica moves the keys at the same index, numbering the same revisions."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .command import Command, CommandError, Op
from .image import DEFAULT_SESSION_LIMIT, Image, decode
from .members import Member, MemberChange, applied, next_id
from .mvcc import (
    CompactRequest,
    DeleteRangeRequest,
    Keyspace,
    KeyspaceError,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RequestDecodeError,
    decode_request,
    discard,
    open_file,
    open_memory,
    serialize,
)
from .table import PackedMap

# Sessions kept until an Op.SESSION_LIMIT entry says otherwise. The limit is replicated state, not a
# node's setting: replicas that evicted differently would disagree on which retries apply.
MAX_SESSIONS = DEFAULT_SESSION_LIMIT
MAX_SESSION_LIMIT = 10_000_000  # about 1 GB of sessions: beyond, a typo rather than a choice


@dataclass(frozen=True, slots=True)
class Result:
    index: int  # the log index the command took effect at (the first one, for a retried write)
    existed: bool  # for DELETE: whether the key was there
    # Refused, not applied: a write that is not its client's first, from a client whose session this store
    # does not hold (expired, evicted, or never made). Its earlier attempts may have applied.
    expired: bool = False
    # Op.MVCC: the keyspace's answer (an mvcc result, or the KeyspaceError that refused the request, which
    # then wrote nothing) and its revision after the request.
    answer: object = None
    revision: int = 0


class StateMachine(Protocol):
    """What a node needs of the state it replicates (raftd.node, raftd.snapshots). KVStore is the one the
    daemon and the simulator run; a node takes a factory for it, as it takes its storage and transport."""

    applied: int  # the index of the last entry applied
    session_limit: int  # exactly-once sessions kept (an Op.SESSION_LIMIT entry sets it)
    members: dict[int, Member]  # the membership record (raftd.kv.members); empty: the cluster map's
    next_member_id: int  # the lowest id never given to a member
    keyspace: Keyspace  # the etcd API's keys (raftd.kv.mvcc), read by the services between applies

    def apply(self, index: int, cmd: Command) -> Result: ...

    @property
    def merged(self) -> bool:
        """raftd.v1's keys are in the keyspace (Op.MERGE applied)."""

    def skip(self, index: int) -> None:
        """An entry with no command (a new leader's empty entry) was applied."""

    def discard(self) -> None:
        """The node replaced this state with another: let go of what it holds on disk."""

    def get(self, key: bytes) -> bytes | None: ...

    def image(self) -> Image:
        """A copy of the state to encode off the loop (a snapshot, a backup, a hash)."""

    def restore(self, index: int, raw: bytes) -> None:
        """Replace the whole state with an encoded image taken at index; ImageError when it is corrupt."""


class KVStore:
    """Deterministic: every replica applying the same entries reaches the same state and results."""

    def __init__(self, directory: Path | None = None) -> None:
        """directory: where the keyspace's file goes (mvcc.open_file); None keeps it in memory."""
        self.directory = directory
        self.data: PackedMap | None = PackedMap()  # None once merged into the keyspace
        # Dissertation 6.3: the last (seq, result) per client, so a retried write applies once. Bounded,
        # evicting the least recently used client; eviction depends only on the log, so replicas agree.
        self.sessions: OrderedDict[bytes, tuple[int, Result]] = OrderedDict()
        self.session_limit = MAX_SESSIONS
        self.members: dict[int, Member] = {}
        self.next_member_id = 0
        self.keyspace = self._open()
        self.applied = 0

    def _open(self, serialized: bytes = b"") -> Keyspace:
        if self.directory is None:
            return open_memory(serialized)
        return open_file(self.directory / f"keyspace-{uuid.uuid4().hex}.db", serialized)

    def discard(self) -> None:
        """This store was replaced: its keyspace's file goes (mvcc.discard)."""
        discard(self.keyspace)

    def apply(self, index: int, cmd: Command) -> Result:
        self.applied = index
        if cmd.op is Op.CLUSTER_ID or cmd.op is Op.HASH_CHECK:
            return Result(index, existed=False)
        if cmd.op is Op.SESSION_LIMIT:
            self.session_limit = parse_limit(cmd.value)
            self._evict()
            return Result(index, existed=False)
        if cmd.op is Op.MEMBER:
            mc = MemberChange.decode(cmd)
            self.members = applied(self.members, mc)
            if self.members:
                self.next_member_id = next_id(self.next_member_id, mc)
            return Result(index, existed=False)
        if cmd.op is Op.MVCC:
            return self._mvcc(index, cmd.value)
        if cmd.op is Op.MERGE:
            self.merge()
            return Result(index, existed=False, revision=self.keyspace.revision)
        if cmd.client_id:
            seen = self.sessions.get(cmd.client_id)
            if seen is not None and cmd.seq <= seen[0]:
                self.sessions.move_to_end(cmd.client_id)
                return seen[1]
            if seen is None and cmd.first is False:
                # Dissertation 6.3: applying it could apply a retried write twice (its session is gone).
                return Result(index, existed=False, expired=True)
        if self.data is None:
            result = self._keyspace_write(index, cmd)
        elif cmd.op is Op.PUT:
            self.data.put(cmd.key, cmd.value)
            result = Result(index, existed=True)
        else:
            result = Result(index, existed=self.data.delete(cmd.key))
        if cmd.client_id:
            self.sessions[cmd.client_id] = (cmd.seq, result)
            self.sessions.move_to_end(cmd.client_id)
            self._evict()
        return result

    def _keyspace_write(self, index: int, cmd: Command) -> Result:
        """A raftd.v1 write once merged: a put or a delete of one key, as etcd's (a revision each)."""
        ks = self.keyspace
        if cmd.op is Op.PUT:
            ks.put(PutRequest(cmd.key, cmd.value))
            return Result(index, existed=True, revision=ks.revision)
        deleted = ks.delete_range(DeleteRangeRequest(cmd.key)).deleted
        return Result(index, existed=deleted > 0, revision=ks.revision)

    @property
    def merged(self) -> bool:
        return self.data is None

    def merge(self) -> None:
        """Move raftd.v1's keys into the keyspace at one revision, in the packed map's order (the same on
        every replica); a no-op once done."""
        if self.data is not None:
            self.keyspace.merge(self.data.items())
            self.data = None

    def _mvcc(self, index: int, raw: bytes) -> Result:
        """A keyspace write. A refusal (KeyspaceError) is deterministic, so every replica refuses it alike
        and writes nothing; it is the caller's answer, not a damaged entry."""
        try:
            request = decode_request(raw)
        except RequestDecodeError as e:
            raise CommandError(str(e)) from None
        ks = self.keyspace
        answer: object
        try:
            if isinstance(request, CompactRequest):
                ks.compact(request.revision)
                answer = None
            elif isinstance(request, LeaseGrantRequest):
                ks.grant(request)
                answer = request
            elif isinstance(request, LeaseRevokeRequest):
                answer = ks.revoke(request)
            elif isinstance(request, PutRequest):
                answer = ks.put(request)
            elif isinstance(request, DeleteRangeRequest):
                answer = ks.delete_range(request)
            else:
                answer = ks.txn(request)
        except KeyspaceError as e:
            answer = e
        return Result(index, existed=False, answer=answer, revision=ks.revision)

    def _evict(self) -> None:
        while len(self.sessions) > self.session_limit:
            self.sessions.popitem(last=False)

    def skip(self, index: int) -> None:
        """A no-op entry: nothing changes but the applied index."""
        self.applied = index

    def get(self, key: bytes) -> bytes | None:
        if self.data is not None:
            return self.data.get(key)
        kv = self.keyspace.get(key)
        return None if kv is None else kv.value

    def image(self) -> Image:
        """A copy of the state, cheap to take here (a list of bucket references) and encoded elsewhere."""
        sessions = OrderedDict((c, (seq, r.index, r.existed)) for c, (seq, r) in self.sessions.items())
        members = dict(self.members)
        data = PackedMap() if self.data is None else self.data
        return Image(
            list(data.buckets),
            data.count,
            sessions,
            self.session_limit,
            members,
            self.next_member_id,
            serialize(self.keyspace, always=self.merged),
            self.merged,
        )

    def restore(self, index: int, raw: bytes) -> None:
        """Replace the whole state with a snapshot image taken at index. Raises ImageError when corrupt.
        Decoding a large image and building its map take a while: call this off the event loop."""
        image = decode(raw)
        self.data = None if image.merged else PackedMap(image.buckets, image.count)
        self.sessions = OrderedDict((c, (seq, Result(i, e))) for c, (seq, i, e) in image.sessions.items())
        self.session_limit = image.session_limit
        self.members = dict(image.members)
        self.next_member_id = image.next_member_id
        # The old keyspace's connection closes once unreferenced: a service may be reading it right now.
        assert isinstance(image.keyspace, bytes)  # decode() gives serialize()'s bytes
        old, self.keyspace = self.keyspace, self._open(image.keyspace)
        discard(old)
        self.applied = index


def parse_limit(raw: bytes) -> int:
    """A SESSION_LIMIT entry's value; a malformed one (no writer of ours makes it) is a corrupt entry."""
    if not raw.isdigit() or not 0 < int(raw) <= MAX_SESSION_LIMIT:
        raise CommandError(f"session limit {raw[:20]!r} is not a number of sessions")
    return int(raw)
