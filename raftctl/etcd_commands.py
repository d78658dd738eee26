"""raftctl's etcd-style commands over the etcd v3 API: get, put, del, watch, lease, txn and cas.

Names, flags and text lines are etcdctl 3.4's, so that its users feel at home; `-o json` is the shape of
etcdctl's `-w json` (keys and values in base64). docs/etcd.md ("raftctl") lists where they differ.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from raftctl.cli import COMMAND_EPILOG, Settings, fail, global_options
from raftctl.etcd import EtcdClient
from raftctl.etcd_render import (
    Doc,
    delete_doc,
    delete_lines,
    event_doc,
    event_lines,
    header_doc,
    kv_doc,
    lease_hex,
    lease_ttl_doc,
    lease_ttl_line,
    printable,
    put_doc,
    put_lines,
    range_doc,
    range_lines,
    txn_doc,
    txn_lines,
)
from raftctl.etcd_txn import TxnSyntaxError, key_range, parse, parse_lease
from raftctl.exits import EXIT_NOT_FOUND
from raftd.pb import etcd_rpc_pb2 as pb

# cli.py's own, made again: mypy cannot infer its type across the import cycle (cli.py registers these).
pass_settings = click.make_pass_decorator(Settings)

SORT_TARGETS = {
    "KEY": pb.RangeRequest.KEY,
    "VERSION": pb.RangeRequest.VERSION,
    "CREATE": pb.RangeRequest.CREATE,
    "MODIFY": pb.RangeRequest.MOD,
    "VALUE": pb.RangeRequest.VALUE,
}
SORT_ORDERS = {"ASCEND": pb.RangeRequest.ASCEND, "DESCEND": pb.RangeRequest.DESCEND}


def _client(s: Settings) -> EtcdClient:
    return EtcdClient(s.endpoints.addresses, s.timeout)


def _say(s: Settings, lines: list[str], doc: Doc) -> None:
    """etcdctl's lines (none: nothing at all), or with -o json the document on one line. Text goes out as
    UTF-8 bytes whatever the locale: printable() already made every line valid text."""
    if s.output == "json":
        click.echo(json.dumps(doc))
        return
    if lines:
        click.echo("\n".join(lines).encode("utf-8", "surrogateescape"))


def _bytes(text: str) -> bytes:
    """An argument as the exact bytes typed, even those that are not UTF-8."""
    return os.fsencode(text)


def _stdin() -> bytes:
    return sys.stdin.buffer.read()


def _range(key: str, range_end: str | None, prefix: bool, from_key: bool) -> tuple[bytes, bytes]:
    try:
        return key_range(_bytes(key), None if range_end is None else _bytes(range_end), prefix, from_key)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


class LeaseID(click.ParamType):  # type: ignore[type-arg]  # generic in newer click; 8.1 is supported
    """A lease id in hex, as `lease grant` prints it; refused with a usage error (exit 2) otherwise."""

    name = "lease_id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):  # the default, 0: no lease
            return value
        try:
            return parse_lease(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


# -- get, put, del ---------------------------------------------------------------------------------------


@click.command(epilog=COMMAND_EPILOG)
@global_options
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Every key that starts with KEY.")
@click.option("--range", "range_opt", metavar="END", help="Keys from KEY up to END, END excluded.")
@click.option("--from-key", is_flag=True, help="KEY and every key after it.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most N keys (0: no limit).")
@click.option("--rev", type=click.IntRange(min=0), default=0, help="The keyspace as of revision N.")
@click.option("--keys-only", is_flag=True, help="Keys without values.")
@click.option("--count-only", is_flag=True, help="Only how many keys there are.")
@click.option("--print-value-only", is_flag=True, help="Values without keys.")
@click.option("--serializable", is_flag=True, help="The node's own state: no quorum round, possibly stale.")
@click.option(
    "--consistency",
    type=click.Choice(["l", "s"]),
    help="etcdctl's spelling: l linearizable (the default), s serializable.",
)
@click.option("--sort-by", type=click.Choice(list(SORT_TARGETS), case_sensitive=False))
@click.option("--order", type=click.Choice(list(SORT_ORDERS), case_sensitive=False))
@pass_settings
def get(
    s: Settings,
    key: str,
    range_end: str | None,
    prefix: bool,
    range_opt: str | None,
    from_key: bool,
    limit: int,
    rev: int,
    keys_only: bool,
    count_only: bool,
    print_value_only: bool,
    serializable: bool,
    consistency: str | None,
    sort_by: str | None,
    order: str | None,
) -> None:
    """Print KEY and its value on two lines, or every key in [KEY, RANGE_END) (or with --prefix, or
    --from-key) and its value; nothing when there is none (exit 0, as etcdctl). Keys and values that are
    not UTF-8 print escaped on one line (\\xNN; -o json has them exactly, in base64)."""
    if range_end is not None and range_opt is not None:
        raise click.UsageError("give RANGE_END or --range END, not both")
    start, end = _range(key, range_end if range_opt is None else range_opt, prefix, from_key)
    request = pb.RangeRequest(
        key=start,
        range_end=end,
        limit=limit,
        revision=rev,
        keys_only=keys_only,
        count_only=count_only,
        serializable=serializable or consistency == "s",
        sort_target=SORT_TARGETS[sort_by.upper()] if sort_by else pb.RangeRequest.KEY,
        sort_order=SORT_ORDERS[order.upper()] if order else pb.RangeRequest.NONE,
    )
    with _client(s) as c:
        r = c.range(request)
    lines = [str(r.count)] if count_only else range_lines(r, keys_only=keys_only, value_only=print_value_only)
    _say(s, lines, range_doc(r))


@click.command(epilog=COMMAND_EPILOG)
@global_options
@click.argument("key")
@click.argument("value", required=False)
@click.option("--lease", type=LeaseID(), default=0, metavar="ID", help="Attach the key to lease ID (hex).")
@click.option("--prev-kv", is_flag=True, help="Also print the key-value it replaced.")
@click.option("--ignore-value", is_flag=True, help="Keep the key's current value (only the lease changes).")
@click.option("--ignore-lease", is_flag=True, help="Keep the key's current lease.")
@pass_settings
def put(
    s: Settings,
    key: str,
    value: str | None,
    lease: int,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
) -> None:
    """Store VALUE under KEY and print OK; VALUE - reads it from stdin, exactly."""
    if (value is None) != ignore_value:
        raise click.UsageError("give VALUE (- reads stdin) or --ignore-value, not both or neither")
    if lease and ignore_lease:
        raise click.UsageError("give --lease or --ignore-lease, not both")
    raw = b"" if value is None else _stdin() if value == "-" else _bytes(value)
    request = pb.PutRequest(
        key=_bytes(key),
        value=raw,
        lease=lease,
        prev_kv=prev_kv,
        ignore_value=ignore_value,
        ignore_lease=ignore_lease,
    )
    with _client(s) as c:
        r = c.put(request)
    _say(s, put_lines(r), put_doc(r, prev_kv))


@click.command("del", epilog=COMMAND_EPILOG)
@global_options
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Every key that starts with KEY.")
@click.option("--from-key", is_flag=True, help="KEY and every key after it.")
@click.option("--prev-kv", is_flag=True, help="Also print each key-value deleted.")
@pass_settings
def delete(s: Settings, key: str, range_end: str | None, prefix: bool, from_key: bool, prev_kv: bool) -> None:
    """Delete KEY, or every key in [KEY, RANGE_END) (or with --prefix, or --from-key); print how many
    were deleted (0 is no error, as in etcdctl)."""
    start, end = _range(key, range_end, prefix, from_key)
    with _client(s) as c:
        r = c.delete_range(pb.DeleteRangeRequest(key=start, range_end=end, prev_kv=prev_kv))
    _say(s, delete_lines(r), delete_doc(r))


# -- watch -----------------------------------------------------------------------------------------------


@click.command(epilog=COMMAND_EPILOG)
@global_options
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Every key that starts with KEY.")
@click.option("--rev", type=click.IntRange(min=0), default=0, help="From revision N (included), not now.")
@click.option("--prev-kv", is_flag=True, help="Also print each key's previous key-value.")
@click.option(
    "--max-events",
    type=click.IntRange(min=1),
    metavar="N",
    help="Exit (0) after N events; else watch until Ctrl-C (exit 130).",
)
@pass_settings
def watch(
    s: Settings,
    key: str,
    range_end: str | None,
    prefix: bool,
    rev: int,
    prev_kv: bool,
    max_events: int | None,
) -> None:
    """Print each change of KEY (or [KEY, RANGE_END), or --prefix) as etcdctl does: PUT or DELETE, then
    the key and the value (empty for a delete); with -o json one object per event, per line.

    A broken stream is resumed at the next endpoint from the revision after the last event printed, so no
    event is lost or repeated. A --rev already compacted ends in one error line naming the earliest
    revision left (exit 5)."""
    start, end = _range(key, range_end, prefix, False)
    with _client(s) as c:
        events = c.watch(start, end, rev, prev_kv)
        try:
            for n, event in enumerate(events, start=1):
                _say(s, event_lines(event), event_doc(event, prev_kv))
                if n == max_events:
                    return
        finally:
            events.close()


# -- leases ----------------------------------------------------------------------------------------------


@click.group(epilog=COMMAND_EPILOG, invoke_without_command=True)
@click.pass_context
def lease(ctx: click.Context) -> None:
    """Leases: grant, revoke, keep-alive, timetolive, list. Ids are hex, as etcdctl prints them."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@lease.command("grant", epilog=COMMAND_EPILOG)
