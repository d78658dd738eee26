"""The simulator that runs the node that ships (issue 18): three `RaftNode`s, as the daemon runs them,
on a virtual-time event loop, with the in-memory transport and storage twins in place of gRPC and sqlite.

raftd/sim/cluster.py simulates the core under a driver of its own; this one drives raftd.node's loop,
with its proposal gathering, commit-only deferral, ReadIndex rounds, sessions and snapshots. Time is
virtual (the loop jumps to its next timer when nothing is ready), and every random choice comes from the
seed, so a seed replays (within one Python hash seed: run with PYTHONHASHSEED=0, as `python -m raftd.sim
--real` does).

Faults: messages dropped, duplicated and delayed; nodes cut off and healed; nodes crashed (RaftNode.halt:
their loop cancelled wherever it waits, what they saved kept), some of them right after a save, before
anything that follows it (the messages that depend on it) runs, and restarted from their storage; nodes
suspended and leadership handed over, through the node methods that the Suspend and TransferLeader calls
use; on some seeds a slow disk, whose saves block the loop (a save on the loop's thread) or finish later (a
job on the disk's thread). Clients put and read through the node's own API; some puts carry an
exactly-once session and are retried, as raftctl retries them, while their outcome is unknown; a write a
node took and then refused is read back. Checks: election safety, state machine safety (every node
applies the same entry at an index), exactly-once (no session write changes a node's state machine twice),
linearizability of the clients' puts and reads (raftd.testing.linearizability), and progress once the
faults stop.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import random
import selectors
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from raftd.config import load_cluster
from raftd.core import Entry, HardState, Role, Snapshot, SnapshotMeta
from raftd.errors import NotLeader, OutcomeUnknown, SessionExpired, Unavailable
from raftd.kv import Command, CommandError, KVStore, Op
from raftd.node import RaftNode, to_core
from raftd.settings import Limits
from raftd.storage import MemoryStorage
from raftd.testing.history import Op as HistoryOp
from raftd.testing.linearizability import check
from raftd.transport.memory import MemoryNetwork

from .checker import Violation

T = TypeVar("T")
NODES = 3
KEYS = ("a", "b", "c")
TURN_S = 20e-6  # what one turn of the event loop costs, in virtual time


class _VirtualSelector(selectors.BaseSelector):
    """Nothing is ever ready: select() moves the loop's clock on to the timeout instead of sleeping."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(
            fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data
        )
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Violation("deadlock: no timer is armed and nothing is ready")
        # Each turn of the loop costs some time, as it does on a real machine: a driver that spins without
        # waiting (a timer armed for now, again and again) still lets time, and so timeouts, move on.
        self._loop.now += max(TURN_S, timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self.now


class InlineExecutor(Executor):
    """Runs the work at once, on the loop's thread: the snapshot encoder, as fast as the simulator says."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:
            future.set_exception(e)
        return future


@dataclass
class Params:
    seconds: float = 6.0  # of virtual time with faults, then as long again without
    drop: float = 0.05
    duplicate: float = 0.02
    max_delay_s: float = 0.03
    # Faults of each kind come once per so many seconds on average (math.inf: never).
    cut_every_s: float = 1.0  # a node cut off (or the cut healed)
    crash_every_s: float = 1.5  # a node crashed (restarted 0.2 - 1 s later)
    suspend_every_s: float = 3.0  # a node suspended (RaftNode.suspend, as the Suspend RPC does)
    suspend_s: tuple[float, float] = (0.2, 1.5)  # for how long (the RPC takes whole seconds: runs are short)
    transfer_every_s: float = 3.0  # the leader asked to hand over (RaftNode.transfer_leader)
    # Of those crashes, the share that waits for the node's next save and lands right after it (or after
    # SAVE_CRASH_WAIT_S, if no save comes).
    crash_after_save: float = 0.5
    clients: int = 3
    op_timeout_s: float = 1.0
    session_share: float = 0.5  # of the puts, those that carry an exactly-once session
    new_session: float = 0.1  # the chance that a session write starts a new session (a first write)
    session_attempts: int = 6  # a session write's attempts, at most (raftctl retries within a deadline)
    snapshot_entries: int = 40  # compact often: followers that were away catch up by snapshot
    slow_disks: float = 0.5  # the share of seeds whose disks are slow
    save_s: tuple[float, float] = (0.0005, 0.005)  # what a slow disk's job takes
    stall: float = 0.01  # the chance that a slow disk's job stalls instead
    stall_s: tuple[float, float] = (0.02, 0.15)


SAVE_CRASH_WAIT_S = 0.3


class SimStorage(MemoryStorage):
    """MemoryStorage on a simulated disk: a save takes virtual time on a slow disk, and may be the last
    thing a node does (an armed crash).

    A save on the loop's thread (RaftNode._persist saves there when it is not busy) blocks the loop for as
    long as the disk takes, as fsync does: the loop's clock jumps. A save that the disk's thread runs
    (DiskExecutor) takes its time there instead, and the loop goes on meanwhile.
    """

    def __init__(self, rng: random.Random, params: Params, slow: bool) -> None:
        super().__init__()
        self.rng = rng
        self.params = params
        self.slow = slow
        self.on_disk_thread = False  # within a DiskExecutor job
        # Called right after the next save, by which it crashes the node: the save is durable, and the
        # CancelledError it raises stops the node's code before the messages that wait for the save leave.
        self.after_save: Callable[[], None] | None = None

    def job_time(self) -> float:
        """How long the disk takes over its next job (0 on a fast disk)."""
        if not self.slow:
            return 0.0
        p = self.params
        return self.rng.uniform(*(p.stall_s if self.rng.random() < p.stall else p.save_s))

    def save(
        self,
        hard_state: HardState | None,
        entries: list[Entry],
        snapshot: Snapshot | SnapshotMeta | None = None,
    ) -> None:
        super().save(hard_state, entries, snapshot)
        if not self.on_disk_thread:
            took = self.job_time()
            if took:
                loop = asyncio.get_running_loop()
                assert isinstance(loop, VirtualLoop)
                loop.now += took
        crash, self.after_save = self.after_save, None
        if crash is not None:
            crash()


class DiskExecutor(Executor):
    """The disk's thread: jobs run one at a time, in order, each after its virtual time on a slow disk (at
    once on a fast one), while the loop goes on. A crashed node's queued jobs never run."""

    def __init__(self, storage: SimStorage) -> None:
        self.storage = storage
        self._free_at = 0.0  # when the job queued last is done
        self.dead = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        loop = asyncio.get_running_loop()
        took = self.storage.job_time()
        if not took and self._free_at <= loop.time():
            self._run(future, functools.partial(fn, *args, **kwargs))
        else:
            self._free_at = max(self._free_at, loop.time()) + took
            loop.call_at(self._free_at, self._run, future, functools.partial(fn, *args, **kwargs))
        return future

    def _run(self, future: Future[T], job: Callable[[], T]) -> None:
        # A job whose waiter gave up while it queued (the node stopped) is skipped, as a thread pool skips
        # it; setting its result would raise.
        if self.dead or future.cancelled():
            future.cancel()
            return
        self.storage.on_disk_thread = True
        try:
            result = job()
        except asyncio.CancelledError:
            future.cancel()  # the node crashed right after this job's save
        except BaseException as e:
            future.set_exception(e)
        else:
            future.set_result(result)
        finally:
            self.storage.on_disk_thread = False


