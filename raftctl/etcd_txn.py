"""etcdctl's transaction text, read into a TxnRequest: compares, a blank line, the requests run when every
compare holds, a blank line, the requests run otherwise; the end of input may end any part.

    mod("config") < "42"
    value("owner") = "me"

    put config "new value"
    get owner

    get config

A compare is TARGET("KEY") OP "VALUE", TARGET one of value/val, version/ver, create/c, mod/m, lease (its
VALUE an id in hex), OP one of = != < >; KEY and VALUE are double-quoted, with \\" \\\\ \\n \\r \\t and
\\xNN escapes (the last for bytes that are not UTF-8, as raftctl's text output shows them). A request is
`put KEY VALUE [--lease ID] [--prev-kv]`, `get KEY [RANGE_END] [--prefix] [--from-key] [--limit N]
[--rev N] [--keys-only] [--count-only]` or `del KEY [RANGE_END] [--prefix] [--from-key] [--prev-kv]`,
its words split as a shell does (quotes group them).
"""

from __future__ import annotations

import re
import shlex

from raftctl.etcd import prefix_end
from raftd.pb import etcd_rpc_pb2 as pb


class TxnSyntaxError(ValueError):
    """The text is not a transaction; str() names the line."""


_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_COMPARE = re.compile(rf"^(\w+)\({_QUOTED}\)\s*(=|!=|<|>)\s*{_QUOTED}$")
_RESULTS = {
    "=": pb.Compare.EQUAL,
    "!=": pb.Compare.NOT_EQUAL,
    "<": pb.Compare.LESS,
    ">": pb.Compare.GREATER,
}
_ESCAPES = {"\\": b"\\", '"': b'"', "n": b"\n", "r": b"\r", "t": b"\t"}
# Options of each request: those that take a value, and flags.
_VALUED = {"put": {"lease"}, "get": {"limit", "rev"}, "del": set()}
_FLAGS = {
    "put": {"prev-kv"},
    "get": {"prefix", "from-key", "keys-only", "count-only"},
    "del": {"prefix", "from-key", "prev-kv"},
}


def to_bytes(text: str) -> bytes:
    """Text read with surrogateescape (argv, stdin) back to the exact bytes it came from."""
    return text.encode("utf-8", "surrogateescape")


