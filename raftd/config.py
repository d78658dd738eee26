"""Cluster maps: which nodes exist and where they listen.

Two formats, chosen by file extension: `.yaml`/`.yml` is YAML, anything else is the seed's `config.conf`
(`ID HOST PORT` per line). Every error names the file and, where there is one, the line, because a
cluster that starts with a mistyped map fails far from the mistake.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_ELECTION_TIMEOUT_MS = (200, 400)
DEFAULT_HEARTBEAT_INTERVAL_MS = 100

_INT_RE = re.compile(r"-?[0-9]+")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_YAML_KEYS = ("name", "nodes", "election_timeout_ms", "heartbeat_interval_ms")
_NODE_KEYS = ("id", "host", "port")


class ConfigError(Exception):
    """A bad cluster map; str() is one line, "FILE:LINE: what is wrong", ready to show to a user."""

    def __init__(self, message: str, source: str = "", line: int | None = None) -> None:
        self.message = message.replace("\n", " ")
        self.source = source
        self.line = line
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {self.message}" if where else self.message)


@dataclass(frozen=True)
class NodeAddr:
    id: int
    host: str
    port: int

    @property
    def address(self) -> str:
        """The "host:port" form gRPC dials and binds."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ClusterConfig:
    nodes: tuple[NodeAddr, ...]  # in file order
    name: str
    election_timeout_ms: tuple[int, int] = DEFAULT_ELECTION_TIMEOUT_MS
    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    source: str = ""  # the file this came from, for messages
    named: bool = False  # the map gives the name; otherwise it is derived_name(nodes)
    # The operator's word on where nodes listen, which wins at start over the addresses the cluster
    # recorded (a map edited to move a node, as the original project did it); False for what a joining
    # node was told (raftd.join), which the cluster's own record then overrides.
    addresses_given: bool = True

    def node(self, node_id: int) -> NodeAddr:
        """The node with this id; a ConfigError naming the file when the map does not list it."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        known = ", ".join(str(n.id) for n in self.nodes)
        raise ConfigError(f"node {node_id} is not in the cluster (known ids: {known})", self.source)


def timing_problem(
    heartbeat: int, election: tuple[int, int], heartbeat_name: str, election_name: str
) -> tuple[str, str] | None:
    """Raft's timing rule, the one check for maps and flags alike: a positive heartbeat, below the election
    timeout's MIN, itself below its MAX. Returns the setting to blame and the message, or None."""
    lo, hi = election
    if heartbeat <= 0:
        return heartbeat_name, f"{heartbeat_name} must be > 0, got {heartbeat}"
    if lo >= hi:
        return election_name, f"{election_name} MIN {lo} must be below MAX {hi}"
    if lo <= heartbeat:
        return election_name, f"{election_name} MIN {lo} must exceed {heartbeat_name} {heartbeat}"
    return None


def derived_name(nodes: tuple[NodeAddr, ...]) -> str:
    """A stable name for a map that gives none, so data directories can still be tied to their cluster.

    "c-" + the first 12 hex digits of sha256 over the sorted lines "ID HOST:PORT\\n"; file order and
    comments do not change it.
    """
    lines = sorted(f"{n.id} {n.address}\n" for n in nodes)
    return "c-" + hashlib.sha256("".join(lines).encode()).hexdigest()[:12]


def load_cluster(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a cluster map; the extension picks the format."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", source) from e
    except UnicodeDecodeError as e:
        raise ConfigError("not UTF-8 text", source) from e
    if Path(source).suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml(text, source)
    return _parse_conf(text, source)


def parse_endpoints(text: str) -> tuple[str, ...]:
    """Split "host:port,host:port" (a client's --endpoints) into validated, normalised "host:port" strings."""
    endpoints: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        host, sep, port_text = item.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"endpoint {item!r} is not HOST:PORT")
        problem = _host_problem(host)
        if problem:
            raise ConfigError(f"endpoint {item!r}: {problem}")
        port = _parse_int(port_text)
        if port is None:
            raise ConfigError(f"endpoint {item!r}: port {port_text!r} is not an integer")
        if not 1 <= port <= 65535:
            raise ConfigError(f"endpoint {item!r}: port {port} is outside 1..65535")
        endpoint = f"{host}:{port}"
        if endpoint in endpoints:
            raise ConfigError(f"endpoint {endpoint!r} is listed twice")
        endpoints.append(endpoint)
    return tuple(endpoints)


def parse_address(text: str) -> str:
    """One HOST:PORT (where a member listens), checked as an endpoint is; ConfigError otherwise."""
    endpoints = parse_endpoints(text)
    if len(endpoints) != 1:
        raise ConfigError(f"{text[:80]!r} is not one HOST:PORT")
    return endpoints[0]


# -- the seed's conf format ---------------------------------------------------------------------------


def _parse_conf(text: str, source: str) -> ClusterConfig:
    nodes: list[NodeAddr] = []
    seen = _Seen(source)
    for lineno, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ConfigError(f"expected 'ID HOST PORT', got {raw.strip()!r}", source, lineno)
        id_text, host, port_text = fields
        node_id = _parse_int(id_text)
        if node_id is None:
            raise ConfigError(f"node id {id_text!r} is not an integer", source, lineno)
        port = _parse_int(port_text)
        if port is None:
            raise ConfigError(f"port {port_text!r} is not an integer", source, lineno)
        nodes.append(seen.add(NodeAddr(node_id, host, port), lineno))
    if not nodes:
        raise ConfigError("no nodes: expected lines of 'ID HOST PORT'", source)
    return ClusterConfig(tuple(nodes), derived_name(tuple(nodes)), source=source)


# -- YAML ---------------------------------------------------------------------------------------------


