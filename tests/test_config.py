"""Cluster maps: both formats, the shipped files, and an error naming file and line for every mistake."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from raftd.config import (
    ClusterConfig,
    ConfigError,
    NodeAddr,
    derived_name,
    load_cluster,
    parse_address,
    parse_endpoints,
)

REPO = Path(__file__).resolve().parent.parent
SEED_NODES = (
    NodeAddr(0, "127.0.0.1", 50000),
    NodeAddr(1, "127.0.0.1", 50001),
    NodeAddr(2, "127.0.0.1", 50002),
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    return info.value


def assert_error(path: Path, line: int | None, fragment: str) -> None:
    """One line: FILE:LINE (FILE alone when no line applies), then what is wrong."""
    e = error_of(path)
    text = str(e)
    assert "\n" not in text
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert text.startswith(prefix), text
    if line is None:
        assert not re.match(re.escape(str(path)) + r":\d+:", text), text
    assert fragment in text, text
    assert (e.source, e.line) == (str(path), line)


# -- conf format --------------------------------------------------------------------------------------


def test_conf_with_comments_and_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cluster.conf",
        "# a comment\n\n0 127.0.0.1 50000   # trailing comment\n"
        "  1\t127.0.0.1 50001\n#2 x 1\n2 127.0.0.1 50002\n",
    )
    c = load_cluster(path)
    assert c.nodes == SEED_NODES
    assert c.source == str(path)
    assert c.election_timeout_ms == (200, 400)
    assert c.heartbeat_interval_ms == 100
    assert c.node(1).address == "127.0.0.1:50001"


def test_conf_keeps_file_order_and_any_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes.txt", "5 b 2\n3 a 1\n")
    assert [n.id for n in load_cluster(path).nodes] == [5, 3]


def test_derived_name_ignores_order_and_comments(tmp_path: Path) -> None:
    a = load_cluster(write(tmp_path, "a.conf", "0 h 1\n1 h 2\n"))
    b = load_cluster(write(tmp_path, "b.conf", "# same cluster\n1 h 2\n0 h 1\n"))
    c = load_cluster(write(tmp_path, "c.conf", "0 h 1\n1 h 3\n"))
    assert a.name == b.name != c.name
    assert re.fullmatch(r"c-[0-9a-f]{12}", a.name)
    # The documented recipe, spelled out.
    assert a.name == "c-" + hashlib.sha256(b"0 h:1\n1 h:2\n").hexdigest()[:12]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("0 127.0.0.1 50000\n1 127.0.0.1\n", 2, "expected 'ID HOST PORT'"),
        ("0 127.0.0.1 50000 extra\n", 1, "expected 'ID HOST PORT'"),
        ("\n\nx 127.0.0.1 50000\n", 3, "node id 'x' is not an integer"),
        ("0 h 1\n1 h 1_000\n", 2, "port '1_000' is not an integer"),
        ("0 h 50000\n-1 h 50001\n", 2, "node id -1 is negative"),
        ("0 h 0\n", 1, "port 0 is outside 1..65535"),
        ("0 h 65536\n", 1, "port 65536 is outside 1..65535"),
        ("0 h 1\n# x\n0 g 2\n", 3, "duplicate node id 0 (first on line 1)"),
        ("0 h 1\n1 H 1\n", 2, "duplicate address H:1 (first on line 1)"),
        ("0 ::1 1\n", 1, "must be written in brackets"),
    ],
)
def test_conf_errors_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    assert_error(write(tmp_path, "config.conf", text), line, fragment)


@pytest.mark.parametrize("text", ["", "# only comments\n\n"])
def test_conf_empty_cluster(tmp_path: Path, text: str) -> None:
    assert_error(write(tmp_path, "config.conf", text), None, "no nodes")


def test_bracketed_ipv6_host(tmp_path: Path) -> None:
    c = load_cluster(write(tmp_path, "config.conf", "0 [::1] 50000\n"))
    assert c.node(0).address == "[::1]:50000"


def test_missing_file(tmp_path: Path) -> None:
    assert_error(tmp_path / "nope.conf", None, "cannot read")
    assert_error(tmp_path / "nope.yaml", None, "cannot read")


def test_unreadable_file(tmp_path: Path) -> None:
    assert_error(tmp_path, None, "cannot read")  # a directory cannot be read as a file, even by root
    path = tmp_path / "bin.conf"
    path.write_bytes(b"0 h \xff\xfe 1\n")
    assert_error(path, None, "not UTF-8")


def test_unknown_node_names_the_file(tmp_path: Path) -> None:
    c = load_cluster(write(tmp_path, "config.conf", "0 h 1\n1 h 2\n"))
    with pytest.raises(ConfigError) as info:
        c.node(7)
    assert str(info.value) == f"{tmp_path / 'config.conf'}: node 7 is not in the cluster (known ids: 0, 1)"


# -- YAML ---------------------------------------------------------------------------------------------

FULL_YAML = """\
name: prod-eu.1
election_timeout_ms: [1000, 2000]
heartbeat_interval_ms: 100
nodes:
  - id: 0
    host: a.example
    port: 7000
  - {id: 3, host: b.example, port: 7001}
