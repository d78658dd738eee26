"""`raftctl`: one-shot commands for scripts, and the original client's interactive shell without one.

Every failure ends as one line on stderr and a documented exit code (EXIT_* below), never a traceback:
scripts branch on the code, people read the line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar

from raftd.grpcenv import POLL_ENGINE

# gRPC's C core would print its own copy of connection errors that we report in one line; it reads this
# before grpc is first imported (by raftctl.client below). Set GRPC_VERBOSITY yourself to see its logs.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
os.environ.setdefault("GRPC_EXPERIMENTS", POLL_ENGINE)  # raftd/grpcenv.py

import click

from raftctl.client import (
    DEFAULT_TIMEOUT_S,
    Client,
    ClientError,
    InvalidArgument,
    Leader,
    NotFound,
)
from raftctl.exits import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OUTCOME_UNKNOWN,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    exit_code,
)
from raftctl.render import (
    alarm_lines,
    change_doc,
    change_line,
    leader_line,
    member_doc,
    members_table,
    status_json,
    status_table,
    unreachable_summary,
)
from raftd.backup import BackupError, unpack
from raftd.config import ConfigError, load_cluster, parse_address, parse_endpoints

ENV_ENDPOINTS = "RAFTCTL_ENDPOINTS"
DEFAULT_CONFIG = "config.conf"
DEFAULT_ENDPOINT = "127.0.0.1:50000"

EPILOG = f"""\b
Endpoints, first found wins: --endpoints or --cluster, the environment
variable {ENV_ENDPOINTS}, ./{DEFAULT_CONFIG} when present, else {DEFAULT_ENDPOINT}.

\b
Exit codes:
  {EXIT_OK}    success
  {EXIT_NOT_FOUND}    key not found (getval, delete); lease not found (lease revoke,
       lease keep-alive, put --lease); cas: the compare failed, nothing was written
  {EXIT_USAGE}    usage error: bad option, argument, endpoint list or cluster map
  {EXIT_UNAVAILABLE}    cluster unavailable: no leader, nodes unreachable, or --timeout passed
  {EXIT_INVALID}    request refused as invalid by the server (INVALID_ARGUMENT)
  {EXIT_ERROR}    any other server or internal error
  {EXIT_OUTCOME_UNKNOWN}    a write's outcome stayed unknown: it may have applied (read to find out)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"raftctl: error: {_one_line(message)}", err=True)
    sys.exit(code)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class BadClusterMap(click.ClickException):
    """A bad --endpoints list or cluster map: a usage error, but one that --help cannot fix."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Endpoints:
    """Where the cluster is; ids maps an endpoint to its node id when a cluster map named it."""

    addresses: list[str]
    ids: dict[str, int] = field(default_factory=dict)


def resolve_endpoints(endpoints: str | None, cluster: str | None, env: dict[str, str]) -> Endpoints:
    """Command-line flags first, then the environment, then ./config.conf, then the seed's first node.

    A flag beats the environment because it is the more specific, later choice of the person typing.
    Raises a ClickException with exit code 2 for a bad list or map.
    """
    if endpoints is not None and cluster is not None:
        raise click.UsageError("give --endpoints or --cluster, not both")
    try:
        if endpoints is not None:
            return Endpoints(list(parse_endpoints(endpoints)))
        if cluster is not None:
            return _from_map(cluster)
        if env.get(ENV_ENDPOINTS, "").strip():
            return Endpoints(list(parse_endpoints(env[ENV_ENDPOINTS])))
        if Path(DEFAULT_CONFIG).is_file():
            return _from_map(DEFAULT_CONFIG)
    except ConfigError as e:
        raise BadClusterMap(str(e)) from None
    return Endpoints([DEFAULT_ENDPOINT])


def _from_map(path: str) -> Endpoints:
    cluster = load_cluster(path)
    return Endpoints([n.address for n in cluster.nodes], {n.address: n.id for n in cluster.nodes})


@dataclass
class Settings:
    """The global options; endpoints are resolved on first use so `CMD --help` never reads a map."""

    endpoints_opt: str | None
    cluster_opt: str | None
    timeout: float
    output: str
    _resolved: Endpoints | None = None

    @property
    def endpoints(self) -> Endpoints:
        if self._resolved is None:
            self._resolved = resolve_endpoints(self.endpoints_opt, self.cluster_opt, dict(os.environ))
        return self._resolved

    def client(self) -> Client:
        return Client(self.endpoints.addresses, self.timeout)

    def emit(self, text: str | None, doc: object) -> None:
        """Print text (nothing when None) or, with -o json, doc as one JSON document."""
        if self.output == "json":
            click.echo(json.dumps(doc))
        elif text is not None:
            click.echo(text)


pass_settings = click.make_pass_decorator(Settings)

# Every command's help ends with this; the whole list of sources and exit codes is in `raftctl --help`.
COMMAND_EPILOG = (
    "--endpoints, --cluster, --timeout and -o may come before or after the command. "
    "`raftctl --help` tells where the endpoints come from, and the exit codes."
)


def _late(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        settings = ctx.find_object(Settings)
        if value is not None and settings is not None:
            setattr(settings, field, value)
            settings._resolved = None

    return store


def global_options(command: F) -> F:
    """The global options once more after the command, where etcdctl's -w, kubectl's -o and docker's
    --format go: `raftctl status -o json`. Given in both places, the later one wins."""
    options = [
        click.option(
            "--endpoints", metavar="HOST:PORT[,...]", expose_value=False, callback=_late("endpoints_opt")
        ),
        click.option("--cluster", metavar="FILE", expose_value=False, callback=_late("cluster_opt")),
        click.option(
            "--timeout", type=Seconds(), metavar="SECONDS", expose_value=False, callback=_late("timeout")
        ),
        click.option(
            "-o",
            "--output",
            type=click.Choice(["text", "json"]),
            expose_value=False,
            callback=_late("output"),
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


class Seconds(click.ParamType):  # type: ignore[type-arg]  # generic in newer click; 8.1 is supported
    """A positive number of seconds, refused in words a user reads ("not a number", not "float range")."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not seconds > 0:
            self.fail(f"must be more than 0 seconds, not {value}", param, ctx)
        return seconds