@global_options
@click.argument("ttl", type=click.IntRange(min=1), metavar="TTL")
@pass_settings
def lease_grant(s: Settings, ttl: int) -> None:
    """Grant a lease of TTL seconds (raised to the cluster's minimum, 1.5 election timeouts)."""
    with _client(s) as c:
        r = c.lease_grant(ttl)
    _say(
        s,
        [f"lease {lease_hex(r.ID)} granted with TTL({r.TTL}s)"],
        {"header": header_doc(r.header), "ID": r.ID, "TTL": r.TTL},
    )


@lease.command("revoke", epilog=COMMAND_EPILOG)
@global_options
@click.argument("lease_id", type=LeaseID(), metavar="ID")
@pass_settings
def lease_revoke(s: Settings, lease_id: int) -> None:
    """Revoke lease ID, deleting every key attached to it; exit 1 when there is no such lease."""
    with _client(s) as c:
        r = c.lease_revoke(lease_id)
    _say(s, [f"lease {lease_hex(lease_id)} revoked"], {"header": header_doc(r.header)})


@lease.command("keep-alive", epilog=COMMAND_EPILOG)
@global_options
@click.argument("lease_id", type=LeaseID(), metavar="ID")
@click.option("--once", is_flag=True, help="Renew once and exit.")
@pass_settings
def lease_keep_alive(s: Settings, lease_id: int, once: bool) -> None:
    """Keep lease ID alive until Ctrl-C (exit 130), printing each renewal; when the lease is gone, an
    error line and exit 1."""
    with _client(s) as c:
        answers = c.keep_alive(lease_id)
        try:
            for r in answers:
                _say(
                    s,
                    [f"lease {lease_hex(r.ID)} keepalived with TTL({r.TTL})"],
                    {"header": header_doc(r.header), "ID": r.ID, "TTL": r.TTL},
                )
                if once:
                    return
        finally:
            answers.close()


