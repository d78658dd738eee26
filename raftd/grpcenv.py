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