class SimNetwork(MemoryNetwork):
    def __init__(self, rng: random.Random, params: Params) -> None:
        super().__init__()
        self.rng = rng
        self.params = params
        self.faulty = True

    def copies(self, frm: int, to: int) -> list[float]:
        if not self.reaches(frm, to):
            return []
        if not self.faulty:
            return [0.0]
        p = self.params
        if self.rng.random() < p.drop:
            return []
        n = 2 if self.rng.random() < p.duplicate else 1
        return [self.rng.uniform(0.0, p.max_delay_s) for _ in range(n)]


@dataclass
class Checks:
    leaders: dict[int, int] = field(default_factory=dict)  # term -> its leader's node id
    applied: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # index -> (term, data)

    def observe_leader(self, node: int, term: int) -> None:
        seen = self.leaders.setdefault(term, node)
        if seen != node:
            raise Violation(f"election safety: nodes {seen} and {node} both lead term {term}")

    def observe_apply(self, node: int, e: Entry) -> None:
        seen = self.applied.setdefault(e.index, (e.term, e.data))
        if seen != (e.term, e.data):
            raise Violation(
                f"state machine safety: node {node} applied {e.index}/{e.term}, another applied "
                f"{e.index}/{seen[0]}"
            )


@dataclass
class _Lineage:
    """One state machine of one node: a store and what was applied into it since it was made."""

    kv: KVStore
    # The highest seq per client in the image the store started from (its session table then): every
    # write of the client up to it has taken effect already, or never will.
    floor: dict[bytes, int]
    took_effect: set[tuple[bytes, int]] = field(default_factory=set)
    last: int = 0  # the index of the last entry handed to the store
    # The last session write handed to the store: (command, index, the key's value before it applied).
    pending: tuple[Command, int, bytes | None] | None = None


