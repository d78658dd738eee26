"""`raftd ID`: run one node. Errors are one line on stderr; a bad cluster map exits with status 2."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path

from raftd.grpcenv import POLL_ENGINE

# gRPC's C core prints its own copy of errors we report in one line (a port in use, ...); it reads this
# before grpc is first imported below. Set GRPC_VERBOSITY yourself to see its logs.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
os.environ.setdefault("GRPC_EXPERIMENTS", POLL_ENGINE)  # raftd/grpcenv.py

import click

from raftd import logs, malloc
from raftd.backup import BackupError, restore
from raftd.config import (
    DEFAULT_ELECTION_TIMEOUT_MS,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    ClusterConfig,
    ConfigError,
    load_cluster,
)
from raftd.node import DEFAULT_SNAPSHOT_ENTRIES, FatalError
from raftd.server import StartupError, serve
from raftd.storage import StorageError

EXIT_CONFIG = 2
EXIT_FAILURE = 1


def _fail(message: str, code: int) -> None:
    click.echo(f"raftd: error: {message}", err=True)
    sys.exit(code)


def main() -> None:
    """`raftd ID ...` runs a node; `raftd compose ...` writes a compose file for a cluster map."""
    if sys.argv[1:2] == ["compose"]:
        from raftd.deploy.compose import main as compose

        compose(args=sys.argv[2:], prog_name="raftd compose")
    else:
        node(prog_name="raftd")


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Every option can also come from the environment: RAFTD_NODE_ID for ID, RAFTD_CONFIG, "
    "RAFTD_DATA_DIR, RAFTD_LISTEN, RAFTD_LOG_FORMAT, RAFTD_LOG_LEVEL, RAFTD_SNAPSHOT_ENTRIES. "
    "`raftd compose --help` turns a cluster map into a docker-compose file.",
)
@click.argument("node_id", metavar="ID", type=int, envvar="RAFTD_NODE_ID")
@click.option(
    "--config",
    "config_path",
    default="config.conf",
    show_default=True,
    envvar="RAFTD_CONFIG",
    help="Cluster map: the original 'ID HOST PORT' format, or YAML when it ends in .yaml/.yml.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="RAFTD_DATA_DIR",
    help="Default: ./data/node-ID.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    envvar="RAFTD_LISTEN",
    help="Address to bind (default: this node's address in the map), e.g. 0.0.0.0:50000 in a container.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="RAFTD_LOG_FORMAT",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="RAFTD_LOG_LEVEL",
)
@click.option(
    "--election-timeout",
    metavar="MIN-MAX",
    help="Election timeout range in ms (default {}-{}).".format(*DEFAULT_ELECTION_TIMEOUT_MS),
)
@click.option(
    "--heartbeat-interval",
    type=int,
    metavar="MS",
    help=f"Heartbeat interval in ms (default {DEFAULT_HEARTBEAT_INTERVAL_MS}).",
)
@click.option(
    "--snapshot-entries",
    type=click.IntRange(min=1),
    default=DEFAULT_SNAPSHOT_ENTRIES,
    show_default=True,
    envvar="RAFTD_SNAPSHOT_ENTRIES",
    help="Take a snapshot and compact the log after this many applied entries.",
)
@click.option(
    "--restore",
    "restore_path",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Seed an empty data directory from a backup (raftctl snapshot save), then run. Give every node "
    "of the new cluster the same file.",
)
@click.version_option(package_name="raftd")
def node(
    node_id: int,
    config_path: str,
    data_dir: Path | None,
    listen: str | None,
    log_format: str,
    log_level: str,
    election_timeout: str | None,
    heartbeat_interval: int | None,
    snapshot_entries: int,
    restore_path: Path | None,
) -> None:
    """Run raftd node ID of the cluster described by --config."""
    malloc.tune()  # before any thread starts: the settings shape every arena
    try:
        cluster = load_cluster(config_path)
        cluster.node(node_id)
        cluster = _override_timeouts(cluster, election_timeout, heartbeat_interval)
    except ConfigError as e:
        _fail(str(e), EXIT_CONFIG)
    logs.setup(node_id, log_format, log_level)
    data = data_dir or Path("data") / f"node-{node_id}"
    try:
        if restore_path is not None:
            backup = restore(restore_path, data, cluster.name, node_id)
            meta = backup.snapshot.meta
            click.echo(f"Restored {restore_path} (index {meta.index}, term {meta.term}) into {data}")
        asyncio.run(serve(cluster, node_id, data, listen, snapshot_entries))
    except (StartupError, StorageError, FatalError, BackupError) as e:
        _fail(str(e), EXIT_FAILURE)


def _override_timeouts(cluster: ClusterConfig, election: str | None, heartbeat: int | None) -> ClusterConfig:
    """Flags win over the cluster map; the same checks apply to both."""
    lo, hi = cluster.election_timeout_ms
    if election is not None:
        try:
            lo, hi = (int(x) for x in election.split("-"))
        except ValueError:
            raise ConfigError(
                "--election-timeout wants MIN-MAX in ms, like {}-{}, not {!r}".format(
                    *DEFAULT_ELECTION_TIMEOUT_MS, election
                )
            ) from None
    hb = heartbeat if heartbeat is not None else cluster.heartbeat_interval_ms
    if hb <= 0:
        raise ConfigError(f"--heartbeat-interval must be positive, not {hb}")
    if not hb < lo < hi:
        raise ConfigError(f"need heartbeat < election minimum < election maximum, got {hb} and {lo}-{hi}")
    return dataclasses.replace(cluster, election_timeout_ms=(lo, hi), heartbeat_interval_ms=hb)
