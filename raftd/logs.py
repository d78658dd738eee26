"""Output: the original project's plain lines by default, JSON lines on request."""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER = "raftd"


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class _StampedFormatter(logging.Formatter):
    """The original's lines, each after its UTC time (--log-timestamps)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{_utc(record)} {super().format(record)}"


class _JsonFormatter(logging.Formatter):
    def __init__(self, node: int) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": _utc(record),
            "level": record.levelname.lower(),
            "node": self.node,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup(node: int, fmt: str, level: str, timestamps: bool = False) -> logging.Logger:
    """Configure the root raftd logger; the text format prints bare messages, like the original server,
    or each after its time with timestamps (JSON lines always carry theirs)."""
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        formatter: logging.Formatter = _JsonFormatter(node)
    elif timestamps:
        formatter = _StampedFormatter("%(message)s")
    else:
        formatter = logging.Formatter("%(message)s")
    handler.setFormatter(formatter)
    # No line shows the caller's file, thread or process, and finding them costs a record as much as the
    # rest of it: the original's services log a line per call (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger(LOGGER)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return root
