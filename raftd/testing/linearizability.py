"""A linearizability checker for a map of registers (put / get / delete per key).

Linearizability is compositional (Herlihy & Wing; P-compositionality in Porcupine): a map history is
linearizable iff each key's sub-history is, so every key is checked on its own. For one key the search is
Wing & Gong's, as refined by Lowe and Porcupine: depth-first over "which pending op takes effect next",
with a cache of (set of linearized ops as a bitmask, register value) so that no configuration is explored
twice. It is iterative (an explicit stack), so a history of thousands of ops needs no deep recursion.

Outcomes:
- "ok" ops must be linearized between their call and their return.
- "fail" ops certainly did not happen: they are dropped.
- "info" ops (and ops still pending) may have happened at any time after their call, or never. Their return
  is +infinity; the search succeeds once every ok op is placed, so "never" is always available. An info get
  constrains nothing and is dropped.

Reductions keep the search small without losing a single linearization (a test compares the verdict with
a brute-force twin's on thousands of small histories):
- Written values that no ok get ever returned are indistinguishable to every later op (a get of a value
  needs exactly that value; a delete only asks "present or absent"), so they collapse to one UNSEEN value.
- Info ops are placed just in time. An info op has no return, so it can always be moved later; its only
  effect is the value, and in a run of info ops only the last one's value is seen. So an info op is only
  ever linearized as a pair with the ok op right after it, and only when it makes that op legal: a put of
  x before a get of x, a delete before a get of nothing or a delete reporting absent, a put before a
  delete reporting present. Unneeded info ops are simply never placed ("never" is allowed).
- Info ops with the same effect (same kind and same collapsed value) are interchangeable; only the
  earliest-called one still unplaced is tried (an exchange argument: it fits wherever a later one does).
- A pending get (or a delete that reports "absent") that agrees with the current value changes nothing,
  and taking it at once only loosens real-time constraints on the rest, so it is taken without branching.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from .history import Op

INF = float("inf")
# How many ops of the longest linearizable prefix an explanation shows.
EXPLAIN_PREFIX = 12


class _Unseen:
    """The collapsed value of every write that no successful read ever returned."""

    def __repr__(self) -> str:
        return "<a value no read returned>"


UNSEEN = _Unseen()

# Op codes of the per-key model.
_PUT, _GET, _DELETE_OK, _DELETE_INFO = range(4)


class CheckTimeout(Exception):
    """The search exceeded its time budget: the history is neither proven nor refuted."""


@dataclass
class CheckResult:
    ok: bool
    key: str | None = None  # first key that is not linearizable
    # Human-readable: the operations involved (the longest linearizable prefix found and the ops that
    # could not be placed after it).
    explanation: str = ""


def check(ops: list[Op], timeout_s: float = 60.0) -> CheckResult:
    """Whether the history is linearizable for a map of registers; CheckTimeout past timeout_s."""
    deadline = time.monotonic() + timeout_s
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    t0 = min((op.call for op in ops), default=0.0)
    for key in sorted(by_key):
        explanation = _KeySearch(key, by_key[key], t0, deadline).run()
        if explanation is not None:
            return CheckResult(False, key, explanation)
    return CheckResult(True)


@dataclass
class _Frame:
    """One node of the search: what has been linearized, the value, and which op to try next."""

    linearized: int  # bitmask over the key's ops
    value: object  # None (absent), a string, or UNSEEN
    lo: int  # every ok op below this index is linearized
    depth: int  # how many ok ops are linearized
    candidates: list[tuple[int, int]]  # moves: (info op placed just before, or -1; ok op)
    parent: _Frame | None
    via: tuple[int, int]  # the move that led here ((-1, -1) at the root)
    next: int = 0


class _KeySearch:
    """The search for one key's sub-history."""

    def __init__(self, key: str, ops: list[Op], t0: float, deadline: float) -> None:
        self.key = key
        self.t0 = t0
        self.deadline = deadline
        kept: list[Op] = []
        for op in ops:
            if op.status == "fail":
                continue
            if op.status == "ok":
                if op.ret is None:
                    raise ValueError(f"an ok op without a return time: {op}")
                if op.ret < op.call:
                    raise ValueError(f"an op that returns before its call: {op}")
                kept.append(op)
            elif op.status in ("info", "pending"):
                if op.kind != "get":  # an unfinished read constrains nothing
                    kept.append(op)
            else:
                raise ValueError(f"unknown status {op.status!r} in {op}")
        done = sorted((op for op in kept if op.status == "ok"), key=lambda op: op.call)
        unknown = sorted((op for op in kept if op.status != "ok"), key=lambda op: op.call)
        self.ops = done + unknown  # bit i of a frame's mask is ops[i]
        self.n_ok = len(done)
        self.call = [op.call for op in self.ops]
        self.ret: list[float] = [
            op.ret if op.status == "ok" and op.ret is not None else INF for op in self.ops
        ]
        seen = {op.output for op in done if op.kind == "get" and op.output is not None}

        def collapse(v: str | None) -> object:
            return v if v in seen else UNSEEN

        self.code: list[int] = []
        self.arg: list[object] = []  # put: value written; get: value read; delete ok: existed
        for op in self.ops:
            if op.kind == "put":
                self.code.append(_PUT)
                self.arg.append(collapse(op.value))
            elif op.kind == "get":
                self.code.append(_GET)
                self.arg.append(op.output)
            elif op.status == "ok":
                if op.output not in ("true", "false"):
                    raise ValueError(f"a delete must output 'true' or 'false': {op}")
                self.code.append(_DELETE_OK)
                self.arg.append(op.output == "true")
            else:
                self.code.append(_DELETE_INFO)
                self.arg.append(None)
        # Interchangeable info ops, by effect, in call order: only the first unplaced one is tried.
        self.members: dict[tuple[int, object], list[int]] = defaultdict(list)
        for i in range(self.n_ok, len(self.ops)):
            self.members[(self.code[i], self.arg[i])].append(i)
        self.seen_put_classes = [c for c in self.members if c[0] == _PUT and c[1] is not UNSEEN]

    def head(self, cls: tuple[int, object], linearized: int, min_ret: float) -> int:
        """The first unplaced info op of a class if it may be placed now (called by min_ret), else -1."""
        for i in self.members.get(cls, ()):
            if not linearized >> i & 1:
                return i if self.call[i] <= min_ret else -1
        return -1

    def enablers(self, j: int, value: object, linearized: int, min_ret: float) -> list[int]:
        """Info ops that, placed just before ok op j, make it legal when it is not legal at value."""
        code, arg = self.code[j], self.arg[j]
        if code == _GET:
            cls = (_PUT, arg) if arg is not None else (_DELETE_INFO, None)
            h = self.head(cls, linearized, min_ret)
            return [h] if h >= 0 else []
        if code != _DELETE_OK or arg == (value is not None):
            return []
        if not arg:
            h = self.head((_DELETE_INFO, None), linearized, min_ret)
            return [h] if h >= 0 else []
        h = self.head((_PUT, UNSEEN), linearized, min_ret)
        if h >= 0:  # an unread value serves as well as any and is never needed by a get
            return [h]
        heads = (self.head(c, linearized, min_ret) for c in self.seen_put_classes)
        return [h for h in heads if h >= 0]

    def apply(self, i: int, value: object) -> tuple[bool, object]:
        """The model: whether op i is legal with the register at value, and the value after it."""
        code = self.code[i]
        if code == _PUT:
            return True, self.arg[i]
        if code == _GET:
            return self.arg[i] == value and value is not UNSEEN, value
        if code == _DELETE_OK:
            return self.arg[i] == (value is not None), None
        return True, None

    def expand(
        self,
        linearized: int,
        value: object,
        lo: int,
        depth: int,
        parent: _Frame | None,
        via: tuple[int, int],
    ) -> _Frame | None:
        """The frame for a configuration, or None when every ok op is linearized (success)."""
        n_ok = self.n_ok
        while lo < n_ok and linearized >> lo & 1:
            lo += 1
        if lo == n_ok:
            return None
        call, ret = self.call, self.ret
        # Candidates: unlinearized ops called no later than the earliest return among unlinearized ok
        # ops (ops are sorted by call, so the scan stops at the first op called after that return).
        min_ret = INF
        ok_cands: list[int] = []
        j = lo
        while j < n_ok and call[j] <= min_ret:
            if not linearized >> j & 1:
                ok_cands.append(j)
                if ret[j] < min_ret:
                    min_ret = ret[j]
            j += 1
        for j in ok_cands:
            code = self.code[j]
            if (code == _GET or (code == _DELETE_OK and value is None)) and self.apply(j, value)[0]:
                # Changes nothing and only loosens the rest: take it without branching.
                return _Frame(linearized, value, lo, depth, [(-1, j)], parent, via)
        ok_cands.sort(key=ret.__getitem__)
        moves = [(-1, j) for j in ok_cands]
        if len(self.ops) > n_ok:
            for j in ok_cands:
                moves += [(i, j) for i in self.enablers(j, value, linearized, min_ret)]
        return _Frame(linearized, value, lo, depth, moves, parent, via)

    def run(self) -> str | None:
        """None when linearizable, else an explanation."""
        root = self.expand(0, None, 0, 0, None, (-1, -1))
        if root is None:
            return None
        stack = [root]
        visited: set[tuple[int, object]] = set()
        best = root
        steps = 0
        while stack:
            frame = stack[-1]
            if frame.next >= len(frame.candidates):
                stack.pop()
                continue
            move = frame.candidates[frame.next]
            info, i = move
            frame.next += 1
            steps += 1
            if steps & 1023 == 0 and time.monotonic() > self.deadline:
                raise CheckTimeout(
                    f"key {self.key!r}: no verdict after {steps} steps ({len(self.ops)} ops, "
                    f"{len(visited)} configurations)"
                )
            value, linearized = frame.value, frame.linearized
            if info >= 0:
                _, value = self.apply(info, value)
                linearized |= 1 << info
            legal, value = self.apply(i, value)
            if not legal:
                continue
            linearized |= 1 << i
            if (linearized, value) in visited:
                continue
            visited.add((linearized, value))
            child = self.expand(linearized, value, frame.lo, frame.depth + 1, frame, move)
            if child is None:
                return None
            if child.depth > best.depth:
                best = child
            stack.append(child)
        return self.explain(best)

    def explain(self, best: _Frame) -> str:
        path: list[int] = []
        f: _Frame | None = best
        while f is not None and f.via[1] >= 0:
            path += [i for i in reversed(f.via) if i >= 0]
            f = f.parent
        path.reverse()
        lines = [
            f"key {self.key!r} is not linearizable ({self.n_ok} completed ops, "
            f"{len(self.ops) - self.n_ok} with unknown outcome; times in s from the first call).",
            f"Longest linearizable prefix: {best.depth} of {self.n_ok} completed ops"
            + (f"; its last {EXPLAIN_PREFIX} steps:" if len(path) > EXPLAIN_PREFIX else ":"),
        ]
        lines += [f"  {self.ops[i].describe(self.t0)}" for i in path[-EXPLAIN_PREFIX:]]
        raw: str | None = None  # the value as written, not collapsed
        for i in path:
            if self.code[i] == _PUT:
                raw = self.ops[i].value
            elif self.code[i] != _GET:
                raw = None
        lines.append(f"value after it: {raw!r}")
        lines.append("none of these completed ops can take effect next:")
        stuck = sorted({i for _, i in best.candidates})
        for i in stuck:
            legal, _ = self.apply(i, best.value)
            why = "" if legal else f"  <- illegal with value {raw!r}"
            lines.append(f"  {self.ops[i].describe(self.t0)}{why}")
        return "\n".join(lines)
