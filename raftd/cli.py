"""`raftd ID`: run one node. Errors are one line on stderr; a bad cluster map exits with status 2."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
from pathlib import Path

from raftd.grpcenv import POLL_ENGINE

# gRPC's C core prints its own copy of errors we report in one line (a port in use, ...); it reads this
# before grpc is first imported below. Set GRPC_VERBOSITY yourself to see its logs.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
os.environ.setdefault("GRPC_EXPERIMENTS", POLL_ENGINE)  # raftd/grpcenv.py

import click

from raftd import logs, malloc
from raftd.backup import BackupError
from raftd.config import (
    DEFAULT_ELECTION_TIMEOUT_MS,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    ClusterConfig,
    ConfigError,
    load_cluster,
    timing_problem,
)
from raftd.errors import FatalError, Removed
from raftd.join import JoinError, prepare
from raftd.kv.store import MAX_SESSION_LIMIT
from raftd.restore import restore
from raftd.server import StartupError, serve
from raftd.settings import MAX_REQUEST_FIELD_BYTES, Limits
from raftd.storage import StorageError

EXIT_CONFIG = 2
EXIT_FAILURE = 1
# The environment variable of every option, in --help's order; RAFTD_TEST_* are test hooks (testhooks.py).
ENV = {
    "ID": "RAFTD_NODE_ID",
    "--config": "RAFTD_CONFIG",
    "--data-dir": "RAFTD_DATA_DIR",
    "--listen": "RAFTD_LISTEN",
    "--log-format": "RAFTD_LOG_FORMAT",
    "--log-level": "RAFTD_LOG_LEVEL",
    "--log-timestamps": "RAFTD_LOG_TIMESTAMPS",
    "--election-timeout": "RAFTD_ELECTION_TIMEOUT",
    "--heartbeat-interval": "RAFTD_HEARTBEAT_INTERVAL",
    "--snapshot-entries": "RAFTD_SNAPSHOT_ENTRIES",
    "--max-snapshot-bytes": "RAFTD_MAX_SNAPSHOT_BYTES",
    "--max-peer-queue": "RAFTD_MAX_PEER_QUEUE",
    "--max-peer-lookup-waiters": "RAFTD_MAX_PEER_LOOKUP_WAITERS",
    "--max-sessions": "RAFTD_MAX_SESSIONS",
    "--max-key-bytes": "RAFTD_MAX_KEY_BYTES",
    "--max-value-bytes": "RAFTD_MAX_VALUE_BYTES",
    "--max-streams": "RAFTD_MAX_STREAMS",
    "--max-stream-requests": "RAFTD_MAX_STREAM_REQUESTS",
    "--max-stream-bytes": "RAFTD_MAX_STREAM_BYTES",
    "--max-batch-requests": "RAFTD_MAX_BATCH_REQUESTS",
    "--max-txn-ops": "RAFTD_MAX_TXN_OPS",
    "--auto-compaction-mode": "RAFTD_AUTO_COMPACTION_MODE",
    "--auto-compaction-retention": "RAFTD_AUTO_COMPACTION_RETENTION",
    "--auto-compaction-period": "RAFTD_AUTO_COMPACTION_PERIOD",
    "--max-watch-streams": "RAFTD_MAX_WATCH_STREAMS",
    "--max-watchers-per-stream": "RAFTD_MAX_WATCHERS_PER_STREAM",
    "--watch-progress-notify-interval": "RAFTD_WATCH_PROGRESS_NOTIFY_INTERVAL",
    "--max-leases": "RAFTD_MAX_LEASES",
    "--max-keepalive-streams": "RAFTD_MAX_KEEPALIVE_STREAMS",
    "--stream-write-timeout": "RAFTD_STREAM_WRITE_TIMEOUT",
    "--corrupt-check-interval": "RAFTD_CORRUPT_CHECK_INTERVAL",
    "--peer-check": "RAFTD_PEER_CHECK",
    "--restore": "RAFTD_RESTORE",
    "--join": "RAFTD_JOIN",
    "--auto-promote": "RAFTD_AUTO_PROMOTE",
    "--max-learner-lag": "RAFTD_MAX_LEARNER_LAG",
}


def _fail(message: str, code: int) -> None:
    click.echo(f"raftd: error: {message}", err=True)
    sys.exit(code)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def compaction(mode: str, retention: str, period: float) -> tuple[int, float]:
    """(revisions kept, seconds kept) from etcd's pair of flags and raftd's --auto-compaction-period.

    Periodic mode reads the retention as etcd does: a Go-style duration ("1h30m", "90s") or a number of
    hours; its revision count is then 0, so that age alone decides."""
    text = retention.strip()
    if mode == "revision":
        if not text.isdigit():
            raise click.BadParameter(
                f"{retention!r} is not a number of revisions (an age needs --auto-compaction-mode periodic)",
                param_hint="--auto-compaction-retention",
            )
        return int(text), period
    if period:
        raise click.BadParameter(
            "give the age once: --auto-compaction-mode periodic takes it from --auto-compaction-retention",
            param_hint="--auto-compaction-period",
        )
    parts = _DURATION.findall(text)
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return 0, float(text) * 3600.0
    if not text or "".join(n + u for n, u in parts) != text:
        raise click.BadParameter(
            f"{retention!r} is not an age such as 1h, 30m, 90s or 1h30m, or a number of hours",
            param_hint="--auto-compaction-retention",
        )
    return 0, sum(float(n) * _UNIT_S[u] for n, u in parts)


def _warn_unknown_env(environ: dict[str, str]) -> None:
    """A misspelt setting must not pass silently; the node starts anyway, as with any unset option."""
    known = set(ENV.values())
    for name in sorted(environ):
        if name.startswith("RAFTD_") and not name.startswith("RAFTD_TEST_") and name not in known:
            click.echo(f"raftd: warning: unknown environment variable {name} is ignored", err=True)


def main() -> None:
    """`raftd ID ...` runs a node; `raftd compose ...` writes a compose file for a cluster map."""
    if sys.argv[1:2] == ["compose"]:
        from raftd.deploy.compose import main as compose

        compose(args=sys.argv[2:], prog_name="raftd compose")
        return
    try:
        code = node.main(prog_name="raftd", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        _fail(_one_line(e), e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(e: click.ClickException) -> str:
    """A usage error as raftctl prints them: "ID: 'abc' is not a valid integer", not click's three lines."""
    if isinstance(e, click.BadParameter) and not isinstance(e, click.MissingParameter) and e.param:
        name = e.param.human_readable_name if isinstance(e.param, click.Argument) else e.param.opts[0]
        return f"{name}: {e.message.rstrip('.')}"
    return e.format_message().rstrip(".")


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Every option can also come from the environment: "
    + ", ".join(f"{env} for {name}" for name, env in ENV.items())
    + "; a flag wins over its variable. `raftd compose --help` turns a cluster map into a compose file.",
)
@click.argument("node_id", metavar="ID", type=int, envvar=ENV["ID"])
@click.option(
    "--config",
    "config_path",
    default="config.conf",
    show_default=True,
    envvar=ENV["--config"],
    help="Cluster map: the original 'ID HOST PORT' format, or YAML when it ends in .yaml/.yml.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=ENV["--data-dir"],
    help="Default: ./data/node-ID.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    envvar=ENV["--listen"],
    help="Address to bind (default: this node's address in the map), e.g. 0.0.0.0:50000 in a container.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar=ENV["--log-format"],
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar=ENV["--log-level"],
)
@click.option(
    "--log-timestamps",
    is_flag=True,
    envvar=ENV["--log-timestamps"],
    help="Start each text line with its UTC time (the original's lines have none).",
)
@click.option(
    "--election-timeout",
    metavar="MIN-MAX",
    envvar=ENV["--election-timeout"],
    help="Election timeout range in ms (default {}-{}).".format(*DEFAULT_ELECTION_TIMEOUT_MS),
)
@click.option(
    "--heartbeat-interval",
    type=int,
    metavar="MS",
    envvar=ENV["--heartbeat-interval"],
    help=f"Heartbeat interval in ms (default {DEFAULT_HEARTBEAT_INTERVAL_MS}).",
)
@click.option(
    "--snapshot-entries",
    type=click.IntRange(min=1),
    default=Limits.snapshot_entries,
    show_default=True,
    envvar=ENV["--snapshot-entries"],
    help="Take a snapshot and compact the log after this many applied entries.",
)
@click.option(
    "--max-snapshot-bytes",
    type=click.IntRange(min=1),
    default=Limits.max_snapshot_bytes,
    show_default=True,
    envvar=ENV["--max-snapshot-bytes"],
    help="The largest snapshot this node takes from a leader (InstallSnapshot); a larger one is refused "
    "before it is read.",
)
@click.option(
    "--max-peer-queue",
    type=click.IntRange(min=1),
    default=Limits.max_peer_queue,
    show_default=True,
    envvar=ENV["--max-peer-queue"],
    help="Messages queued to one peer and not written yet; past them new messages to it are dropped "
    "(Raft sends them again).",
)
@click.option(
    "--max-peer-lookup-waiters",
    type=click.IntRange(min=1),
    default=Limits.max_peer_lookup_waiters,
    show_default=True,
    envvar=ENV["--max-peer-lookup-waiters"],
    help="Peer calls from unknown addresses held up at once while the members' names are looked up again "
    "(--peer-check members); more are refused at once.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(min=1, max=MAX_SESSION_LIMIT),
    default=Limits.max_sessions,
    show_default=True,
    envvar=ENV["--max-sessions"],
    help="Exactly-once sessions the cluster keeps; the least recently used goes, and a later write of its "
    "client is refused (\"session expired\"). The leader's value becomes the cluster's: give every node "
    "the same.",
)
@click.option(
    "--max-key-bytes",
    type=click.IntRange(min=1, max=MAX_REQUEST_FIELD_BYTES),
    default=Limits.max_key_bytes,
    show_default=True,
    envvar=ENV["--max-key-bytes"],
    help="The longest key a request may carry; a longer one is refused (INVALID_ARGUMENT).",
)
@click.option(
    "--max-value-bytes",
    type=click.IntRange(min=1, max=MAX_REQUEST_FIELD_BYTES),
    default=Limits.max_value_bytes,
    show_default=True,
    envvar=ENV["--max-value-bytes"],
    help="The longest value a write may carry; a longer one is refused (INVALID_ARGUMENT).",
)
@click.option(
    "--max-streams",
    type=click.IntRange(min=1),
    default=Limits.max_streams,
    show_default=True,
    envvar=ENV["--max-streams"],
    help="KV.Stream calls served at once; one more is refused (RESOURCE_EXHAUSTED), and raftd's clients "
    "use unary calls instead.",
)
@click.option(
    "--max-stream-requests",
    type=click.IntRange(min=1),
    default=Limits.max_stream_requests,
    show_default=True,
    envvar=ENV["--max-stream-requests"],
    help="Requests one stream may have unanswered; past them the node reads no more of it until answers "
    "go out.",
)
@click.option(
    "--max-stream-bytes",
    type=click.IntRange(min=1),
    default=Limits.max_stream_bytes,
    show_default=True,
    envvar=ENV["--max-stream-bytes"],
    help="Bytes of requests one stream may have unanswered; past them the node reads no more of it until "
    "answers go out.",
)
@click.option(
    "--max-batch-requests",
    type=click.IntRange(min=1),
    default=Limits.max_batch_requests,
    show_default=True,
    envvar=ENV["--max-batch-requests"],
    help="Requests one batch of a stream may carry; a larger batch ends the stream (INVALID_ARGUMENT) "
    "before any of it starts. raftd's clients send at most 4096.",
)
@click.option(
    "--max-txn-ops",
    type=click.IntRange(min=1),
    default=Limits.max_txn_ops,
    show_default=True,
    envvar=ENV["--max-txn-ops"],
    help="Requests one etcd Txn may carry (both branches, nested ones too), as etcd's flag of that name.",
)
@click.option(
    "--auto-compaction-mode",
    type=click.Choice(["revision", "periodic"]),
    default="revision",
    show_default=True,
    envvar=ENV["--auto-compaction-mode"],
    help="How --auto-compaction-retention reads, as etcd's flag: a count of revisions, or an age.",
)
@click.option(
    "--auto-compaction-retention",
    default=str(Limits.auto_compaction_retention),
    show_default=True,
    metavar="N|DURATION",
    envvar=ENV["--auto-compaction-retention"],
    help="The etcd keyspace's history kept; older revisions are compacted away (0: never). Revision mode: "
    "a number of revisions. Periodic mode: an age such as 1h, 30m or 90s, or a number of hours (etcd's).",
)
@click.option(
    "--auto-compaction-period",
    type=click.FloatRange(min=0),
    default=Limits.auto_compaction_period_s,
    metavar="SECONDS",
    envvar=ENV["--auto-compaction-period"],
    help="Seconds of history kept besides the revisions (0: no age bound); what periodic mode sets.",
)
@click.option(
    "--max-watch-streams",
    type=click.IntRange(min=1),
    default=Limits.max_watch_streams,
    show_default=True,
    envvar=ENV["--max-watch-streams"],
    help="etcd Watch calls served at once; one more is refused (RESOURCE_EXHAUSTED).",
)
@click.option(
    "--max-watchers-per-stream",
    type=click.IntRange(min=1),
    default=Limits.max_watchers_per_stream,
    show_default=True,
    envvar=ENV["--max-watchers-per-stream"],
    help="Watchers one etcd Watch call may hold; one more is cancelled as it is created.",
)
@click.option(
    "--watch-progress-notify-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=Limits.watch_progress_notify_interval_s,
    show_default=True,
    envvar=ENV["--watch-progress-notify-interval"],
    help="Seconds after which a watcher that asked for progress notifications and got no event is told "
    "the revision reached.",
)
@click.option(
    "--max-leases",
    type=click.IntRange(min=1),
    default=Limits.max_leases,
    show_default=True,
    envvar=ENV["--max-leases"],
    help="etcd leases the cluster holds; a grant past it is refused (RESOURCE_EXHAUSTED).",
)
@click.option(
    "--max-keepalive-streams",
    type=click.IntRange(min=1),
    default=Limits.max_keepalive_streams,
    show_default=True,
    envvar=ENV["--max-keepalive-streams"],
    help="etcd LeaseKeepAlive calls served at once; one more is refused (RESOURCE_EXHAUSTED).",
)
@click.option(
    "--stream-write-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=Limits.stream_write_timeout_s,
    show_default=True,
    envvar=ENV["--stream-write-timeout"],
    help="Seconds a stream's client may read no answer before the node ends the stream and frees what it "
    "held.",
)
@click.option(
    "--corrupt-check-interval",
    type=click.FloatRange(min=0),
    default=Limits.corrupt_check_interval_s,
    show_default=True,
    envvar=ENV["--corrupt-check-interval"],
    help="Seconds between checks that every node holds the same state (the leader has each hash it at one "
    "index; a difference raises an alarm in status and the log); 0 turns the check off.",
)
@click.option(
    "--peer-check",
    type=click.Choice(["members", "off"]),
    default="members",
    show_default=True,
    envvar=ENV["--peer-check"],
    help="members: take Raft traffic only from addresses the members' hosts resolve to (looked up again "
    "when a caller is not among them); off: from anyone, for networks that rewrite source addresses "
    "(NAT between members).",
)
@click.option(
    "--restore",
    "restore_path",
    metavar="FILE",
    envvar=ENV["--restore"],
    type=click.Path(dir_okay=False, path_type=Path),
    help="Seed an empty data directory from a backup (raftctl snapshot save), then run. Give every node "
    "of the new cluster the same file.",
)
@click.option(
    "--join",
    metavar="HOST:PORT[,...]",
    envvar=ENV["--join"],
    help="Join a running cluster through these members, after `raftctl member add` gave this node its id; "
    "--config is not read. The cluster found is kept in the data directory for restarts.",
)
@click.option(
    "--auto-promote",
    is_flag=True,
    envvar=ENV["--auto-promote"],
    help="As a learner, ask to be made a voter once caught up (instead of `raftctl member promote`).",
)
@click.option(
    "--max-learner-lag",
    type=click.IntRange(min=0),
    default=Limits.max_learner_lag,
    show_default=True,
    envvar=ENV["--max-learner-lag"],
    help="Promoting a learner is refused while it is more than this many entries behind the commit index.",
)
@click.version_option(package_name="raftd")
def node(
    node_id: int,
    config_path: str,
    data_dir: Path | None,
    listen: str | None,
    log_format: str,
    log_level: str,
    log_timestamps: bool,
    election_timeout: str | None,
    heartbeat_interval: int | None,
    snapshot_entries: int,
    max_snapshot_bytes: int,
    max_peer_queue: int,
    max_peer_lookup_waiters: int,
    max_sessions: int,
    max_key_bytes: int,
    max_value_bytes: int,
    max_streams: int,
    max_stream_requests: int,
    max_stream_bytes: int,
    max_batch_requests: int,
    max_txn_ops: int,
    auto_compaction_mode: str,
    auto_compaction_retention: str,
    auto_compaction_period: float,
    max_watch_streams: int,
    max_watchers_per_stream: int,
    watch_progress_notify_interval: float,
    max_leases: int,
    max_keepalive_streams: int,
    stream_write_timeout: float,
    corrupt_check_interval: float,
    peer_check: str,
    restore_path: Path | None,
    join: str | None,
    auto_promote: bool,
    max_learner_lag: int,
) -> None:
    """Run raftd node ID of the cluster described by --config (or found through --join)."""
    _warn_unknown_env(dict(os.environ))
    revisions, period = compaction(auto_compaction_mode, auto_compaction_retention, auto_compaction_period)
    malloc.tune()  # before any thread starts: the settings shape every arena
    data = data_dir or Path("data") / f"node-{node_id}"
    try:
        if join is not None:
            if restore_path is not None:
                raise ConfigError("--join and --restore do not go together: a joining node is sent the data")
            cluster = prepare(data, node_id, join)
        else:
            cluster = load_cluster(config_path)
        cluster.node(node_id)
        cluster = _override_timeouts(cluster, election_timeout, heartbeat_interval)
    except ConfigError as e:
        _fail(str(e), EXIT_CONFIG)
    except (JoinError, StorageError) as e:
        _fail(str(e), EXIT_FAILURE)
    logs.setup(node_id, log_format, log_level, log_timestamps)
    try:
        if restore_path is not None:
            backup = restore(restore_path, data, cluster.name, node_id)
            click.echo(f"Restored {restore_path} (index {backup.index}, term {backup.term}) into {data}")
        limits = Limits(
            snapshot_entries=snapshot_entries,
            max_snapshot_bytes=max_snapshot_bytes,
            max_peer_queue=max_peer_queue,
            max_peer_lookup_waiters=max_peer_lookup_waiters,
            max_sessions=max_sessions,
            max_key_bytes=max_key_bytes,
            max_value_bytes=max_value_bytes,
            max_streams=max_streams,
            max_stream_requests=max_stream_requests,
            max_stream_bytes=max_stream_bytes,
            max_batch_requests=max_batch_requests,
            max_txn_ops=max_txn_ops,
            auto_compaction_retention=revisions,
            auto_compaction_period_s=period,
            max_watch_streams=max_watch_streams,
            max_watchers_per_stream=max_watchers_per_stream,
            watch_progress_notify_interval_s=watch_progress_notify_interval,
            max_leases=max_leases,
            max_keepalive_streams=max_keepalive_streams,
            stream_write_timeout_s=stream_write_timeout,
            corrupt_check_interval_s=corrupt_check_interval,
            max_learner_lag=max_learner_lag,
        )
        asyncio.run(
            serve(
                cluster,
                node_id,
                data,
                listen,
                limits,
                check_peers=peer_check == "members",
                auto_promote=auto_promote,
            )
        )
    except Removed as e:
        # Not a failure: the cluster let this node go. Exit 0, so that a restart policy on failure does
        # not bring it back, and the data directory keeps it out should something restart it anyway.
        click.echo(f"raftd: {e}", err=True)
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
    problem = timing_problem(hb, (lo, hi), "--heartbeat-interval", "--election-timeout")
    if problem is not None:
        raise ConfigError(f"need heartbeat < election minimum < election maximum: {problem[1]}")
    return dataclasses.replace(cluster, election_timeout_ms=(lo, hi), heartbeat_interval_ms=hb)
