"""For both test directories (tests/, integration_tests/)."""

from __future__ import annotations

import os

from raftd.grpcenv import POLL_ENGINE, pin_aio

# The engine raftd's programs run on (raftd/grpcenv.py), chosen before anything here imports grpc.
os.environ.setdefault("GRPC_EXPERIMENTS", POLL_ENGINE)
# Tests make and drop grpc.aio channels and servers all the time; the last one freed by the garbage
# collector could hang the whole run (raftd.grpcenv.pin_aio).
pin_aio()