def unquote(text: str) -> bytes:
    """The bytes a quoted string's inside stands for."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out += to_bytes(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt]
            i += 2
        elif nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2 : i + 4]):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            raise ValueError(f"unknown escape {text[i : i + 2]!r}")
    return bytes(out)


def parse_lease(text: str) -> int:
    """A lease id in hex, as etcdctl prints and takes it."""
    try:
        lease = int(text, 16)
    except ValueError:
        raise ValueError(f"bad lease ID {text!r}: expected hex, as `lease grant` prints it") from None
    if not 0 < lease < 2**63:
        raise ValueError(f"bad lease ID {text!r}: out of range")
    return lease


def key_range(key: bytes, range_end: bytes | None, prefix: bool, from_key: bool) -> tuple[bytes, bytes]:
    """(key, range_end) as etcd reads them: one key, [key, range_end), a prefix, or key and every key
    after it. An empty key with --prefix or --from-key means every key, as in etcdctl."""
    if sum([range_end is not None, prefix, from_key]) > 1:
        raise ValueError("give one of RANGE_END, --prefix and --from-key")
    if prefix:
        return (key, prefix_end(key)) if key else (b"\x00", b"\x00")
    if from_key:
        return key or b"\x00", b"\x00"
    return key, range_end or b""


def parse(text: str) -> pb.TxnRequest:
    """Each blank line ends a part, as in etcdctl (a transaction without compares starts with one)."""
    parts: list[list[tuple[int, str]]] = [[], [], []]
    part = 0
    for n, line in enumerate((line.strip() for line in text.splitlines()), start=1):
        if not line:
            part += 1
        elif part > 2:
            raise TxnSyntaxError(f"line {n}: unexpected input after the failure requests: {line!r}")
        else:
            parts[part].append((n, line))
    compares, success, failure = parts
    return pb.TxnRequest(
        compare=[_compare(n, line) for n, line in compares],
        success=[_request(n, line) for n, line in success],
        failure=[_request(n, line) for n, line in failure],
    )


def _compare(n: int, line: str) -> pb.Compare:
    m = _COMPARE.match(line)
    if m is None:
        raise TxnSyntaxError(f'line {n}: malformed comparison {line!r} (expected e.g. value("k") = "v")')
    target, raw_key, op, raw_value = m.groups()
    try:
        key, value = unquote(raw_key), unquote(raw_value)
        c = pb.Compare(key=key, result=_RESULTS[op])
        if target in ("value", "val"):
            c.target, c.value = pb.Compare.VALUE, value
        elif target == "lease":
            c.target, c.lease = pb.Compare.LEASE, int(value.decode(), 16)  # 0: no lease
        elif target in ("version", "ver"):
            c.target, c.version = pb.Compare.VERSION, int(value)
        elif target in ("create", "c"):
            c.target, c.create_revision = pb.Compare.CREATE, int(value)
        elif target in ("mod", "m"):
            c.target, c.mod_revision = pb.Compare.MOD, int(value)
        else:
            raise ValueError(f"unknown target {target!r}")
    except ValueError as e:
        raise TxnSyntaxError(f"line {n}: malformed comparison {line!r}: {e}") from None
    return c


def _request(n: int, line: str) -> pb.RequestOp:
    try:
        words = shlex.split(line)
        verb = words[0]
        if verb not in _VALUED:
            raise ValueError(f"unknown request {verb!r} (expected put, get or del)")
        args, flags, values = _options(verb, words[1:])
        if verb == "put":
            if len(args) != 2:
                raise ValueError("expected put KEY VALUE")
            lease = parse_lease(values["lease"]) if "lease" in values else 0
            return pb.RequestOp(
                request_put=pb.PutRequest(
                    key=to_bytes(args[0]), value=to_bytes(args[1]), lease=lease, prev_kv="prev-kv" in flags
                )
            )
        if len(args) not in (1, 2):
            raise ValueError(f"expected {verb} KEY [RANGE_END]")
        key, end = key_range(
            to_bytes(args[0]),
            to_bytes(args[1]) if len(args) == 2 else None,
            "prefix" in flags,
            "from-key" in flags,
        )
        if verb == "del":
            return pb.RequestOp(
                request_delete_range=pb.DeleteRangeRequest(key=key, range_end=end, prev_kv="prev-kv" in flags)
            )
        return pb.RequestOp(
            request_range=pb.RangeRequest(
                key=key,
                range_end=end,
                limit=int(values.get("limit", 0)),
                revision=int(values.get("rev", 0)),
                keys_only="keys-only" in flags,
                count_only="count-only" in flags,
            )
        )
    except (ValueError, IndexError) as e:
        raise TxnSyntaxError(f"line {n}: malformed request {line!r}: {e or 'empty'}") from None


def _options(verb: str, words: list[str]) -> tuple[list[str], set[str], dict[str, str]]:
    """Positional words, flags given, and options with their values (--name=V or --name V)."""
    args: list[str] = []
    flags: set[str] = set()
    values: dict[str, str] = {}
    rest = iter(words)
    for word in rest:
        if word == "--":  # the words after it are arguments, even those starting with --
            args += rest
            break
        if not word.startswith("--"):
            args.append(word)
            continue
        name, has_value, value = word[2:].partition("=")
        if name in _FLAGS[verb] and not has_value:
            flags.add(name)
        elif name in _VALUED[verb]:
            values[name] = value if has_value else next(rest, "")
            if not values[name]:
                raise ValueError(f"--{name} needs a value")
        else:
            raise ValueError(f"unknown option --{name} for {verb}")
    return args, flags, values
