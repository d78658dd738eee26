"""A record of client operations as Jepsen keeps it: each op is invoked, then completes ok, fail or info.

"fail" means the op certainly did not take effect; "info" means nobody knows (a timeout, a lost
connection), so the checker must allow both outcomes. The recorder is shared by client threads and
asyncio tasks, hence the lock (held only for a few assignments, never across an await).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

KINDS = frozenset({"put", "get", "delete"})


@dataclass
class Op:
    process: int  # client id; one outstanding op per process at a time
    kind: str  # "put" | "get" | "delete"
    key: str
    value: str | None  # written value for put; None otherwise
    call: float  # monotonic time of invocation
    ret: float | None = None  # monotonic time of completion; None while pending / for info ops
    status: str = "pending"  # "ok" | "fail" (definitely did not take effect) | "info" (unknown)
    output: str | None = None  # get: value read (None = absent); delete: "true"/"false" (existed)

    def describe(self, t0: float = 0.0) -> str:
        """One line for failure reports: who did what, what came back, and when (relative to t0)."""
        what = f"put({self.key!r}, {self.value!r})" if self.kind == "put" else f"{self.kind}({self.key!r})"
        if self.status == "ok" and self.kind != "put":
            what += f" -> {self.output!r}"
        ret = f"{self.ret - t0:.4f}" if self.ret is not None else "inf"
        return f"p{self.process} {what} [{self.status}] {self.call - t0:.4f}..{ret}"


class History:
    """Thread-safe and asyncio-safe recorder of operations, in invocation order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._pending: dict[int, Op] = {}

    def invoke(self, process: int, kind: str, key: str, value: str | None = None) -> Op:
        """Record the start of an op; a process may have only one op outstanding (Jepsen's rule)."""
        if kind not in KINDS:
            raise ValueError(f"unknown op kind {kind!r}")
        if (kind == "put") != (value is not None):
            raise ValueError(f"{kind} takes {'a' if kind == 'put' else 'no'} value")
        with self._lock:
            if process in self._pending:
                raise ValueError(f"process {process} already has an op outstanding")
            op = Op(process, kind, key, value, time.monotonic())
            self._ops.append(op)
            self._pending[process] = op
        return op

    def ok(self, op: Op, output: str | None = None) -> None:
        """The op took effect; output is what a get read (None: absent) or "true"/"false" for delete."""
        if op.kind == "delete" and output not in ("true", "false"):
            raise ValueError(f"delete output must be 'true' or 'false', not {output!r}")
        self._complete(op, "ok", output, time.monotonic())

    def fail(self, op: Op) -> None:
        """The op certainly did not take effect."""
        self._complete(op, "fail", None, time.monotonic())

    def info(self, op: Op) -> None:
        """The outcome is unknown; the op may still take effect at any later time, so it has no return."""
        self._complete(op, "info", None, None)

    def _complete(self, op: Op, status: str, output: str | None, ret: float | None) -> None:
        with self._lock:
            if op.status != "pending" or self._pending.get(op.process) is not op:
                raise ValueError(f"op is not outstanding: {op}")
            op.status, op.output, op.ret = status, output, ret
            del self._pending[op.process]

    def ops(self) -> list[Op]:
        """A snapshot copy of every op so far (pending ones included, with status "pending")."""
        with self._lock:
            return [Op(**asdict(op)) for op in self._ops]

    def dump(self, path: str | Path) -> None:
        """JSON lines, one op each, for post-mortems (load with `load`)."""
        with Path(path).open("w") as f:
            for op in self.ops():
                f.write(json.dumps(asdict(op)) + "\n")


def load(path: str | Path) -> list[Op]:
    """The ops of a file written by History.dump."""
    with Path(path).open() as f:
        return [Op(**json.loads(line)) for line in f if line.strip()]