class _Group(click.Group):
    """Turns every failure into one stderr line and an exit code: no tracebacks, no "Aborted!"."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClientError as e:
            fail(str(e), exit_code(e))
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            raise  # the reader went away (`raftctl status | head -1`): Click exits quietly
        except Exception as e:
            fail(f"internal error: {type(e).__name__}: {e}", EXIT_ERROR)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[call-overload]  # via *args
        except click.exceptions.ClickException as e:
            hint = ""
            ctx = getattr(e, "ctx", None)
            if isinstance(e, click.UsageError) and ctx is not None:
                hint = f" (try '{ctx.command_path} --help')"
            fail(f"{e.format_message()}{hint}", e.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            sys.exit(EXIT_INTERRUPTED)
        if not standalone:
            return rv
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.group(
    cls=_Group,
    invoke_without_command=True,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--endpoints",
    metavar="HOST:PORT[,...]",
    help=f"Nodes to talk to (also ${ENV_ENDPOINTS}).",
)
@click.option(
    "--cluster",
    metavar="FILE",
    help="A cluster map: 'ID HOST PORT' lines, or YAML when it ends in .yaml/.yml.",
)
@click.option(
    "--timeout",
    type=Seconds(),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Overall time for one command, retries and leader changes included.",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--stop-on-error",
    is_flag=True,
    help="The shell reading a script: stop at the first line that fails (else it runs every line); "
    "either way it exits with that line's code.",
)
@click.version_option(package_name="raftd")
@click.pass_context
def main(
    ctx: click.Context,
    endpoints: str | None,
    cluster: str | None,
    timeout: float,
    output: str,
    stop_on_error: bool,
) -> None:
    """Client of a raftd cluster. Without a command, runs the original client's interactive shell."""
    settings = Settings(endpoints, cluster, timeout, output)
    ctx.obj = settings
    if ctx.invoked_subcommand is None:
        from raftctl.shell import Shell

        resolved = settings.endpoints
        shell = Shell(resolved.addresses, timeout, resolved.ids, stop_on_error=stop_on_error)
        sys.exit(shell.run())


