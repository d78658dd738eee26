"""Checks of a history beside linearizability, each with a message that names the offending ops.

The linearizability checker already drops "fail" ops, so a read of a failed write's value makes its
search fail too; but it then reports the longest linearizable prefix of a key, which hides the simple
cause. A definite failure later read is the most direct evidence that a server reported "not applied" for
a write that did apply, so it gets its own check and its own message.
"""

from __future__ import annotations

from collections.abc import Sequence

from .history import Op
from .linearizability import CheckResult


def check_failed_writes_unread(ops: Sequence[Op]) -> CheckResult:
    """No read (final reads included) may return the value of a put that failed definitely.

    Written values must be unique in the history (the workload's are), else a value could be both a failed
    write and a successful one; a duplicate is refused with ValueError rather than judged.
    """
    writers: dict[tuple[str, str], Op] = {}
    for op in ops:
        if op.kind == "put":
            assert op.value is not None
            if (op.key, op.value) in writers:
                raise ValueError(f"value {op.value!r} written twice to {op.key!r}: values must be unique")
            writers[(op.key, op.value)] = op
    t0 = min((op.call for op in ops), default=0.0)
    lines: list[str] = []
    first_key: str | None = None
    for read in ops:
        if read.kind != "get" or read.status != "ok" or read.output is None:
            continue
        write = writers.get((read.key, read.output))
        if write is None or write.status != "fail":
            continue
        first_key = first_key or read.key
        lines += [f"  {write.describe(t0)}", f"    read by {read.describe(t0)}"]
    if not lines:
        return CheckResult(True)
    head = "writes that failed definitely (never applied, the server said) were read (times in s):"
    return CheckResult(False, first_key, "\n".join([head, *lines]))
