"""A tiny interpreter for golden interaction scripts (the etcd-io/raft testdata/*.txt idea).

Why: a reviewer can read a whole election or a log repair message by message, and any change in the core's
behaviour shows up as a diff of a text file rather than as a broken assertion deep in a test.

File format
-----------
A script is a sequence of blocks, separated by prose::

    # Lines starting with '#', and blank lines, between blocks are prose: copied through unchanged.
    command arg key=value
    ----
    expected output, one or more lines (never blank)
    <one blank line ends the block>

A command line with no ``----`` after it has no expected output yet; running with ``--rewrite`` fills it in.
Rewriting keeps prose and commands verbatim and replaces every expected output with the actual one, so a
file that passes is exactly a fixed point of rewriting.

Commands (ids are node ids, >= 1)
---------------------------------
``add-nodes N [learners=0] [election=10] [heartbeat=1] [pre-vote=true] [check-quorum=true]
[max-inflight=64] [max-learner-lag=1000] [seed=0]``
    Create nodes 1..N, voters but for the last ``learners``. Each node's Config gets
    ``random.Random(f"{seed}/{id}/{incarnation}")``.
``campaign ID``                       the node starts an election now (pre-vote first if enabled).
``tick ID [N]``                       N ticks (default 1).
``tick-election ID``                  tick until the node's election timer fires once: its randomized
                                      election timeout on a follower/candidate, one check-quorum window on a
                                      leader. Prints how many ticks that took.
``tick-heartbeat ID``                 heartbeat_tick ticks.
``propose ID DATA``                   propose DATA (no spaces) on the node.
``propose-conf-change ID TYPE NODE``  propose a membership change on the node (TYPE: add-learner,
                                      add-voter, remove); it takes effect on each node as that node appends
                                      it, and the command's output ends with each membership that changed
                                      (``conf of ID now: ...``).
``add-node ID from=N``                start a new, empty node ID with node N's current membership (which
                                      must name ID): a node joining after add-learner.
``read-index ID CTX``                 ask the node for a ReadIndex with context CTX.
``transfer-leadership from=ID to=ID`` ask node ``from`` to hand leadership to ``to``.
``process-ready [ID...]``             take each node's Ready, print it, persist hard state and entries to
                                      the node's in-memory disk, queue its messages on the network, apply
                                      its committed entries, advance. No ids: every node.
``deliver-msgs [ID...] [drop=ID,..]`` step every queued message addressed to the ids (no ids and no drop:
                                      all nodes); messages to a ``drop`` id are discarded instead.
``stabilize [ID...]``                 repeat process-ready and deliver-msgs until nothing is left to do.
``isolate ID`` / ``heal``             cut every link to and from ID / restore all links. A message crossing
                                      a cut link is dropped when it would be delivered.
``status [ID...]``                    role, term, vote, lead, commit, applied; a leader's progress table.
``raft-log ID``                       the node's in-memory log.
``restart ID``                        crash the node and rebuild it from its persisted hard state and
                                      entries only (unpersisted entries and unsent messages are lost; the
                                      state machine is rebuilt by re-applying committed entries, and the
                                      membership is read from the log again).

Output notation
---------------
An entry is ``term/index 'data'`` (the leader's no-op has empty data ``''``), as in etcd's testdata.
A message is ``from->to TYPE term=T`` followed by the fields that matter for its type, e.g.
``1->2 APP term=1 log_term=1 index=1 commit=1 entries=[1/2 'x']``. ``log_term``/``index`` on APP are the
entry preceding ``entries``; on VOTE/PRE_VOTE they are the candidate's last entry. A rejected APP_RESP shows
the follower's fast-backtracking hint as ``hint=INDEX hint_term=TERM``. Ready processing is headed
``> ID handling Ready`` (then: soft state, ``hard:``, ``entries:`` to persist, ``committed:`` to apply,
messages, ``read-state:``), delivery ``> ID receiving messages`` (a lost message reads ``dropped: ...``).

Run by tests/core/test_interaction.py (``pytest --rewrite`` regenerates), or directly:
``python -m tests.core.interaction FILE... [--rewrite]``.

After every command the interpreter checks Election Safety (one leader per term, ever) and State Machine
Safety (no two nodes apply different entries at one index) and prints a ``!!! SAFETY`` line on a breach.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from raftd.core import (
    ConfChange,
    ConfChangeRefused,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    HardState,
    LogError,
    Message,
    MsgType,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    SnapshotMeta,
    handle_ready,
    run_now,
)
from raftd.sim.cluster import decode_conf_change, encode_conf_change

SEPARATOR = "----"


class ScriptError(Exception):
    """The script itself is malformed (unknown command, bad argument): a test-authoring mistake."""


# -- formatting -------------------------------------------------------------------------------------


def fmt_data(data: bytes) -> str:
    return repr(data)[1:]


def fmt_entry(e: Entry) -> str:
    return f"{e.term}/{e.index} {fmt_data(e.data)}"


def fmt_entries(entries: list[Entry] | tuple[Entry, ...]) -> str:
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


def fmt_msg(m: Message) -> str:
    t = m.type
    parts = [f"{m.frm}->{m.to}", t.name, f"term={m.term}"]
    if t is MsgType.APP:
        parts += [f"log_term={m.log_term}", f"index={m.index}", f"commit={m.commit}"]
        parts.append(f"entries={fmt_entries(m.entries)}")
    elif t is MsgType.APP_RESP:
        parts.append(f"index={m.index}")
        if m.reject:
            parts += ["rejected", f"hint={m.reject_hint}", f"hint_term={m.log_term}"]
    elif t in (MsgType.VOTE, MsgType.PRE_VOTE):
        parts += [f"log_term={m.log_term}", f"index={m.index}"]
    elif t in (MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP):
        parts.append("rejected" if m.reject else "granted")
    elif t is MsgType.HEARTBEAT:
        parts.append(f"commit={m.commit}")
    elif t is MsgType.HEARTBEAT_RESP:
        parts += [f"index={m.index}", f"commit={m.commit}"]
    elif t is MsgType.READ_INDEX_RESP:
        parts.append(f"index={m.index}")
    elif t is MsgType.SNAP and m.snapshot is not None:
        parts.append(f"snapshot={m.snapshot.meta.term}/{m.snapshot.meta.index}")
    if m.context:
        parts.append(f"ctx={fmt_data(m.context)}")
    return " ".join(parts)


def fmt_conf(conf: ConfState) -> str:
    return f"voters={' '.join(map(str, conf.voters))} learners={' '.join(map(str, conf.learners)) or '-'}"


# -- the simulated cluster --------------------------------------------------------------------------


@dataclass
class Disk:
    """What a node has made durable: all that survives a restart."""

    hard_state: HardState = HardState()
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)

    def append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        self.entries = [e for e in self.entries if e.index < first] + list(entries)


@dataclass
class NodeOptions:
    election: int = 10
    heartbeat: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 64
    max_learner_lag: int = 1000
    seed: int = 0


class _ScriptIO:
    """The golden environment's steps of a Ready (raftd.core.handle_ready): a disk of lists, mailboxes, and
    a record of what each node applied. Installing a snapshot and serving reads do nothing here: the
    transcript shows them, and this environment keeps no state machine."""

    def __init__(self, env: Env, node_id: int) -> None:
        self.env = env
        self.node_id = node_id

    async def persist(self, rd: Ready) -> None:
        self.env.persist(self.node_id, rd)

    async def send(self, rd: Ready) -> None:
        for m in rd.messages:
            if m.to in self.env.inbox:  # a member not started yet (add-node) gets nothing
                self.env.inbox[m.to].append(m)

    async def install(self, rd: Ready) -> None:
        pass

    def apply(self, rd: Ready) -> None:
        for e in rd.committed_entries:
            self.env.apply(self.node_id, e)

    def reads(self, rd: Ready) -> None:
        pass

    def advance(self, rd: Ready) -> None:
        self.env.nodes[self.node_id].advance()


class Env:
    """A cluster of RawNodes on an in-memory network with in-memory disks, driven one command at a time."""

    def __init__(self) -> None:
        self.opts = NodeOptions()
        self.ids: list[int] = []
        self.nodes: dict[int, RawNode] = {}
        self.disks: dict[int, Disk] = {}
        self.incarnation: dict[int, int] = {}
        self.boot_conf: dict[int, ConfState] = {}  # each node's membership when it was created
        self.inbox: dict[int, list[Message]] = {}
        self.isolated: set[int] = set()
        self.applied: dict[int, list[Entry]] = {}
        # Safety bookkeeping across the whole run, restarts included.
        self.leader_of_term: dict[int, int] = {}
        self.applied_at: dict[int, Entry] = {}
        self.out: list[str] = []
        self.commands: dict[str, Callable[[list[str], dict[str, str]], None]] = {
            "add-nodes": self.cmd_add_nodes,
            "campaign": self.cmd_campaign,
            "tick": self.cmd_tick,
            "tick-election": self.cmd_tick_election,
            "tick-heartbeat": self.cmd_tick_heartbeat,
            "propose": self.cmd_propose,
            "propose-conf-change": self.cmd_propose_conf_change,
            "add-node": self.cmd_add_node,
            "read-index": self.cmd_read_index,
            "transfer-leadership": self.cmd_transfer_leadership,
            "process-ready": self.cmd_process_ready,
            "deliver-msgs": self.cmd_deliver_msgs,
            "stabilize": self.cmd_stabilize,
            "isolate": self.cmd_isolate,
            "heal": self.cmd_heal,
            "status": self.cmd_status,
            "raft-log": self.cmd_raft_log,
            "restart": self.cmd_restart,
        }

    # -- driver -------------------------------------------------------------------------------------
    def run(self, line: str) -> list[str]:
        """Execute one command line and return its output lines."""
        words = shlex.split(line)
        name, rest = words[0], words[1:]
        handler = self.commands.get(name)
        if handler is None:
            raise ScriptError(f"unknown command {name!r}")
        args = [w for w in rest if "=" not in w]
        kwargs = dict(w.split("=", 1) for w in rest if "=" in w)
        self.out = []
        confs = {i: n.conf_state() for i, n in self.nodes.items()}
        try:
            handler(args, kwargs)
        except (ProposalDropped, ConfChangeRefused, LogError, ValueError, RuntimeError) as exc:
            self.emit(f"error: {type(exc).__name__}: {exc}")
        for i, n in self.nodes.items():
            if i in confs and n.conf_state() != confs[i]:
                self.emit(f"conf of {i} now: {fmt_conf(n.conf_state())}")
        self.check_safety()
        if not self.out:
            self.emit("ok")
        return self.out

    def emit(self, line: str) -> None:
        assert line.strip(), "output lines must not be blank: a blank line ends a block"
        self.out.append(line)

    def node_ids(self, args: list[str], default_all: bool = True) -> list[int]:
        if not args:
            if default_all:
                return list(self.ids)
            raise ScriptError("expected at least one node id")
        ids = [int(a) for a in args]
        for i in ids:
            if i not in self.nodes:
                raise ScriptError(f"no node {i}")
        return ids

    def one_id(self, args: list[str]) -> int:
        if len(args) != 1:
            raise ScriptError(f"expected exactly one node id, got {args}")
        return self.node_ids(args)[0]

    def config(self, node_id: int) -> Config:
        o = self.opts
        conf = self.boot_conf[node_id]
        return Config(
            id=node_id,
            peers=conf.voters,
            learners=conf.learners,
            rng=random.Random(f"{o.seed}/{node_id}/{self.incarnation[node_id]}"),
            election_tick=o.election,
            heartbeat_tick=o.heartbeat,
            pre_vote=o.pre_vote,
            check_quorum=o.check_quorum,
            max_inflight=o.max_inflight,
            max_learner_lag=o.max_learner_lag,
            conf_change_of=decode_conf_change,
        )

    # -- commands: setup and input ---------------------------------------------------------------------
    def cmd_add_nodes(self, args: list[str], kw: dict[str, str]) -> None:
        if self.nodes:
            raise ScriptError("add-nodes may be used once (a node joins later with add-node)")
        if len(args) != 1:
            raise ScriptError("add-nodes N [learners=K] [key=value...]")
        n = int(args[0])
        learners = int(kw.pop("learners", 0))
        if not 0 <= learners < n:
            raise ScriptError("learners=K: at least one of the N nodes must vote")

        def flag(key: str, default: bool) -> bool:
            value = kw.pop(key, str(default).lower())
            if value not in ("true", "false"):
                raise ScriptError(f"{key} must be true or false")
            return value == "true"

        self.opts = NodeOptions(
            election=int(kw.pop("election", 10)),
            heartbeat=int(kw.pop("heartbeat", 1)),
            pre_vote=flag("pre-vote", True),
            check_quorum=flag("check-quorum", True),
            max_inflight=int(kw.pop("max-inflight", 64)),
            max_learner_lag=int(kw.pop("max-learner-lag", 1000)),
            seed=int(kw.pop("seed", 0)),
        )
        if kw:
            raise ScriptError(f"unknown add-nodes options {sorted(kw)}")
        ids = list(range(1, n + 1))
        conf = ConfState(tuple(ids[: n - learners]), tuple(ids[n - learners :]))
        for i in ids:
            self._create(i, conf)
        o = self.opts
        self.emit(
            f"nodes {' '.join(map(str, self.ids))}: election={o.election} heartbeat={o.heartbeat} "
            f"pre-vote={str(o.pre_vote).lower()} check-quorum={str(o.check_quorum).lower()}"
            + (f" learners={' '.join(map(str, conf.learners))}" if conf.learners else "")
        )

    def _create(self, node_id: int, conf: ConfState) -> None:
        self.ids.append(node_id)
        self.incarnation[node_id] = 0
        self.boot_conf[node_id] = conf
        self.disks[node_id] = Disk()
        self.inbox[node_id] = []
        self.applied[node_id] = []
        self.nodes[node_id] = RawNode(self.config(node_id))

    def cmd_add_node(self, args: list[str], kw: dict[str, str]) -> None:
        if len(args) != 1 or set(kw) != {"from"}:
            raise ScriptError("add-node ID from=N")
        node_id = int(args[0])
        if node_id in self.nodes:
            raise ScriptError(f"node {node_id} exists")
        conf = self.nodes[self.node_ids([kw["from"]])[0]].conf_state()
        if node_id not in conf.voters + conf.learners:
            raise ScriptError(f"node {kw['from']}'s membership does not name {node_id}")
        self._create(node_id, conf)
        self.emit(f"node {node_id}: {fmt_conf(conf)}")

    def cmd_campaign(self, args: list[str], kw: dict[str, str]) -> None:
        self.nodes[self.one_id(args)].campaign()

    def cmd_tick(self, args: list[str], kw: dict[str, str]) -> None:
        if not 1 <= len(args) <= 2:
            raise ScriptError("tick ID [N]")
        node = self.nodes[self.node_ids(args[:1])[0]]
        for _ in range(int(args[1]) if len(args) == 2 else 1):
            node.tick()

    def cmd_tick_election(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.nodes[self.one_id(args)]
        r = node.raft
        if r.role is Role.LEADER:
            n = r.cfg.election_tick - r.election_elapsed
        else:
            n = r.randomized_election_timeout - r.election_elapsed
        n = max(n, 1)
        for _ in range(n):
            node.tick()
        self.emit(f"ok ({n} ticks)")

    def cmd_tick_heartbeat(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.nodes[self.one_id(args)]
        for _ in range(node.raft.cfg.heartbeat_tick):
            node.tick()

    def cmd_propose(self, args: list[str], kw: dict[str, str]) -> None:
        if len(args) != 2:
            raise ScriptError("propose ID DATA")
        index = self.nodes[self.node_ids(args[:1])[0]].propose(args[1].encode())
        self.emit(f"ok index={index}")

    def cmd_propose_conf_change(self, args: list[str], kw: dict[str, str]) -> None:
        if len(args) != 3:
            raise ScriptError("propose-conf-change ID TYPE NODE")
        node = self.nodes[self.node_ids(args[:1])[0]]
        cc = ConfChange(ConfChangeType(args[1]), int(args[2]))
        index = node.propose_conf_change(cc, encode_conf_change(cc))
        self.emit(f"ok index={index}")

    def cmd_read_index(self, args: list[str], kw: dict[str, str]) -> None:
        if len(args) != 2:
            raise ScriptError("read-index ID CTX")
        self.nodes[self.node_ids(args[:1])[0]].read_index(args[1].encode())

    def cmd_transfer_leadership(self, args: list[str], kw: dict[str, str]) -> None:
        if args or set(kw) != {"from", "to"}:
            raise ScriptError("transfer-leadership from=ID to=ID")
        frm, to = self.node_ids([kw["from"], kw["to"]])
        self.nodes[frm].transfer_leader(to)

    # -- commands: Ready and the network -------------------------------------------------------------
    def process_ready(self, node_id: int) -> None:
        node = self.nodes[node_id]
        self.emit(f"> {node_id} handling Ready")
        if not node.has_ready():
            self.emit("  <empty Ready>")
            return
        rd = node.ready()
        if rd.soft_state is not None:
            self.emit(f"  lead={rd.soft_state.lead} role={rd.soft_state.role.value}")
        if rd.hard_state is not None:
            hs = rd.hard_state
            self.emit(f"  hard: term={hs.term} vote={hs.vote} commit={hs.commit}")
        if rd.snapshot is not None:
            self.emit(f"  snapshot: {rd.snapshot.meta.term}/{rd.snapshot.meta.index}")
        if rd.entries:
            self.emit(f"  entries: {fmt_entries(rd.entries)}")
        if rd.committed_entries:
            self.emit(f"  committed: {fmt_entries(rd.committed_entries)}")
        for m in rd.messages:
            self.emit(f"  {fmt_msg(m)}")
        for rs in rd.read_states:
            self.emit(f"  read-state: index={rs.index} ctx={fmt_data(rs.context)}")
        run_now(handle_ready(rd, _ScriptIO(self, node_id)))  # the Ready contract, as every driver follows it

    def persist(self, node_id: int, rd: Ready) -> None:
        disk = self.disks[node_id]
        if rd.hard_state is not None:
            disk.hard_state = rd.hard_state
        if rd.snapshot is not None:
            disk.snapshot = rd.snapshot.meta
            disk.entries = [e for e in disk.entries if e.index > rd.snapshot.meta.index]
        if rd.entries:
            disk.append(rd.entries)

    def apply(self, node_id: int, e: Entry) -> None:
        self.applied[node_id].append(e)
        seen = self.applied_at.setdefault(e.index, e)
        if seen != e:
            self.emit(f"!!! SAFETY: node {node_id} applied {fmt_entry(e)} but {fmt_entry(seen)} was applied")

    def deliver(self, node_id: int, drop: bool) -> None:
        msgs, self.inbox[node_id] = self.inbox[node_id], []
        if not msgs:
            return
        self.emit(f"> {node_id} receiving messages")
        node = self.nodes[node_id]
        for m in msgs:
            if drop or m.frm in self.isolated or m.to in self.isolated:
                self.emit(f"  dropped: {fmt_msg(m)}")
                continue
            self.emit(f"  {fmt_msg(m)}")
            try:
                node.step(m)
            except (LogError, ValueError, AssertionError) as exc:
                self.emit(f"  error: {type(exc).__name__}: {exc}")

    def cmd_process_ready(self, args: list[str], kw: dict[str, str]) -> None:
        for i in self.node_ids(args):
            self.process_ready(i)

    def cmd_deliver_msgs(self, args: list[str], kw: dict[str, str]) -> None:
        drop = self.node_ids(kw.pop("drop").split(",")) if "drop" in kw else []
        if kw:
            raise ScriptError(f"unknown deliver-msgs options {sorted(kw)}")
        targets = self.node_ids(args) if args or not drop else []
        for i in drop:
            self.deliver(i, drop=True)
        for i in targets:
            self.deliver(i, drop=False)
        if not self.out:
            self.emit("no messages")

    def cmd_stabilize(self, args: list[str], kw: dict[str, str]) -> None:
        ids = self.node_ids(args)
        for _ in range(1000):
            busy = False
            for i in ids:
                if self.nodes[i].has_ready():
                    self.process_ready(i)
                    busy = True
            for i in ids:
                if self.inbox[i]:
                    self.deliver(i, drop=False)
                    busy = True
            if not busy:
                return
        raise ScriptError("stabilize did not settle within 1000 rounds")

    def cmd_isolate(self, args: list[str], kw: dict[str, str]) -> None:
        self.isolated.add(self.one_id(args))

    def cmd_heal(self, args: list[str], kw: dict[str, str]) -> None:
        self.isolated.clear()

    # -- commands: inspection and crashes ------------------------------------------------------------
    def cmd_status(self, args: list[str], kw: dict[str, str]) -> None:
        for i in self.node_ids(args):
            r = self.nodes[i].raft
            kind = "" if r.promotable() else " (learner)" if r.id in r.learners else " (not a member)"
            self.emit(
                f"{i}: {r.role.value}{kind} term={r.term} vote={r.vote} "
                f"lead={r.lead} commit={r.log.committed} applied={r.log.applied} last={r.log.last_index()}"
            )
            if r.role is Role.LEADER:
                for p, pr in sorted(r.prs.items()):
                    self.emit(f"  {p}: match={pr.match} next={pr.next} {pr.state.value}")

    def cmd_raft_log(self, args: list[str], kw: dict[str, str]) -> None:
        log = self.nodes[self.one_id(args)].raft.log
        self.emit(f"commit={log.committed} applied={log.applied} last={log.last_index()}")
        for e in log.entries:
            self.emit(f"  {fmt_entry(e)}")

    def cmd_restart(self, args: list[str], kw: dict[str, str]) -> None:
        i = self.one_id(args)
        disk = self.disks[i]
        self.incarnation[i] += 1
        self.applied[i] = []
        self.nodes[i] = RawNode(self.config(i), disk.hard_state, disk.snapshot, disk.entries)
        hs = disk.hard_state
        self.emit(
            f"restarted {i}: term={hs.term} vote={hs.vote} commit={hs.commit} "
            f"entries={fmt_entries(disk.entries)}"
        )

    # -- invariants -----------------------------------------------------------------------------------
    def check_safety(self) -> None:
        for i, node in self.nodes.items():
            r = node.raft
            if r.role is Role.LEADER:
                other = self.leader_of_term.setdefault(r.term, i)
                if other != i:
                    self.emit(f"!!! SAFETY: nodes {other} and {i} both led term {r.term}")


# -- script files ------------------------------------------------------------------------------------


def run_script(text: str, source: str = "<script>") -> str:
    """Run a script and return it with every expected output replaced by the actual output."""
    lines = text.split("\n")
    out: list[str] = []
    env = Env()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            out.append(line)
            i += 1
            continue
        command, i = line, i + 1
        if i < len(lines) and lines[i] == SEPARATOR:
            i += 1
            while i < len(lines) and lines[i] != "":
                i += 1
            i += 1  # the blank line that ends the block
        elif i < len(lines) and lines[i] == "":
            i += 1  # a new command's following blank line becomes its block's terminator
        try:
            produced = env.run(command)
        except ScriptError as exc:
            raise ScriptError(f"{source}: {command!r}: {exc}") from exc
        out += [command, SEPARATOR, *produced, ""]
    result = "\n".join(out)
    return result if result.endswith("\n") else result + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run scripts from the command line: print the result, or rewrite the files in place."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--rewrite", action="store_true")
    ns = parser.parse_args(argv)
    for path in ns.files:
        result = run_script(path.read_text(), str(path))
        if ns.rewrite:
            path.write_text(result)
        else:
            sys.stdout.write(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
