"""Jepsen-style testing tools: history recording, a linearizability checker, a workload and nemeses.

They live in the package (not under tests/) so the process-level tests and the container tests share one
recorder, one checker and one workload; nothing in the daemon imports them.
"""

from .checks import check_failed_writes_unread
from .history import History, Op
from .linearizability import CheckResult, CheckTimeout, check

__all__ = ["CheckResult", "CheckTimeout", "History", "Op", "check", "check_failed_writes_unread"]