def _parse_yaml(text: str, source: str) -> ClusterConfig:
    """Walk the composed node tree rather than loaded values, so every error can point at its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        what = ", ".join(part for part in (e.context, e.problem) if part)
        raise ConfigError(f"YAML syntax error: {what}", source, line) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML syntax error: {e}", source) from e
    if root is None:
        raise ConfigError("empty file: expected a mapping with 'nodes'", source)
    y = _YamlReader(source)
    top = y.mapping(root, "the file", _YAML_KEYS)
    if "nodes" not in top:
        raise y.error(root, "missing 'nodes': the list of {id, host, port}")

    nodes_node = top["nodes"]
    if not isinstance(nodes_node, yaml.SequenceNode):
        raise y.error(nodes_node, "'nodes' must be a list of {id, host, port}")
    if not nodes_node.value:
        raise y.error(nodes_node, "no nodes: 'nodes' is empty")
    seen = _Seen(source)
    nodes: list[NodeAddr] = []
    for item in nodes_node.value:
        fields = y.mapping(item, "each node", _NODE_KEYS)
        for key in _NODE_KEYS:
            if key not in fields:
                raise y.error(item, f"node is missing {key!r}")
        addr = NodeAddr(
            y.integer(fields["id"], "id"), y.string(fields["host"], "host"), y.integer(fields["port"], "port")
        )
        nodes.append(seen.add(addr, _line(item)))

    named = "name" in top
    if named:
        name = y.string(top["name"], "name")
        if not _NAME_RE.fullmatch(name):
            raise y.error(top["name"], f"name {name!r} must be letters, digits, '.', '_' or '-'")
    else:
        name = derived_name(tuple(nodes))

    heartbeat = DEFAULT_HEARTBEAT_INTERVAL_MS
    if "heartbeat_interval_ms" in top:
        heartbeat = y.integer(top["heartbeat_interval_ms"], "heartbeat_interval_ms")
    election = DEFAULT_ELECTION_TIMEOUT_MS
    if "election_timeout_ms" in top:
        et = top["election_timeout_ms"]
        if not (isinstance(et, yaml.SequenceNode) and len(et.value) == 2):
            raise y.error(et, "election_timeout_ms must be a list [MIN, MAX]")
        election = (
            y.integer(et.value[0], "election_timeout_ms MIN"),
            y.integer(et.value[1], "election_timeout_ms MAX"),
        )
    problem = timing_problem(heartbeat, election, "heartbeat_interval_ms", "election_timeout_ms")
    if problem is not None:
        setting, message = problem
        # Point at the setting to blame, or at the other one when the file leaves that to its default.
        raise y.error(
            top.get(setting) or top.get("election_timeout_ms") or top["heartbeat_interval_ms"], message
        )
    return ClusterConfig(tuple(nodes), name, election, heartbeat, source, named)


class _YamlReader:
    """Typed access to composed YAML nodes; errors carry the node's line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = yaml.constructor.SafeConstructor()

    def error(self, node: yaml.Node, message: str) -> ConfigError:
        return ConfigError(message, self.source, _line(node))

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        """A mapping's values by key; unknown and repeated keys are errors, since a typo must not vanish."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping with keys {', '.join(allowed)}")
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self._scalar(key_node)
            if key not in allowed:
                raise self.error(key_node, f"unknown key {key!r} (expected one of: {', '.join(allowed)})")
            if key in out:
                raise self.error(key_node, f"key {key!r} appears twice")
            out[key] = value_node
        return out

    def integer(self, node: yaml.Node, what: str) -> int:
        value = self._scalar(node)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(node, f"{what} must be an integer, got {_show(node)}")
        return value

    def string(self, node: yaml.Node, what: str) -> str:
        value = self._scalar(node)
        if not isinstance(value, str) or not value:
            raise self.error(node, f"{what} must be a non-empty string, got {_show(node)}")
        return value

    def _scalar(self, node: yaml.Node) -> object:
        if not isinstance(node, yaml.ScalarNode):
            return None
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            raise self.error(node, f"cannot read value: {getattr(e, 'problem', e)}") from e


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _show(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return repr(node.value)
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


# -- shared checks ------------------------------------------------------------------------------------


class _Seen:
    """Per-node checks both formats share: id and port ranges, host syntax, no duplicate id or address."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.ids: dict[int, int] = {}
        self.addresses: dict[str, int] = {}

    def add(self, n: NodeAddr, line: int) -> NodeAddr:
        if n.id < 0:
            raise ConfigError(f"node id {n.id} is negative (ids are >= 0)", self.source, line)
        problem = _host_problem(n.host)
        if problem:
            raise ConfigError(problem, self.source, line)
        if not 1 <= n.port <= 65535:
            raise ConfigError(f"port {n.port} is outside 1..65535", self.source, line)
        if n.id in self.ids:
            raise ConfigError(f"duplicate node id {n.id} (first on line {self.ids[n.id]})", self.source, line)
        address = n.address.lower()
        if address in self.addresses:
            first = self.addresses[address]
            raise ConfigError(f"duplicate address {n.address} (first on line {first})", self.source, line)
        self.ids[n.id] = line
        self.addresses[address] = line
        return n


def _parse_int(text: str) -> int | None:
    """Plain decimal only: int() would also take '1_000' and ' 7', which no one writes on purpose."""
    return int(text) if _INT_RE.fullmatch(text) else None


def _host_problem(host: str) -> str | None:
    """Why host cannot be dialled as written, or None; IPv6 needs brackets to keep "host:port" unambiguous."""
    if not host or any(c.isspace() or c in ",#" for c in host):
        return f"host {host!r} is not a hostname or IP address"
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return f"IPv6 host {host!r} must be written in brackets, like [::1]"
    return None