class ExactlyOnce:
    """No session write (client_id, seq) changes a node's state machine twice: a retried write applies once.

    A client retries a write whose outcome is unknown with the same (client_id, seq), so the log may hold
    it several times, and the store must answer all but the first from its session table. The checker
    sees each entry just before the node applies it (RaftNode.on_apply) and looks at the store again just
    before the node's next entry (or at the end of the run): the store's state then is the state right
    after that write, since nothing else touches a store between two entries. The write took effect if
    its key now holds its value and did not before (values are unique to a write, and a retry carries its
    value), or if the session table now names this entry's index as the write's result (a duplicate is
    answered with the first attempt's index). Taking effect twice in one store, or at all when the image
    it started from already held a later or equal seq for the client, is a double apply. The store is
    followed per state machine: a restart or an installed snapshot makes a new one, whose starting image
    says what applied before it.
    """

    def __init__(self) -> None:
        self.lineages: dict[int, _Lineage] = {}  # node id -> its current state machine
        self.deduplicated = 0  # session entries applied after an earlier attempt took effect

    def observe(self, node: int, kv: KVStore, e: Entry) -> None:
        """e is about to be applied into kv, the node's store."""
        lineage = self.lineages.get(node)
        if lineage is not None:
            self._settle(node, lineage)
        if lineage is None or lineage.kv is not kv or e.index != lineage.last + 1:
            # A new store, or one restored from an image in place: what applied before it is in its image.
            floor = {client: seq for client, (seq, _) in kv.sessions.items()}
            lineage = self.lineages[node] = _Lineage(kv, floor)
        lineage.last = e.index
        try:
            cmd = Command.decode(e.data) if e.data else None
        except CommandError:
            return  # the node stops on it (a Violation of its own)
        if cmd is not None and cmd.client_id and cmd.op is Op.PUT:
            lineage.pending = (cmd, e.index, kv.get(cmd.key))

    def settle_all(self) -> None:
        for node, lineage in self.lineages.items():
            self._settle(node, lineage)

    def _settle(self, node: int, lineage: _Lineage) -> None:
        if lineage.pending is None:
            return
        (cmd, index, before), lineage.pending = lineage.pending, None
        write = (cmd.client_id, cmd.seq)
        earlier = write in lineage.took_effect or cmd.seq <= lineage.floor.get(cmd.client_id, 0)
        session = lineage.kv.sessions.get(cmd.client_id)
        changed = before != cmd.value and lineage.kv.get(cmd.key) == cmd.value
        recorded = session is not None and session[0] == cmd.seq and session[1].index == index
        if not (changed or recorded):
            self.deduplicated += earlier
            return
        if earlier:
            raise Violation(
                f"exactly-once: the session write {cmd.client_id.decode()}#{cmd.seq} (put "
                f"{cmd.key.decode()}={cmd.value.decode()}) applied twice on node {node}, again at {index}"
            )
        lineage.took_effect.add(write)


@dataclass
class _Session:
    """A simulated client's exactly-once session, kept as raftctl's WriteSession keeps it."""

    name: str
    client_id: bytes = b""
    seq: int = 0
    live: bool = False  # a write of it may have applied: later writes are not its first
    made: int = 0

    def renew(self) -> None:
        self.made += 1
        self.client_id, self.seq, self.live = f"{self.name}.{self.made}".encode(), 0, False


