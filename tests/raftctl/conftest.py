"""Fixtures for raftctl: one real 3-node cluster shared by the package, and a way to run the command.

The cluster comes from tests/daemon/cluster.py (real `python -m raftd` processes on free loopback ports,
every one killed at teardown). raftctl always runs as a child process from an empty directory with a
clean environment, so that neither a ./config.conf nor the developer's RAFTCTL_ENDPOINTS leaks in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.cluster import Cluster, cluster_of

# A bound for every raftctl run: a hang fails the test instead of stalling the suite.
RUN_LIMIT_S = 30.0


def ctl_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAFTCTL_ENDPOINTS"}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", **extra)
    return env


def run_ctl(
    *args: str,
    cwd: Path,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`raftctl ARGS` to completion, stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "raftctl", *args],
        cwd=cwd,
        env=env if env is not None else ctl_env(cwd),
        input=input,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
        check=False,
    )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A healthy cluster for tests that leave it healthy; killed at the end whatever happened."""
    with cluster_of(tmp_path_factory.mktemp("raftctl-shared")) as c:
        yield c


@pytest.fixture
def endpoints(cluster: Cluster) -> str:
    return ",".join(cluster.address(i) for i in range(cluster.n))
