"""The only place where core Raft types meet protobuf."""

from __future__ import annotations

from raftd.core import ConfState, Entry, Message, MsgType, Snapshot, SnapshotMeta
from raftd.pb import peer_pb2 as pb

_TO_PB = {t: pb.MsgType.Value(t.name) for t in MsgType if t.name in pb.MsgType.keys()}  # noqa: SIM118 (protobuf enum wrapper)
_FROM_PB = {v: k for k, v in _TO_PB.items()}


class CodecError(ValueError):
    """A peer sent a message we cannot represent: a bug or a foreign sender."""


def message_to_pb(m: Message) -> pb.Message:
    out = pb.Message(
        type=_TO_PB[m.type],
        to=m.to,
        term=m.term,
        log_term=m.log_term,
        index=m.index,
        entries=[pb.Entry(index=e.index, term=e.term, data=e.data) for e in m.entries],
        commit=m.commit,
        reject=m.reject,
        reject_hint=m.reject_hint,
        context=m.context,
    )
    setattr(out, "from", m.frm)  # "from" is a Python keyword
    if m.snapshot is not None:
        s = m.snapshot
        meta = pb.SnapshotMeta(index=s.meta.index, term=s.meta.term)
        if s.meta.conf is not None:
            meta.conf.CopyFrom(pb.ConfState(voters=s.meta.conf.voters, learners=s.meta.conf.learners))
        out.snapshot.CopyFrom(pb.Snapshot(meta=meta, data=s.data))
    return out


def message_from_pb(p: pb.Message) -> Message:
    kind = _FROM_PB.get(p.type)
    if kind is None:
        raise CodecError(f"unknown message type {p.type}")
    snapshot = None
    if p.HasField("snapshot"):
        meta = p.snapshot.meta
        conf = (
            ConfState(tuple(meta.conf.voters), tuple(meta.conf.learners)) if meta.HasField("conf") else None
        )
        snapshot = Snapshot(SnapshotMeta(meta.index, meta.term, conf), p.snapshot.data)
    return Message(
        kind,
        p.to,
        getattr(p, "from"),
        p.term,
        p.log_term,
        p.index,
        tuple(Entry(e.index, e.term, e.data) for e in p.entries),
        p.commit,
        p.reject,
        p.reject_hint,
        p.context,
        snapshot,
    )