@lease.command("timetolive", epilog=COMMAND_EPILOG)
@global_options
@click.argument("lease_id", type=LeaseID(), metavar="ID")
@click.option("--keys", is_flag=True, help="Also the keys attached to it.")
@pass_settings
def lease_timetolive(s: Settings, lease_id: int, keys: bool) -> None:
    """Print lease ID's granted and remaining TTL ("already expired" when there is none, exit 0 as
    etcdctl; -o json: TTL -1)."""
    with _client(s) as c:
        r = c.lease_time_to_live(lease_id, keys)
    _say(s, [lease_ttl_line(r, keys)], lease_ttl_doc(r))


@lease.command("list", epilog=COMMAND_EPILOG)
@global_options
@pass_settings
def lease_list(s: Settings) -> None:
    """Print how many leases there are, then their ids."""
    with _client(s) as c:
        r = c.lease_list()
    ids = [x.ID for x in r.leases]
    _say(
        s,
        [f"found {len(ids)} leases", *(lease_hex(x) for x in ids)],
        {"header": header_doc(r.header), "leases": [{"ID": x} for x in ids]},
    )


# -- transactions ----------------------------------------------------------------------------------------


@click.command(epilog=COMMAND_EPILOG)
@global_options
@pass_settings
def txn(s: Settings) -> None:
    """Run a transaction read from stdin in etcdctl's format, all at one revision: compares, a blank
    line, the requests run when every compare holds, a blank line, the requests run otherwise. Prints
    SUCCESS or FAILURE (both exit 0), then each request's output after a blank line.

    \b
    mod("config") < "42"
    value("owner") = "me"
    \b
    put config "new value"
    get owner
    \b
    get config

    Compares: value/val, version/ver, create/c, mod/m, lease (hex) ("KEY") OP "VALUE", OP one of
    = != < >; \\xNN in KEY or VALUE stands for a byte. Requests: put KEY VALUE [--lease ID] [--prev-kv];
    get KEY [RANGE_END] [--prefix] [--from-key] [--limit N] [--rev N] [--keys-only] [--count-only];
    del KEY [RANGE_END] [--prefix] [--from-key] [--prev-kv]."""
    try:
        request = parse(_stdin().decode("utf-8", "surrogateescape"))
    except TxnSyntaxError as e:
        raise click.UsageError(str(e)) from None
    with _client(s) as c:
        r = c.txn(request)
    _say(s, txn_lines(r), txn_doc(r))


