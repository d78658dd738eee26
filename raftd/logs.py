"""Output: the original project's plain lines by default, JSON lines on request."""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER = "raftd"


class _JsonFormatter(logging.Formatter):
    def __init__(self, node: int) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "node": self.node,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup(node: int, fmt: str, level: str) -> logging.Logger:
    """Configure the root raftd logger; the text format prints bare messages, like the original server."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonFormatter(node) if fmt == "json" else logging.Formatter("%(message)s"))
    root = logging.getLogger(LOGGER)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return root