@main.command(epilog=COMMAND_EPILOG)
@global_options
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "--file",
    "value_file",
    type=click.File("rb"),
    help="Take the value from FILE, exactly (too long for a command line, or not text you can type).",
)
@pass_settings
def setval(s: Settings, key: str, value: str | None, value_file: BinaryIO | None) -> None:
    """Store VALUE under KEY; VALUE - reads it from stdin, exactly. Prints nothing, like the
    original client."""
    if (value is None) == (value_file is None):
        raise click.UsageError("give VALUE or --file FILE (VALUE - reads stdin)")
    if value_file is not None:
        value = _text(value_file.read(), value_file.name)
    elif value == "-":
        value = _text(sys.stdin.buffer.read(), "stdin")
    assert value is not None
    with s.client() as c:
        index = c.put(key, value)
    s.emit(None, {"key": key, "value": value, "index": index})


def _text(raw: bytes, source: str) -> str:
    """A value read as bytes: kept exactly (no newline stripped), and UTF-8 text as every value must be."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"the value from {source} is not valid UTF-8") from None


@main.command(epilog=COMMAND_EPILOG)
@global_options
@click.argument("key")
@click.option("--local", is_flag=True, help="Read the node's own state: faster, possibly stale.")
@pass_settings
def getval(s: Settings, key: str, local: bool) -> None:
    """Print the value under KEY; prints None and exits 1 when it is absent."""
    with s.client() as c:
        try:
            value = c.get(key, linearizable=not local)
        except NotFound:
            s.emit("None", {"key": key, "found": False, "value": None})
            sys.exit(EXIT_NOT_FOUND)
    s.emit(value, {"key": key, "found": True, "value": value})


@main.command(epilog=COMMAND_EPILOG)
@global_options
@click.argument("key")
@pass_settings
def delete(s: Settings, key: str) -> None:
    """Remove KEY. Prints nothing; prints None and exits 1 when it was absent."""
    with s.client() as c:
        deleted = c.delete(key)
    s.emit(None if deleted else "None", {"key": key, "deleted": deleted})
    if not deleted:
        sys.exit(EXIT_NOT_FOUND)


@main.command(epilog=COMMAND_EPILOG)
@global_options
@pass_settings
def getleader(s: Settings) -> None:
    """Print the leader as "ID HOST:PORT"."""
    with s.client() as c:
        leader = c.get_leader()
    s.emit(leader_line(leader), leader_doc(leader))


@main.command(epilog=COMMAND_EPILOG)
@global_options
@click.argument("period", type=int)
@pass_settings
def suspend(s: Settings, period: int) -> None:
    """Suspend the first endpoint's node for PERIOD seconds (pick it with --endpoints).

    The node checks the bounds (1..3600; exit 4 outside them), so that every client hears the same."""
    target = s.endpoints.addresses[0]
    with s.client() as c:
        c.suspend(period, target)
    s.emit(None, {"endpoint": target, "period": period})


@main.group(epilog=COMMAND_EPILOG, invoke_without_command=True)
@click.pass_context
def snapshot(ctx: click.Context) -> None:
    """Backups of the whole store."""
    if ctx.invoked_subcommand is None:
        # As docker, kubectl and etcdctl do for a group given no command: its help, on stdout.
        click.echo(ctx.get_help())


@snapshot.command("save", epilog=COMMAND_EPILOG)
@global_options
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@pass_settings
def snapshot_save(s: Settings, path: Path) -> None:
    """Write a consistent backup to FILE; `raftd --restore FILE` seeds a new cluster from it."""
    with s.client() as c:
        raw = c.backup()
    try:
        backup = unpack(raw, "the backup received")
    except BackupError as e:
        fail(str(e), EXIT_ERROR)
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_bytes(raw)
        partial.replace(path)  # a crash never leaves a half-written FILE behind
    except OSError as e:
        partial.unlink(missing_ok=True)
        fail(f"{path}: cannot write: {e.strerror or e}", EXIT_ERROR)
    s.emit(
        f"Snapshot saved to {path} (index {backup.index}, term {backup.term}, {len(raw)} bytes)",
        {
            "path": str(path),
            "index": backup.index,
            "term": backup.term,
            "bytes": len(raw),
            "cluster": backup.cluster,
        },
    )


@main.group(epilog=COMMAND_EPILOG, invoke_without_command=True)
@click.pass_context
def member(ctx: click.Context) -> None:
    """Membership: list, add (as a learner), promote, remove, update (docs/operations.md)."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return parse_address(value)
    except ConfigError:
        raise click.BadParameter(f"{value!r} is not one HOST:PORT") from None


