"""Which of gRPC's polling engines raftd's programs run on. gRPC reads it when first imported.

gRPC's C core has two. The older one (iomgr) reads the sockets on the thread that waits for completions,
for grpc.aio its one poller thread. The newer EventEngine, the default, reads them on threads of its own
and hands each completion to the poller: one more thread wake-up per message, and wake-ups are most of
what a message costs on a small machine, so the older engine is the faster one on a single request
(bench/floor.py; the figures are in docs/performance-history.md). The programs (raftd, raftctl, the
benchmark) set it before they import grpc, unless GRPC_EXPERIMENTS is already set; the client library
leaves the choice to the program that imports it. tests/test_grpc_engine.py fails once a gRPC release no
longer knows the switches.
"""

POLL_ENGINE = "-event_engine_client,-event_engine_listener"


def pin_aio() -> None:
    """Keep grpc.aio's global state for the life of the process.

    grpc.aio counts its channels and servers and shuts its poller down when the last one is freed, by
    joining the poller thread. Freed by the garbage collector, wherever it happens to run, that join can
    wait forever: the poller stays in epoll_wait (seen in a hung test run: the collector, inside an
    unrelated call, joining it). Pinned, the count never reaches zero; the poller is a daemon thread and
    ends with the process."""
    import grpc.aio  # here, not at the top: a program sets its engine before grpc is first imported

    grpc.aio.init_grpc_aio()  # type: ignore[attr-defined]  # in grpc.aio.__all__; grpc-stubs lacks it