class RealNodeSim:
    def __init__(self, seed: int, params: Params | None = None) -> None:
        self.seed = seed
        self.params = params or Params()
        self.rng = random.Random(seed)
        self.network = SimNetwork(random.Random(seed ^ 0x5EED), self.params)
        self.checks = Checks()
        self.once = ExactlyOnce()
        disk_rng = random.Random(seed ^ 0xD15C)
        slow = disk_rng.random() < self.params.slow_disks
        self.storages = {
            i: SimStorage(random.Random(disk_rng.random()), self.params, slow) for i in range(NODES)
        }
        self.disks: dict[int, DiskExecutor] = {}
        self.nodes: dict[int, RaftNode | None] = dict.fromkeys(range(NODES))
        self.runners: dict[int, asyncio.Task[None]] = {}
        self.boots = 0
        self.history: list[HistoryOp] = []
        self.stats = {
            "crashes": 0,
            "crashes_after_save": 0,
            "cuts": 0,
            "suspensions": 0,
            "transfers": 0,
            "transfers_done": 0,
            "puts_ok": 0,
            "gets_ok": 0,
            "unknown": 0,
            "retries": 0,
            "deduplicated": 0,
            "slow_disk": int(slow),
        }
        self._values = 0
        self._dir = tempfile.TemporaryDirectory(prefix="raftd-sim-")
        conf = Path(self._dir.name) / "cluster.yaml"
        conf.write_text(
            "nodes:\n"
            + "".join(f"  - {{id: {i}, host: 127.0.0.1, port: {5000 + i}}}\n" for i in range(NODES))
        )
        self.cluster = load_cluster(conf)

    # -- nodes --------------------------------------------------------------------------------------
    def _boot(self, i: int) -> None:
        self.boots += 1
        self.disks[i] = DiskExecutor(self.storages[i])
        node = RaftNode(
            self.cluster,
            i,
            self.storages[i],
            transport=self.network.transport(to_core(i)),
            limits=Limits(snapshot_entries=self.params.snapshot_entries),
            rng=random.Random(self.seed * 1000 + self.boots),
            executors=(self.disks[i], InlineExecutor()),
        )
        node.on_apply.append(functools.partial(self._observe_apply, i, node))
        self.network.attach(to_core(i), node)
        self.nodes[i] = node
        self.runners[i] = asyncio.get_running_loop().create_task(node.run(), name=f"node-{i}")

    def _observe_apply(self, i: int, node: RaftNode, e: Entry) -> None:
        self.checks.observe_apply(i, e)
        assert isinstance(node.kv, KVStore)  # the node's default state machine
        self.once.observe(i, node.kv, e)

    def _crash(self, i: int) -> None:
        """RaftNode.halt(): the node stops wherever it waits; what it saved stays, the rest goes (its timers,
        its unsent messages, its disk's queued jobs)."""
        self.storages[i].after_save = None
        node = self.nodes[i]
        if node is None:
            return
        self.stats["crashes"] += 1
        self.disks[i].dead = True
        self.network.detach(to_core(i))
        self.nodes[i] = None
        del self.runners[i]
        node.halt()

    def _crash_after_save(self, i: int) -> None:
        """The armed crash (SimStorage.after_save), called within the save that it follows."""
        self.stats["crashes_after_save"] += 1
        self._crash(i)
        asyncio.get_running_loop().call_later(self.rng.uniform(0.2, 1.0), self._restart, i)
        # Unwinds the node's code from inside the save: nothing after the save runs, sending included.
        raise asyncio.CancelledError

    def _crash_unless_saved(self, i: int, armed: Callable[[], None]) -> None:
        """An armed crash whose save did not come in time lands anyway (a follower that is cut off)."""
        if self.storages[i].after_save is armed:
            self._crash(i)
            asyncio.get_running_loop().call_later(self.rng.uniform(0.2, 1.0), self._restart, i)

    def _check_leaders(self) -> None:
        for i, node in self.nodes.items():
            if node is not None and node.raw.role is Role.LEADER:
                self.checks.observe_leader(i, node.raw.term)

    # -- faults -------------------------------------------------------------------------------------
    async def _nemesis(self, until: float) -> None:
        """Faults of each kind at their own average rate (Params' *_every_s), each at a random node."""
        loop = asyncio.get_running_loop()
        p = self.params
        faults = (
            (1 / p.crash_every_s, self._crash_fault),
            (1 / p.cut_every_s, self._cut_fault),
            (1 / p.suspend_every_s, self._suspend_fault),
            (1 / p.transfer_every_s, self._transfer_fault),
        )
        edges = list(itertools.accumulate(rate for rate, _ in faults))
        while loop.time() < until:
            pause = self.rng.expovariate(edges[-1])
            if loop.time() + pause >= until:
                await asyncio.sleep(until - loop.time())
                return
            await asyncio.sleep(pause)
            i = self.rng.randrange(NODES)
            kind = bisect.bisect(edges, self.rng.random() * edges[-1])
            faults[min(kind, len(faults) - 1)][1](i)  # min: a draw that rounds up to the top edge

    def _crash_fault(self, i: int) -> None:
        """Crash node i now, or (some of the time) right after its next save; restart it later."""
        loop = asyncio.get_running_loop()
        if self.nodes[i] is not None and self.rng.random() < self.params.crash_after_save:
            armed = self.storages[i].after_save = functools.partial(self._crash_after_save, i)
            loop.call_later(SAVE_CRASH_WAIT_S, self._crash_unless_saved, i, armed)
            return
        self._crash(i)
        loop.call_later(self.rng.uniform(0.2, 1.0), self._restart, i)

    def _cut_fault(self, i: int) -> None:
        """Cut node i off, or heal its cut; a majority stays connected."""
        if to_core(i) in self.network.cut:
            self.network.cut.discard(to_core(i))
        elif len(self.network.cut) < NODES // 2:
            self.stats["cuts"] += 1
            self.network.cut.add(to_core(i))

    def _suspend_fault(self, i: int) -> None:
        """Suspend node i, or half of the time the leader (whose writes in flight are the ones at stake), as
        the daemon's Suspend call does (RaftNode.suspend): it fails what it holds by the rule (writes in
        its log as unknown, the rest refused), refuses clients, and comes back from disk."""
        leaders = [n for n in self.nodes.values() if n is not None and n.is_leader()]
        node = leaders[0] if leaders and self.rng.random() < 0.5 else self.nodes[i]
        if node is None:
            return
        try:
            node.suspend(self.rng.uniform(*self.params.suspend_s))
        except Unavailable:  # suspended already
            return
        self.stats["suspensions"] += 1

    def _transfer_fault(self, i: int) -> None:
        """Ask the leader to hand leadership over to another node (node i, unless that is the leader), as
        raftctl transfer-leader does."""
        leaders = [n for n in self.nodes.values() if n is not None and n.is_leader()]
        if not leaders:
            return
        leader = leaders[0]
        target = i if i != leader.me.id else (i + 1) % NODES
        self.stats["transfers"] += 1
        asyncio.get_running_loop().create_task(self._transfer(leader, target))

    async def _transfer(self, leader: RaftNode, target: int) -> None:
        """RaftNode.transfer_leader with a caller's deadline: the leader's answer (a new leader, a refusal,
        the target unreachable) or none."""
        try:
            await asyncio.wait_for(leader.transfer_leader(target), self.params.op_timeout_s)
        except (NotLeader, Unavailable, TimeoutError):
            return
        self.stats["transfers_done"] += 1

    def _restart(self, i: int) -> None:
        if self.nodes[i] is None:
            self._boot(i)

    # -- clients ------------------------------------------------------------------------------------
    async def _client(self, client: int, until: float) -> None:
        """Random puts and reads. After a write that a node took and then refused, the client reads its key
        until a read answers: a refusal promises the write never applies, and should it apply after all,
        the read sees its unique value before another write is likely to hide it."""
        loop = asyncio.get_running_loop()
        rng = random.Random(self.seed * 31 + client)
        process = client
        session = _Session(f"c{client}")
        session.renew()
        recheck: str | None = None
        while loop.time() < until:
            await asyncio.sleep(rng.uniform(0.001, 0.05))
            node = self._pick(rng)
            if node is None:
                continue
            if recheck is not None:
                if await self._get(node, process, recheck):
                    recheck = None
                continue
            key = rng.choice(KEYS)
            if rng.random() < 0.5:
                if rng.random() < self.params.session_share:
                    if rng.random() < self.params.new_session:
                        session.renew()
                    status = await self._session_put(node, process, key, rng, session)
                else:
                    status = await self._put(node, process, key)
                if status == "info":
                    process += self.params.clients  # Jepsen's rule: its op may still land, so a new process
                elif status == "withdrawn":
                    recheck = key
            else:
                await self._get(node, process, key)

    def _pick(self, rng: random.Random, hint: int | None = None) -> RaftNode | None:
        """The node named (a NotLeader's hint) if it is up, else any node that is up."""
        if hint is not None and self.nodes[hint] is not None:
            return self.nodes[hint]
        live = [n for n in self.nodes.values() if n is not None]
        return rng.choice(live) if live else None

    def _new_put(self, process: int, key: str) -> HistoryOp:
        self._values += 1
        op = HistoryOp(process, "put", key, f"v{self._values}", asyncio.get_running_loop().time())
        self.history.append(op)
        return op

    async def _attempt(self, node: RaftNode, cmd: Command) -> tuple[str, int | None]:
        """One attempt of a write at node: ("ok" | "refused" | "withdrawn" | "unknown" | "expired", the
        leader it names).

        "refused": the node says the write never applies (raftd.node's Unavailable and NotLeader); these
        are taken at their word, so the history checks them too. "withdrawn": refused likewise, but after
        the node took the write (its answer, not its door). "unknown": it may have applied.
        """
        try:
            fut = node.propose_nowait(cmd)
        except NotLeader as e:
            return "refused", e.leader.id if e.leader is not None else None
        except Unavailable:
            return "refused", None
        fut.add_done_callback(_retrieved)  # given up on at its timeout, it may still fail later
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.params.op_timeout_s)
        except NotLeader as e:  # gathered, then dropped by the core before it reached the log
            return "withdrawn", e.leader.id if e.leader is not None else None
        except (OutcomeUnknown, TimeoutError):
            return "unknown", None
        except Unavailable:  # never proposed, or another leader's entry took its index
            return "withdrawn", None
        except SessionExpired:
            return "expired", None
        return "ok", None

    async def _put(self, node: RaftNode, process: int, key: str) -> str:
        """A put without a session: one attempt, as a retry could apply it twice. Returns its status in
        the history, or "withdrawn" for a fail that the node had taken."""
        loop = asyncio.get_running_loop()
        op = self._new_put(process, key)
        assert op.value is not None
        outcome, _ = await self._attempt(node, Command(Op.PUT, key.encode(), op.value.encode()))
        if outcome == "ok":
            op.status, op.ret = "ok", loop.time()
            self.stats["puts_ok"] += 1
        elif outcome in ("refused", "withdrawn"):
            op.status, op.ret = "fail", loop.time()  # it never applies
            return "fail" if outcome == "refused" else outcome
        else:
            op.status = "info"  # may have applied: the checker allows both
            self.stats["unknown"] += 1
        return op.status

    async def _session_put(
        self, node: RaftNode, process: int, key: str, rng: random.Random, session: _Session
    ) -> str:
        """A put with a session, retried with the same (client_id, seq) (possibly at another node, with
        raftctl's backoff) until an attempt answers or the attempts run out. One op in the history: it
        is called when the first attempt is, ok when any attempt answers, fail when every attempt was
        refused, else unknown. Returns that status, or "withdrawn" for a fail that a node had taken."""
        loop = asyncio.get_running_loop()
        op = self._new_put(process, key)
        assert op.value is not None
        session.seq += 1
        # Fixed for every attempt, as in raftctl: an attempt whose outcome is unknown may never have
        # reached the log, and a retry that said "not first" would then be refused.
        first = not session.live
        cmd = Command(Op.PUT, key.encode(), op.value.encode(), session.client_id, session.seq, first)
        maybe_applied = withdrawn = False
        backoff = 0.025
        target: RaftNode | None = node
        hint: int | None = None
        for attempt in range(self.params.session_attempts):
            if attempt:
                await asyncio.sleep(backoff * rng.uniform(0.5, 1.0))
                backoff = min(2 * backoff, 0.1)
                self.stats["retries"] += 1
                target = self._pick(rng, hint)
            if target is None:
                continue
            outcome, hint = await self._attempt(target, cmd)
            if outcome == "ok":
                session.live = True
                op.status, op.ret = "ok", loop.time()
                self.stats["puts_ok"] += 1
                return op.status
            if outcome == "unknown":
                maybe_applied = session.live = True
            elif outcome == "withdrawn":
                withdrawn = True
            elif outcome == "expired":  # this attempt never applies; the session is gone for good
                session.renew()
                break
        if maybe_applied:
            op.status = "info"
            self.stats["unknown"] += 1
            return op.status
        op.status, op.ret = "fail", loop.time()
        return "withdrawn" if withdrawn else op.status

    async def _get(self, node: RaftNode, process: int, key: str) -> bool:
        """A linearizable read; whether it answered."""
        loop = asyncio.get_running_loop()
        op = HistoryOp(process, "get", key, None, loop.time())
        self.history.append(op)
        try:
            barrier = node.read_barrier_nowait()
            barrier.add_done_callback(_retrieved)
            await asyncio.wait_for(asyncio.shield(barrier), self.params.op_timeout_s)
        except (NotLeader, Unavailable, TimeoutError):
            op.status, op.ret = "fail", loop.time()  # a read that answers nothing changed nothing
            return False
        value = node.kv.get(key.encode())
        op.status, op.ret = "ok", loop.time()
        op.output = value.decode() if value is not None else None
        self.stats["gets_ok"] += 1
        return True

    # -- the run ------------------------------------------------------------------------------------
    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(NODES):
            self._boot(i)
        sampler = loop.create_task(self._sample())
        faulty_until = loop.time() + self.params.seconds
        clients = [loop.create_task(self._client(c, faulty_until)) for c in range(self.params.clients)]
        await self._watched(sampler, self._nemesis(faulty_until))
        await self._watched(sampler, asyncio.gather(*clients))
        self._heal()
        await self._watched(sampler, self._progress(loop.time() + self.params.seconds))
        if sampler.done():
            sampler.result()
        sampler.cancel()
        for node in self.nodes.values():
            if node is not None:
                await node.stop()

    @staticmethod
    async def _watched(sampler: asyncio.Task[None], work: Awaitable[object]) -> None:
        """work, unless the sampler finds a violation first (then its Violation)."""
        task = asyncio.ensure_future(work)
        await asyncio.wait({task, sampler}, return_when=asyncio.FIRST_COMPLETED)
        if sampler.done():
            task.cancel()
            task.add_done_callback(_retrieved)
            sampler.result()
        await task

    async def _sample(self) -> None:
        while True:
            self._check_leaders()
            for i, runner in self.runners.items():
                if runner.done() and not runner.cancelled() and runner.exception() is not None:
                    error = runner.exception()
                    if isinstance(error, Violation):  # a checker's, raised as the node applied an entry
                        raise error
                    # No disk here is damaged: a node that stops on an error is a bug.
                    raise Violation(f"node {i} stopped: {error}")
            await asyncio.sleep(0.005)

    def _heal(self) -> None:
        self.network.faulty = False
        self.network.cut.clear()
        for i, node in self.nodes.items():
            self.storages[i].after_save = None
            if node is None:
                self._boot(i)

    async def _progress(self, deadline: float) -> None:
        """Once the faults stop, a write commits and every node applies it."""
        loop = asyncio.get_running_loop()
        written: bytes | None = None
        while loop.time() < deadline:
            leaders = [n for n in self.nodes.values() if n is not None and n.is_leader()]
            if written is None and leaders and await self._put(leaders[0], 10_000, "probe") == "ok":
                written = (self.history[-1].value or "").encode()
            if written is not None and all(
                n is not None and n.kv.get(b"probe") == written for n in self.nodes.values()
            ):
                return
            await asyncio.sleep(0.05)
        raise Violation(
            "no progress: once the faults stopped, "
            + ("no write committed" if written is None else "a committed write did not reach every node")
        )

    def run(self) -> dict[str, int]:
        """The whole run; raises Violation on a bug."""
        loop = VirtualLoop()
        try:
            loop.run_until_complete(self._main())
        finally:
            for runner in self.runners.values():  # after a violation, the others' errors are noise
                if runner.done():
                    _retrieved(runner)
            left = asyncio.all_tasks(loop)  # a crashed node's timers, the nemesis' restarts
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.close()
            self._dir.cleanup()
        self.once.settle_all()
        self.stats["deduplicated"] = self.once.deduplicated
        for op in self.history:
            if op.status == "pending":
                op.status = "info"
        result = check([op for op in self.history if op.key != "probe"], timeout_s=30.0)
        if not result.ok:
            raise Violation(f"not linearizable on key {result.key}:\n{result.explanation}")
        return self.stats


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