@member.command("list", epilog=COMMAND_EPILOG)
@global_options
@pass_settings
def member_list(s: Settings) -> None:
    """The members, their roles and (from the leader) how far each has the log."""
    with s.client() as c:
        r = c.member_list()
    s.emit(
        members_table(list(r.members), r.leader_id),
        {
            "cluster": r.cluster,
            "cluster_id": r.cluster_id,
            "leader_id": r.leader_id if r.leader_id >= 0 else None,
            "recorded": r.recorded,
            "members": [member_doc(m) for m in r.members],
        },
    )


def _id_and_address(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[int | None, str]:
    """[ID] HOST:PORT."""
    if len(value) not in (1, 2):
        raise click.BadParameter("expected [ID] HOST:PORT")
    node: int | None = None
    if len(value) == 2:
        if not value[0].isdigit():
            raise click.BadParameter(f"{value[0]!r} is not a node id (a number from 0)")
        node = int(value[0])
    return node, _address(ctx, param, value[-1])


@member.command("add", epilog=COMMAND_EPILOG)
@global_options
@click.argument("where", metavar="[ID] HOST:PORT", nargs=-1, required=True, callback=_id_and_address)
@click.option(
    "--learner",
    is_flag=True,
    help="Accepted for etcdctl's habit: every new member is a learner until promoted.",
)
@pass_settings
def member_add(s: Settings, where: tuple[int | None, str], learner: bool) -> None:
    """Add a node at HOST:PORT as a learner, under ID or the lowest id never given; prints its id and how
    to start it. An ID given before, to a member now or ever, is refused (exit 4): ids are never reused.

    Start the node with `raftd ID --join ENDPOINTS`; once it has caught up, `raftctl member promote ID`
    makes it a voter (or start it with --auto-promote)."""
    node, address = where
    with s.client() as c:
        r = c.member_add(address, node)
    s.emit(change_line("add", r, list(s.endpoints.addresses)), change_doc(r))


@member.command("promote", epilog=COMMAND_EPILOG)
@global_options
@click.argument("node_id", metavar="ID", type=int)
@pass_settings
def member_promote(s: Settings, node_id: int) -> None:
    """Make learner ID a voter; refused (exit 5) while it is more than --max-learner-lag entries behind."""
    with s.client() as c:
        r = c.member_promote(node_id)
    s.emit(change_line("promote", r, []), change_doc(r))


@member.command("remove", epilog=COMMAND_EPILOG)
@global_options
@click.argument("node_id", metavar="ID", type=int)
@pass_settings
def member_remove(s: Settings, node_id: int) -> None:
    """Remove member ID; it stops with "removed from the cluster". Its id is never given again."""
    with s.client() as c:
        r = c.member_remove(node_id)
    s.emit(change_line("remove", r, []), change_doc(r))


@member.command("update", epilog=COMMAND_EPILOG)
@global_options
@click.argument("node_id", metavar="ID", type=int)
@click.argument("address", metavar="HOST:PORT", callback=_address)
@pass_settings
def member_update(s: Settings, node_id: int, address: str) -> None:
    """Record that member ID now listens at HOST:PORT."""
    with s.client() as c:
        r = c.member_update(node_id, address)
    s.emit(change_line("update", r, []), change_doc(r))


@main.command("transfer-leader", epilog=COMMAND_EPILOG)
@global_options
@click.argument("node_id", metavar="ID", type=int)
@pass_settings
def transfer_leader(s: Settings, node_id: int) -> None:
    """Hand leadership to node ID; prints the leader afterwards as "ID HOST:PORT"."""
    with s.client() as c:
        leader = c.transfer_leader(node_id)
    if leader.address:
        s.emit(leader_line(leader), leader_doc(leader))
    else:  # a node older than the response's address field
        s.emit(str(leader.id), {"id": leader.id, "address": None, "term": None})


@main.command("help")
@click.argument("command", required=False)
@click.pass_context
def help_(ctx: click.Context, command: str | None) -> None:
    """Print the help of COMMAND, or of raftctl."""
    parent = ctx.parent
    assert parent is not None
    if command is None:
        click.echo(parent.get_help())
        return
    found = main.get_command(parent, command)
    if found is None:
        raise click.UsageError(f"no such command {command!r}")
    with click.Context(found, info_name=command, parent=parent) as sub:
        click.echo(found.get_help(sub))


def leader_doc(leader: Leader) -> dict[str, object]:
    """One JSON shape for a leader wherever one is printed."""
    return {"id": leader.id, "address": leader.address, "term": leader.term}


@main.command(epilog=COMMAND_EPILOG)
@global_options
@pass_settings
def status(s: Settings) -> None:
    """A table of every endpoint's node, and of every member that joined since: its own view, health,
    alarms, and whether it answered.

    Exits 3 (after the table) when any endpoint did not answer, else 5 when a node raised an alarm (each
    alarm on a line of stderr).
    """
    resolved = s.endpoints
    with s.client() as c:
        rows = c.status_all()
    s.emit(status_table(rows, resolved.ids), status_json(rows, resolved.ids))
    problem = unreachable_summary(rows)
    if problem is not None:
        fail(problem, EXIT_UNAVAILABLE)
    alarms = alarm_lines(rows)
    if alarms:
        fail("; ".join(alarms), EXIT_ERROR)


@main.command(epilog=COMMAND_EPILOG)
@global_options
@click.option(
    "--workload",
    type=click.Choice(["write", "read", "local-read"]),
    default="write",
    show_default=True,
    help="write: Put; read: linearizable Get; local-read: Get from the node's own state.",
)
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Measured time, after the warmup.",
)
@click.option("--value-size", type=click.IntRange(min=0), default=16, show_default=True, metavar="BYTES")
@click.option("--keys", type=click.IntRange(min=1), default=1000, show_default=True, help="Key space size.")
@click.option(
    "--warmup",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Load before measuring (not counted).",
)
@pass_settings
def bench(
    s: Settings,
    workload: str,
    concurrency: int,
    duration: float,
    value_size: int,
    keys: int,
    warmup: float,
) -> None:
    """Load the cluster from CONCURRENCY asyncio workers sharing one client; report throughput and latency.

    Every write is acknowledged individually, after commit. Read workloads first write each key once.
    --timeout bounds each operation (retries included); an operation that fails counts as an error and
    its worker goes on. Exits 3 when no operation succeeded.
    """
    import asyncio

    from raftctl.bench import BenchConfig, result_table
    from raftctl.bench import bench as run

    cfg = BenchConfig(workload, concurrency, duration, value_size, keys, warmup)
    result = asyncio.run(run(s.endpoints.addresses, s.timeout, cfg))
    s.emit(result_table(result), result.to_dict())
    if result.ops == 0:
        fail(f"no operation succeeded; first error: {result.first_error or 'none'}", EXIT_UNAVAILABLE)


# etcdctl's commands over the etcd API (get, put, del, watch, lease, txn, cas); imported here, once main
# exists and grpc's environment above is set.
from raftctl.etcd_commands import register  # noqa: E402

register(main)