"""


def test_yaml_full(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", FULL_YAML)
    c = load_cluster(path)
    assert c == ClusterConfig(
        (NodeAddr(0, "a.example", 7000), NodeAddr(3, "b.example", 7001)),
        "prod-eu.1",
        (1000, 2000),
        100,
        str(path),
        named=True,
    )


def test_yaml_defaults_and_derived_name(tmp_path: Path) -> None:
    c = load_cluster(
        write(tmp_path, "c.yaml", "nodes:\n  - {id: 0, host: h, port: 1}\n  - {id: 1, host: h, port: 2}\n")
    )
    conf = load_cluster(write(tmp_path, "c.conf", "0 h 1\n1 h 2\n"))
    assert (c.election_timeout_ms, c.heartbeat_interval_ms) == ((200, 400), 100)
    assert c.name == conf.name == derived_name(c.nodes)
    assert not c.named and not conf.named  # so a data directory may outlive an address change


NODES = "nodes:\n  - {id: 0, host: h, port: 1}\n"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        # syntax errors: the mark's line
        ("nodes:\n  - {id: 0, host: h, port: 1\n", 3, "YAML syntax error"),
        ("nodes:\n\t- x\n", 2, "YAML syntax error"),
        ("nodes: []\n---\nnodes: []\n", 2, "YAML syntax error"),
        # shape
        ("- 1\n- 2\n", 1, "the file must be a mapping"),
        ("name: x\n", 1, "missing 'nodes'"),
        ("name: x\nnodes: 5\n", 2, "'nodes' must be a list"),
        ("name: x\nnodes: {id: 0}\n", 2, "'nodes' must be a list"),
        ("name: x\nnodes: []\n", 2, "no nodes"),
        ("nodes:\n  - 7\n", 2, "each node must be a mapping"),
        # unknown and repeated keys
        (NODES + "heartbeat_interval: 50\n", 3, "unknown key 'heartbeat_interval'"),
        (
            "nodes:\n  - {id: 0, host: h, port: 1}\n  - id: 1\n    hots: h\n    port: 2\n",
            4,
            "unknown key 'hots'",
        ),
        (NODES + "name: a\nname: b\n", 4, "key 'name' appears twice"),
        # node fields
        ("nodes:\n  - {id: 0, host: h, port: 1}\n  - {id: 1, host: h}\n", 3, "node is missing 'port'"),
        ("nodes:\n  - id: 0\n    host: h\n    port: abc\n", 4, "port must be an integer, got 'abc'"),
        ("nodes:\n  - id: 0\n    host: h\n    port: '50000'\n", 4, "port must be an integer, got '50000'"),
        ("nodes:\n  - id: 0\n    host: h\n    port: 1.5\n", 4, "port must be an integer"),
        ("nodes:\n  - id: true\n    host: h\n    port: 1\n", 2, "id must be an integer"),
        ("nodes:\n  - id: 0\n    host: [a]\n    port: 1\n", 3, "host must be a non-empty string, got a list"),
        ("nodes:\n  - id: 0\n    host: 12\n    port: 1\n", 3, "host must be a non-empty string"),
        ("nodes:\n  - id: 0\n    host: h\n    port: !!python/name:os.system\n", 4, "cannot read value"),
        # the checks shared with the conf format, on the node's line
        (
            "nodes:\n  - {id: 0, host: h, port: 1}\n  - {id: -2, host: h, port: 2}\n",
            3,
            "node id -2 is negative",
        ),
        ("nodes:\n  - {id: 0, host: h, port: 70000}\n", 2, "port 70000 is outside 1..65535"),
        ("nodes:\n  - {id: 0, host: h, port: 1}\n  - {id: 0, host: h, port: 2}\n", 3, "duplicate node id 0"),
        (
            "nodes:\n  - {id: 0, host: h, port: 1}\n  - {id: 1, host: h, port: 1}\n",
            3,
            "duplicate address h:1",
        ),
        # name
        ("name: ''\n" + NODES, 1, "name must be a non-empty string"),
        ("name: my cluster\n" + NODES, 1, "name 'my cluster' must be letters"),
        # timing
        (NODES + "election_timeout_ms: 300\n", 3, "must be a list [MIN, MAX]"),
        (NODES + "election_timeout_ms: [1, 2, 3]\n", 3, "must be a list [MIN, MAX]"),
        (NODES + "election_timeout_ms: [100, x]\n", 3, "election_timeout_ms MAX must be an integer"),
        (NODES + "election_timeout_ms: [300, 300]\n", 3, "MIN 300 must be below MAX 300"),
        (NODES + "election_timeout_ms: [400, 300]\n", 3, "MIN 400 must be below MAX 300"),
        (NODES + "heartbeat_interval_ms: 100\nelection_timeout_ms: [100, 300]\n", 4, "must exceed heartbeat"),
        (NODES + "heartbeat_interval_ms: 200\n", 3, "MIN 200 must exceed heartbeat_interval_ms 200"),
        (NODES + "heartbeat_interval_ms: 0\n", 3, "heartbeat_interval_ms must be > 0, got 0"),
        (NODES + "heartbeat_interval_ms: -5\n", 3, "heartbeat_interval_ms must be > 0"),
    ],
)
def test_yaml_errors_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    assert_error(write(tmp_path, "cluster.yaml", text), line, fragment)


@pytest.mark.parametrize("text", ["", "# nothing\n"])
def test_yaml_empty_file(tmp_path: Path, text: str) -> None:
    assert_error(write(tmp_path, "cluster.yaml", text), None, "empty file")


# -- the shipped maps ---------------------------------------------------------------------------------


def test_shipped_maps_are_the_seed_cluster_and_equivalent() -> None:
    conf = load_cluster(REPO / "config.conf")
    yml = load_cluster(REPO / "deploy" / "cluster.yaml")
    assert conf.nodes == yml.nodes == SEED_NODES
    # Same name too, so a node's data directory accepts either file.
    assert conf.name == yml.name
    assert (conf.election_timeout_ms, conf.heartbeat_interval_ms) == (
        yml.election_timeout_ms,
        yml.heartbeat_interval_ms,
    )


# -- parse_endpoints ----------------------------------------------------------------------------------


def test_parse_endpoints() -> None:
    assert parse_endpoints("127.0.0.1:50000") == ("127.0.0.1:50000",)
    assert parse_endpoints(" a:1 , b.example:02,[::1]:3") == ("a:1", "b.example:2", "[::1]:3")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "endpoint '' is not HOST:PORT"),
        ("a:1,", "endpoint '' is not HOST:PORT"),
        ("a", "endpoint 'a' is not HOST:PORT"),
        (":1", "endpoint ':1' is not HOST:PORT"),
        ("a:x", "port 'x' is not an integer"),
        ("a:", "port '' is not an integer"),
        ("a:0", "port 0 is outside 1..65535"),
        ("a:65536", "outside 1..65535"),
        ("::1:5", "must be written in brackets"),
        ("a b:1", "is not a hostname"),
        ("a:1,a:01", "endpoint 'a:1' is listed twice"),
    ],
)
def test_parse_endpoints_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_endpoints(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_a_member_address_is_one_endpoint() -> None:
    assert parse_address(" 127.0.0.1:5000 ") == "127.0.0.1:5000"
    with pytest.raises(ConfigError, match="is not one HOST:PORT"):
        parse_address("a:1,b:2")
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_address("nowhere")
