"""`make run`: each node of a cluster map as a child process, lines prefixed by node id; Ctrl-C or SIGTERM
stops all. `make stop` (`--stop`) stops the one running from this directory, found by its pid file.

The nodes run in sessions of their own, so that a signal to the terminal's process group reaches only
this launcher, which then stops them in order (a leader hands over first). Before, SIGTERM killed the
launcher alone and left the nodes running with nobody to stop them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from raftd.config import ConfigError, load_cluster
from raftd.launcher import LocalCluster

STOP_GRACE_S = 5.0  # per cluster: the nodes stop together
STOP_WAIT_S = 15.0  # --stop: how long to wait for the launcher (it waits STOP_GRACE_S per node at most)
PID_FILE = Path("data") / "devcluster.pid"


def _pump(node_id: int, stream: IO[bytes]) -> None:
    for line in stream:
        sys.stdout.write(f"[{node_id}] {line.decode(errors='replace')}")
        sys.stdout.flush()


def _running_pid() -> int | None:
    """The pid of a launcher running from this directory, if its pid file names a live process."""
    try:
        pid = int(PID_FILE.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def stop() -> int:
    """Stop the cluster that `make run` started from this directory: SIGTERM to its launcher."""
    pid = _running_pid()
    if pid is None:
        print("no cluster is running from this directory")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while _running_pid() == pid:
        if time.monotonic() > deadline:
            print(
                f"error: the cluster's launcher (pid {pid}) did not stop within {STOP_WAIT_S:g}s",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.1)
    print("The cluster stopped")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--stop"]:
        return stop()
    path = argv[0] if argv else "config.conf"
    try:
        cluster = load_cluster(path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    running = _running_pid()
    if running is not None:
        print(
            f"error: a cluster is already running from this directory (pid {running}); make stop",
            file=sys.stderr,
        )
        return 1
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    PID_FILE.write_text(f"{os.getpid()}\n")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    # The nodes' own default data directories (./data/node-ID), as when each is started by hand.
    nodes = LocalCluster(Path.cwd(), config=Path(path), ids=[n.id for n in cluster.nodes], data_dirs=False)
    nodes.args = argv[1:]
    pumps = []
    try:
        for i in nodes.ids:
            p = nodes.start(i, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            t = threading.Thread(target=_pump, args=(i, p.stdout), daemon=True)
            t.start()
            pumps.append(t)
        with contextlib.suppress(KeyboardInterrupt):
            while not stopping.is_set() and nodes.alive():
                stopping.wait(0.2)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = nodes.stop_all(STOP_GRACE_S)
        nodes.close()
        for t in pumps:
            t.join(timeout=1)
        with contextlib.suppress(OSError):
            PID_FILE.unlink()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
