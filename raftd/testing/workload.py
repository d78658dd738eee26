"""The Jepsen-style workload: concurrent clients doing puts, linearizable gets and deletes on a few keys.

Every op is recorded as invoke, then ok / fail / info, and the classification is what the checker's verdict
rests on, so it follows what raftctl.client can prove:

- A put or delete is "fail" only on InvalidArgument: the server refused it before proposing it. Every other
  error is "info". The client retries a write within one timeout across nodes and reports only the last
  attempt's error, so an Unavailable ("no leader known", "not the leader", a refused connection) may follow
  an earlier attempt that reached a leader and is still in its log; a deadline, a lost connection or
  "leadership changed before the write committed" are ambiguous by themselves.
- A get that fails is "fail": a read has no effect.

Even-numbered clients follow the leader (raftctl's default); odd-numbered ones are pinned to one node each,
as Jepsen binds clients to nodes, so follower reads (ReadIndex through the leader) and write forwarding are
exercised as much as the leader's own paths.

After an info op the thread goes on as a new process id (Jepsen's rule): the old op may still take effect
at any time, so its process never completes, and each process has one outstanding op at a time.
"""

from __future__ import annotations

import random
import threading
import time

from raftctl.client import Client, ClientError, InvalidArgument, NotFound

from .history import History

# Op mix: writes dominate slightly so reads keep seeing fresh values; deletes make "absent" interesting.
MIX = (("put", 0.45), ("get", 0.45), ("delete", 0.10))
MAX_PAUSE_S = 0.005  # a little jitter between ops, so interleavings vary


def run_workload(
    endpoints: list[str],
    history: History,
    *,
    clients: int,
    keys: list[str],
    duration_s: float,
    seed: int,
    op_timeout_s: float = 1.0,
) -> None:
    """Run `clients` client threads for duration_s; returns when all have stopped (re-raises their errors)."""
    rng = random.Random(seed)
    stop_at = time.monotonic() + duration_s
    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=_guarded,
            args=(errors, i, clients, endpoints, history, keys, stop_at, rng.getrandbits(64), op_timeout_s),
            name=f"jepsen-client-{i}",
            daemon=True,
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _guarded(errors: list[BaseException], *args: object) -> None:
    try:
        _client_loop(*args)  # type: ignore[arg-type]
    except BaseException as e:
        errors.append(e)


def _client_loop(
    index: int,
    clients: int,
    endpoints: list[str],
    history: History,
    keys: list[str],
    stop_at: float,
    seed: int,
    op_timeout_s: float,
) -> None:
    rng = random.Random(seed)
    pinned = index % 2 == 1
    if pinned:
        order = [endpoints[(index // 2) % len(endpoints)]]
    else:
        order = list(endpoints)
        rng.shuffle(order)  # clients start at different nodes
    process = index
    written = 0
    kinds, weights = zip(*MIX, strict=True)
    with Client(order, timeout=op_timeout_s, pin=pinned) as client:
        while time.monotonic() < stop_at:
            kind = rng.choices(kinds, weights)[0]
            key = rng.choice(keys)
            value = None
            if kind == "put":
                written += 1
                value = f"p{process}-{written}"  # unique: process ids are never reused
            op = history.invoke(process, kind, key, value)
            try:
                if kind == "put":
                    client.put(key, value)  # type: ignore[arg-type]
                    history.ok(op)
                elif kind == "delete":
                    history.ok(op, "true" if client.delete(key) else "false")
                else:
                    try:
                        found: str | None = client.get(key)
                    except NotFound:
                        found = None
                    history.ok(op, found)
            except InvalidArgument:
                history.fail(op)
            except BaseException as e:
                # Recorded even for an unexpected error, so the history stays well formed; then raised.
                if kind == "get":
                    history.fail(op)
                else:
                    history.info(op)
                    process += clients  # the op may still apply: never complete this process again
                if not isinstance(e, ClientError):
                    raise
            time.sleep(rng.random() * MAX_PAUSE_S)