@click.command(epilog=COMMAND_EPILOG)
@global_options
@click.argument("args", nargs=-1, required=True, metavar="KEY [EXPECTED] NEW")
@click.option("--absent", is_flag=True, help="Swap only if KEY does not exist (give no EXPECTED).")
@pass_settings
def cas(s: Settings, args: tuple[str, ...], absent: bool) -> None:
    """Compare-and-swap: store NEW under KEY only if KEY holds EXPECTED (or, with --absent, does not
    exist), in one transaction; print OK.

    When the compare fails nothing is written: an error line says what KEY holds and the exit code is 1
    (with -o json, the document says "succeeded": false and holds the key-value found)."""
    if len(args) != (2 if absent else 3):
        raise click.UsageError("expected KEY NEW with --absent, else KEY EXPECTED NEW")
    key, new = _bytes(args[0]), _bytes(args[-1])
    if absent:
        compare = pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=0)
    else:
        compare = pb.Compare(key=key, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=_bytes(args[1]))
    request = pb.TxnRequest(
        compare=[compare],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=new))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
    )
    with _client(s) as c:
        r = c.txn(request, "cas")
    if r.succeeded:
        _say(s, ["OK"], {"header": header_doc(r.header), "succeeded": True})
        return
    found = list(r.responses[0].response_range.kvs) if r.responses else []
    holds = f"it holds {printable(found[0].value)!r}" if found else "it does not exist"
    _say(
        s,
        [],
        {"header": header_doc(r.header), "succeeded": False, "kv": kv_doc(found[0]) if found else None},
    )
    what = "exists" if absent else f"did not hold {printable(_bytes(args[1]))!r}"
    fail(f"{printable(key)} {what} ({holds}); nothing written", EXIT_NOT_FOUND)


COMMANDS = (get, put, delete, watch, lease, txn, cas)


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
