"""The membership record in the replicated state: each member's address, role and incarnation.

The Raft core knows members by id only, and takes a change as soon as it appends it (raftd.core, "Membership
changes" in docs/design.md). What it does not know travels in the same entries and is applied here: where a
member listens, and which data directory (incarnation) holds its id. An empty record means the cluster was
bootstrapped from its map and has not recorded it yet (a cluster of an earlier release, or one whose first
leader has not written it): the map then stands for it.

One entry kind, Op.MEMBER, whose value is a small JSON document: membership changes are rare, and a
readable encoding costs nothing there.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass

from .command import Command, CommandError, Op


class Change(enum.Enum):
    BOOTSTRAP = "bootstrap"  # the map's members, recorded once by the first leader that can
    ADD_LEARNER = "add-learner"
    ADD_VOTER = "add-voter"  # a new voter, or a learner promoted
    REMOVE = "remove"
    UPDATE = "update"  # a member's new address
    INCARNATION = "incarnation"  # a bootstrap member's data directory, learned from its traffic


@dataclass(frozen=True, slots=True)
class Member:
    address: str  # HOST:PORT
    learner: bool = False
    incarnation: str = ""  # "" until known (bootstrap members of a cluster of an earlier release)


@dataclass(frozen=True, slots=True)
class MemberChange:
    """One Op.MEMBER entry. node: the config id changed; members: BOOTSTRAP's whole record."""

    change: Change
    node: int = 0
    address: str = ""
    incarnation: str = ""
    members: tuple[tuple[int, Member], ...] = ()

    def command(self) -> Command:
        doc: dict[str, object] = {"change": self.change.value, "node": self.node}
        if self.address:
            doc["address"] = self.address
        if self.incarnation:
            doc["incarnation"] = self.incarnation
        if self.members:
            doc["members"] = [[i, m.address, m.learner, m.incarnation] for i, m in self.members]
        return Command(Op.MEMBER, b"", json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())

    @classmethod
    def decode(cls, cmd: Command) -> MemberChange:
        """CommandError when the value is not one we write: corrupt data or a foreign writer."""
        try:
            doc = json.loads(cmd.value)
            listed = doc.get("members", ())
            members = tuple(
                (_node_id(i), Member(_text(a), _flag(lr), _text(inc))) for i, a, lr, inc in listed
            )
            return cls(
                Change(doc["change"]),
                _node_id(doc["node"]),
                _text(doc.get("address", "")),
                _text(doc.get("incarnation", "")),
                members,
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CommandError(f"undecodable membership entry: {e}") from e


def _node_id(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**62:
        raise ValueError(f"node id {value!r}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > 300:
        raise ValueError(f"text {str(value)[:40]!r}")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"flag {value!r}")
    return value


def applied(members: Mapping[int, Member], mc: MemberChange) -> dict[int, Member]:
    """The record after one change. Deterministic, and total: the core validated the change when the leader
    proposed it, so a change that no longer fits (a member already gone) changes nothing rather than
    stopping the replicas. Before the bootstrap record nothing is recorded: a record of the changes alone
    would misstate the membership (raftd.node.conf_of), so changes wait for it (the admin API refuses
    them until then)."""
    if mc.change is Change.BOOTSTRAP:
        return dict(members) if members else dict(sorted(mc.members))
    if not members:
        return {}
    out = dict(members)
    old = out.get(mc.node)
    if mc.change is Change.ADD_LEARNER:
        if old is None:
            out[mc.node] = Member(mc.address, True, mc.incarnation)
    elif mc.change is Change.ADD_VOTER:
        if old is None:
            out[mc.node] = Member(mc.address, False, mc.incarnation)
        else:
            out[mc.node] = dataclasses.replace(old, learner=False)
    elif mc.change is Change.REMOVE:
        out.pop(mc.node, None)
    elif mc.change is Change.UPDATE:
        if old is not None:
            out[mc.node] = dataclasses.replace(old, address=mc.address)
    elif old is not None and not old.incarnation:  # INCARNATION: set once, never replaced
        out[mc.node] = dataclasses.replace(old, incarnation=mc.incarnation)
    return dict(sorted(out.items()))


def next_id(current: int, mc: MemberChange) -> int:
    """The lowest id never given to a member, after one change: ids are never reused (a removed member's
    id would otherwise come back with a new data directory and an old one's votes)."""
    ids = [i for i, _ in mc.members] if mc.change is Change.BOOTSTRAP else [mc.node]
    return max(current, *(i + 1 for i in ids)) if ids else current
