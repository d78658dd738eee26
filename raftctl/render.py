"""Text output shared by the one-shot commands and the shell, so both print the same lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raftctl.client import Leader, NodeStatus
from raftd.pb import kv_pb2 as pb

STATUS_COLUMNS = (
    "ID",
    "ADDRESS",
    "ROLE",
    "TERM",
    "LEADER",
    "COMMIT",
    "APPLIED",
    "LAST INDEX",
    "HEALTH",
    "REACHABLE",
    "ALARMS",
)


def leader_line(leader: Leader) -> str:
    """The original client's getleader line: "ID HOST:PORT"."""
    return f"{leader.id} {leader.address}"


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def status_row(row: NodeStatus, ids: Mapping[str, int]) -> list[str]:
    """A row per endpoint; an unreachable node keeps its id when the cluster map names it."""
    node_id = row.id if row.id is not None else ids.get(row.endpoint)
    return [
        _cell(node_id),
        row.endpoint,
        _cell(row.role),
        _cell(row.term),
        _cell(row.leader_id),
        _cell(row.commit_index),
        _cell(row.applied_index),
        _cell(row.last_log_index),
        _cell(row.health),
        "yes" if row.reachable else "no",
        ",".join(sorted({a.split(":")[0] for a in row.alarms})) or "-",
    ]


def status_table(rows: list[NodeStatus], ids: Mapping[str, int]) -> str:
    """A boxed table in the manner of `etcdctl endpoint status -w table`."""
    body = [status_row(r, ids) for r in rows]
    widths = [max(len(line[i]) for line in [list(STATUS_COLUMNS), *body]) for i in range(len(STATUS_COLUMNS))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True)) + "|"

    return "\n".join([rule, line(list(STATUS_COLUMNS)), rule, *(line(b) for b in body), rule])


def status_json(rows: list[NodeStatus], ids: Mapping[str, int]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d = r.to_dict()
        if d["id"] is None:
            d["id"] = ids.get(r.endpoint)
        out.append(d)
    return out


def alarm_lines(rows: list[NodeStatus]) -> list[str]:
    """One line per alarm a node raised, naming the node: what `status` prints under its table."""
    return [f"{r.endpoint}: {alarm}" for r in rows for alarm in r.alarms]


def unreachable_summary(rows: list[NodeStatus]) -> str | None:
    """One line naming every endpoint that did not answer, or None when all did."""
    down = [r for r in rows if not r.reachable]
    if not down:
        return None
    details = "; ".join(f"{r.endpoint}: {r.error}" for r in down)
    return f"{len(down)} of {len(rows)} endpoints unreachable ({details})"


def _role(m: pb.Member) -> str:
    return "learner" if m.learner else "voter"


def member_doc(m: pb.Member) -> dict[str, object]:
    return {
        "id": m.id,
        "address": m.address,
        "role": _role(m),
        "incarnation": m.incarnation or None,
        "match_index": m.match_index,
    }


def change_doc(r: pb.MemberChangeResponse) -> dict[str, object]:
    """The JSON of a change's answer: the member changed, and the members after it."""
    return {"member": member_doc(r.member), "members": [member_doc(m) for m in r.members]}


def change_line(verb: str, r: pb.MemberChangeResponse, endpoints: list[str]) -> str:
    """What `member VERB` prints; an added node's line says how to start it."""
    m = r.member
    if verb == "add":
        return (
            f"Added node {m.id} at {m.address} as a learner. Start it with:\n"
            f"  raftd {m.id} --join {','.join(endpoints)}"
        )
    if verb == "promote":
        return f"Promoted node {m.id} to voter"
    if verb == "remove":
        return f"Removed node {m.id}"
    return f"Updated node {m.id}: {m.address}"


def members_table(members: list[pb.Member], leader_id: int) -> str:
    rows = [["ID", "ADDRESS", "ROLE", "MATCH", "INCARNATION"]]
    for m in members:
        role = _role(m) + (" (leader)" if m.id == leader_id else "")
        rows.append([str(m.id), m.address, role, str(m.match_index), m.incarnation or "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
