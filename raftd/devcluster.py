"""`make run`: each node of a cluster map as a child process, lines prefixed by node id; Ctrl-C stops all."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from raftd.config import ConfigError, load_cluster

STOP_GRACE_S = 5.0


def _pump(node_id: int, stream: object) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sys.stdout.write(f"[{node_id}] {line}")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "config.conf"
    try:
        cluster = load_cluster(path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    procs: dict[int, subprocess.Popen[str]] = {}
    pumps = []
    for n in cluster.nodes:
        p = subprocess.Popen(
            [sys.executable, "-u", "-m", "raftd", str(n.id), "--config", path, *argv[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the nodes in order
        )
        procs[n.id] = p
        t = threading.Thread(target=_pump, args=(n.id, p.stdout), daemon=True)
        t.start()
        pumps.append(t)
    try:
        while any(p.poll() is None for p in procs.values()):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            p.kill()
    for t in pumps:
        t.join(timeout=1)
    return max((p.returncode or 0) for p in procs.values()) if procs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
