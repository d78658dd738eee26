"""One-shot commands against a real 3-node cluster: output lines, JSON, exit codes, finding the cluster."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raftctl.cli import (
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    resolve_endpoints,
)
from raftd.launcher import free_ports
from tests.daemon.cluster import Cluster, wait_until

from .conftest import RUN_LIMIT_S, ctl_env, run_ctl


def one_line_error(stderr: str) -> str:
    """stderr must be exactly one line, and no traceback."""
    assert stderr.endswith("\n") and stderr.count("\n") == 1, f"not one line: {stderr!r}"
    assert "Traceback" not in stderr
    return stderr.rstrip("\n")


def test_setval_getval_delete_and_their_exit_codes(tmp_path: Path, endpoints: str) -> None:
    e = ["--endpoints", endpoints]
    r = run_ctl(*e, "setval", "cli-k", "a value  with spaces", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = run_ctl(*e, "getval", "cli-k", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "a value  with spaces\n", "")
    r = run_ctl(*e, "getval", "--local", "cli-k", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "a value  with spaces\n")
    r = run_ctl(*e, "delete", "cli-k", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = run_ctl(*e, "getval", "cli-k", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (EXIT_NOT_FOUND, "None\n", "")
    r = run_ctl(*e, "delete", "cli-k", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (EXIT_NOT_FOUND, "None\n", "")


def test_json_output(tmp_path: Path, endpoints: str) -> None:
    e = ["--endpoints", endpoints, "-o", "json"]
    r = run_ctl(*e, "setval", "json-k", "ünïcode", cwd=tmp_path)
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["key"] == "json-k" and doc["value"] == "ünïcode" and doc["index"] > 0
    r = run_ctl(*e, "getval", "json-k", cwd=tmp_path)
    assert json.loads(r.stdout) == {"key": "json-k", "found": True, "value": "ünïcode"}
    r = run_ctl(*e, "getval", "json-absent", cwd=tmp_path)
    assert r.returncode == EXIT_NOT_FOUND
    assert json.loads(r.stdout) == {"key": "json-absent", "found": False, "value": None}
    r = run_ctl(*e, "getleader", cwd=tmp_path)
    leader = json.loads(r.stdout)
    assert set(leader) == {"id", "address", "term"} and leader["term"] >= 1
    r = run_ctl(*e, "delete", "json-k", cwd=tmp_path)
    assert json.loads(r.stdout) == {"key": "json-k", "deleted": True}


def test_getleader_prints_id_and_address(tmp_path: Path, cluster: Cluster, endpoints: str) -> None:
    lead = cluster.wait_leader()
    r = run_ctl("--endpoints", endpoints, "getleader", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{lead} {cluster.address(lead)}\n", "")


def test_status_table_lists_every_node(tmp_path: Path, cluster: Cluster, endpoints: str) -> None:
    cluster.wait_leader()
    r = run_ctl("--endpoints", endpoints, "status", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("+-") and lines[-1] == lines[0] and lines[2] == lines[0]
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header == [
        "ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST INDEX", "HEALTH", "REACHABLE",
        "ALARMS",
    ]  # fmt: skip
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[3:-1]]
    assert [row[:2] for row in rows] == [[str(i), cluster.address(i)] for i in range(3)]
    assert sorted(row[2] for row in rows) == ["follower", "follower", "leader"]
    for row in rows:
        assert row[8:] == ["SERVING", "yes", "-"]
        assert all(cell.isdigit() for cell in row[3:8]), row


def test_status_keeps_unreachable_rows_and_exits_3(tmp_path: Path, cluster: Cluster, endpoints: str) -> None:
    (port,) = free_ports(1)
    dead = f"127.0.0.1:{port}"
    r = run_ctl("--endpoints", f"{endpoints},{dead}", "status", cwd=tmp_path)
    assert r.returncode == EXIT_UNAVAILABLE
    assert re.fullmatch(
        rf"raftctl: error: 1 of 4 endpoints unreachable \({dead}: .*\)", one_line_error(r.stderr)
    )
    last = [c.strip() for c in r.stdout.splitlines()[-2].strip("|").split("|")]
    assert last == ["-", dead, "-", "-", "-", "-", "-", "-", "-", "no", "-"]

    r = run_ctl("--endpoints", f"{endpoints},{dead}", "-o", "json", "status", cwd=tmp_path)
    rows = json.loads(r.stdout)
    assert [row["reachable"] for row in rows] == [True, True, True, False]
    assert [row["id"] for row in rows] == [0, 1, 2, None]
    assert rows[3]["endpoint"] == dead and rows[3]["error"]


def test_invalid_requests_exit_4(tmp_path: Path, endpoints: str) -> None:
    for args, message in [
        (["setval", "", "v"], "the key is empty"),
        (["getval", "k" * 5000], "the key is 5000 bytes; the limit is 4096"),
        (["transfer-leader", "99"], "no node 99 in the cluster"),
        (["suspend", "100000"], "period must be 1..3600 seconds, not 100000"),
        # Checked by the node alone, so every client hears the same (issue 17: 0 was exit 2 here).
        (["suspend", "0"], "period must be 1..3600 seconds, not 0"),
        (["suspend", "--", "-5"], "period must be 1..3600 seconds, not -5"),
    ]:
        r = run_ctl("--endpoints", endpoints, *args, cwd=tmp_path)
        assert r.returncode == EXIT_INVALID, (args, r.stderr)
        assert one_line_error(r.stderr) == f"raftctl: error: {message}"
        assert r.stdout == ""


def test_transfer_leader(tmp_path: Path, cluster: Cluster, endpoints: str) -> None:
    lead = cluster.wait_leader()
    target = (lead + 1) % 3
    r = run_ctl("--endpoints", endpoints, "transfer-leader", str(target), cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{target} {cluster.address(target)}\n", "")
    assert cluster.wait_leader() == target


def test_suspend_a_follower(tmp_path: Path, cluster: Cluster) -> None:
    follower = cluster.followers(cluster.wait_leader())[0]
    r = run_ctl("--endpoints", cluster.address(follower), "suspend", "1", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    wait_until(f"node {follower} to come back", lambda: not cluster.status(follower).suspended, 20)
    cluster.wait_leader()


def test_every_endpoint_unreachable_exits_3_with_one_line(tmp_path: Path) -> None:
    dead = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    for args in (
        ["getval", "k"],
        ["setval", "k", "v"],
        ["delete", "k"],
        ["getleader"],
        ["transfer-leader", "1"],
    ):
        r = run_ctl("--endpoints", dead, "--timeout", "60", *args, cwd=tmp_path)
        assert r.returncode == EXIT_UNAVAILABLE, (args, r.stderr)
        assert re.fullmatch(
            rf"raftctl: error: {args[0]}: no node answers \(127\.0\.0\.1:\d+: connection refused; .*\)",
            one_line_error(r.stderr),
        )
        assert r.stdout == ""
    r = run_ctl("--endpoints", dead, "--timeout", "1", "suspend", "1", cwd=tmp_path)
    assert r.returncode == EXIT_UNAVAILABLE
    assert one_line_error(r.stderr).startswith("raftctl: error: cannot suspend 127.0.0.1:")


@pytest.mark.parametrize(
    "args",
    [
        ["getval"],
        ["setval", "k"],
        ["frobnicate"],
        ["--endpoints", "nope", "getval", "k"],
        ["--endpoints", "127.0.0.1:99999", "getval", "k"],
        ["--timeout", "-1", "getval", "k"],
        ["--timeout", "abc", "getval", "k"],
        ["-o", "xml", "getval", "k"],
        ["--cluster", "missing.conf", "getval", "k"],
        ["--cluster", "c.conf", "--endpoints", "127.0.0.1:1", "getval", "k"],
        ["suspend", "soon"],
        ["suspend", "1.5"],
        ["transfer-leader", "x"],
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    r = run_ctl(*args, cwd=tmp_path)
    assert r.returncode == EXIT_USAGE, r.stderr
    assert one_line_error(r.stderr).startswith("raftctl: error: ")
    assert r.stdout == ""


def test_a_bad_cluster_map_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.conf").write_text("0 127.0.0.1 50000\n1 127.0.0.1\n")
    r = run_ctl("--cluster", "bad.conf", "getleader", cwd=tmp_path)
    assert r.returncode == EXIT_USAGE
    assert (
        one_line_error(r.stderr) == "raftctl: error: bad.conf:2: expected 'ID HOST PORT', got '1 127.0.0.1'"
    )


def test_help_documents_exit_codes(tmp_path: Path) -> None:
    """In raftctl's help, once (a command's help points there: issue 17)."""
    r = run_ctl("--help", cwd=tmp_path)
    assert r.returncode == 0
    for line in ("0    success", "1    key not found", "2    usage error", "3    cluster unavailable"):
        assert line in r.stdout
    assert "4    request refused as invalid" in r.stdout and "RAFTCTL_ENDPOINTS" in r.stdout
    assert "6    a write's outcome stayed unknown" in r.stdout


def endpoints_used(cwd: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """The endpoint list raftctl settled on, read from `status -o json` (which lists every endpoint)."""
    r = run_ctl(*args, "--timeout", "0.5", "-o", "json", "status", cwd=cwd, env=env)
    assert r.returncode in (0, EXIT_UNAVAILABLE), r.stderr
    return [row["endpoint"] for row in json.loads(r.stdout)]


def test_without_flags_environment_or_config_the_seed_endpoint_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Resolved in-process: asking 127.0.0.1:50000 for real could reach whatever another program runs there.
    monkeypatch.chdir(tmp_path)
    assert resolve_endpoints(None, None, {}).addresses == ["127.0.0.1:50000"]


def test_where_the_endpoints_come_from(tmp_path: Path) -> None:
    a, b, c, d = (f"127.0.0.1:{p}" for p in free_ports(4))
    env = ctl_env(tmp_path, RAFTCTL_ENDPOINTS=f"{a},{b}")
    assert endpoints_used(tmp_path, env=env) == [a, b]
    (tmp_path / "config.conf").write_text(f"0 {c.replace(':', ' ')}\n")
    assert endpoints_used(tmp_path) == [c]
    assert endpoints_used(tmp_path, env=env) == [a, b], "the environment beats ./config.conf"
    (tmp_path / "map.yaml").write_text(f"nodes:\n  - {{id: 7, host: 127.0.0.1, port: {d.split(':')[1]}}}\n")
    assert endpoints_used(tmp_path, "--cluster", "map.yaml", env=env) == [d], "a flag beats the environment"
    assert endpoints_used(tmp_path, "--endpoints", c, env=env) == [c]


def test_the_cluster_map_names_unreachable_rows(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    (tmp_path / "map.yaml").write_text(f"nodes:\n  - {{id: 7, host: 127.0.0.1, port: {port}}}\n")
    r = run_ctl("--cluster", "map.yaml", "--timeout", "0.5", "status", cwd=tmp_path)
    assert r.returncode == EXIT_UNAVAILABLE
    assert [c.strip() for c in r.stdout.splitlines()[3].strip("|").split("|")][:2] == [
        "7",
        f"127.0.0.1:{port}",
    ]


def test_env_and_cluster_file_reach_the_cluster(tmp_path: Path, cluster: Cluster, endpoints: str) -> None:
    lead = cluster.wait_leader()
    expected = f"{lead} {cluster.address(lead)}\n"
    r = run_ctl("getleader", cwd=tmp_path, env=ctl_env(tmp_path, RAFTCTL_ENDPOINTS=endpoints))
    assert (r.returncode, r.stdout) == (0, expected)
    r = run_ctl("--cluster", str(cluster.config_path), "getleader", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, expected)
    (tmp_path / "config.conf").write_text(cluster.config_path.read_text())
    r = run_ctl("getleader", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, expected)


def test_ctrl_c_exits_130_quietly(tmp_path: Path) -> None:
    # A port that accepts connections and never answers: the command waits there until Ctrl-C.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "raftctl",
                "--endpoints",
                f"127.0.0.1:{silent.getsockname()[1]}",
                "--timeout",
                "60",
                "getval",
                "k",
            ],
            cwd=tmp_path,
            env=ctl_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(2.0)  # let it start waiting (a wait before acting, not a timing assertion)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=RUN_LIMIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (proc.returncode, out, err) == (EXIT_INTERRUPTED, "", "")


def test_a_group_without_a_command_prints_its_help(tmp_path: Path) -> None:
    """It squashed the whole help into one error line (issue 17); docker, kubectl and etcdctl print it."""
    r = run_ctl("snapshot", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    usage = r.stdout.splitlines()[0]
    assert usage.startswith("Usage: ") and " snapshot [OPTIONS]" in usage, r.stdout
    assert "\n  save " in r.stdout, r.stdout


def test_get_put_del_are_etcdctls_not_aliases(tmp_path: Path, endpoints: str) -> None:
    """get/put/del were aliases of getval/setval/delete; they are etcdctl's own commands over the etcd
    API now (tests/raftctl/test_etcd_cli.py), with etcdctl's output, and the original's stay as they were."""
    e = ["--endpoints", endpoints]
    r = run_ctl(*e, "put", "alias-k", "v1", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "OK\n")
    r = run_ctl(*e, "get", "alias-k", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "alias-k\nv1\n")
    r = run_ctl(*e, "del", "alias-k", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "1\n")
    r = run_ctl(*e, "get", "alias-k", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, ""), "absent: nothing, as etcdctl"
    assert run_ctl(*e, "setval", "alias-k", "v2", cwd=tmp_path).returncode == 0
    r = run_ctl(*e, "getval", "alias-k", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "v2\n")
    assert run_ctl(*e, "delete", "alias-k", cwd=tmp_path).returncode == 0
    r = run_ctl(*e, "getval", "alias-k", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (EXIT_NOT_FOUND, "None\n")


def test_values_from_stdin_or_a_file_exactly(tmp_path: Path, endpoints: str) -> None:
    """A 200 KB value failed with "Argument list too long" (issue 17): the limit is 1 MiB."""
    e = ["--endpoints", endpoints]
    exact = "two lines\n\nand a trailing newline\n"
    assert run_ctl(*e, "setval", "stdin-k", "-", cwd=tmp_path, input=exact).returncode == 0
    r = run_ctl(*e, "getval", "stdin-k", cwd=tmp_path)
    assert r.stdout == exact + "\n", "stored exactly; getval adds its one newline"
    big = tmp_path / "big.txt"
    big.write_text("x" * 200_000)
    assert run_ctl(*e, "setval", "file-k", "--file", str(big), cwd=tmp_path).returncode == 0
    r = run_ctl(*e, "-o", "json", "getval", "file-k", cwd=tmp_path)
    assert json.loads(r.stdout)["value"] == "x" * 200_000
    for args in (["setval", "k"], ["setval", "k", "v", "--file", str(big)]):
        r = run_ctl(*e, *args, cwd=tmp_path)
        assert r.returncode == EXIT_USAGE and "give VALUE or --file FILE" in one_line_error(r.stderr), r
    (tmp_path / "latin1").write_bytes(b"caf\xe9")
    r = run_ctl(*e, "setval", "k", "--file", str(tmp_path / "latin1"), cwd=tmp_path)
    assert r.returncode == EXIT_INVALID and "is not valid UTF-8" in one_line_error(r.stderr)


def test_help_command_and_shell_completion(tmp_path: Path) -> None:
    r = run_ctl("help", cwd=tmp_path)
    assert r.returncode == 0 and "Commands:" in r.stdout and "getval" in r.stdout
    r = run_ctl("help", "get", cwd=tmp_path)
    assert r.returncode == 0 and " get [OPTIONS] KEY" in r.stdout.splitlines()[0], r.stdout
    r = run_ctl("help", "nope", cwd=tmp_path)
    assert r.returncode == EXIT_USAGE and "no such command 'nope'" in one_line_error(r.stderr)
    env = ctl_env(tmp_path, _RAFTCTL_COMPLETE="bash_source")
    r = run_ctl(cwd=tmp_path, env=env)
    assert r.returncode == 0 and "_raftctl_completion()" in r.stdout
    env = ctl_env(tmp_path, _RAFTCTL_COMPLETE="bash_complete", COMP_WORDS="raftctl getl", COMP_CWORD="1")
    r = run_ctl(cwd=tmp_path, env=env)
    assert (r.returncode, r.stdout) == (0, "plain,getleader\n")


def test_a_leader_has_one_json_shape(tmp_path: Path, cluster: Cluster, endpoints: str) -> None:
    lead = cluster.wait_leader()
    r = run_ctl("--endpoints", endpoints, "-o", "json", "transfer-leader", str(lead), cwd=tmp_path)
    moved = json.loads(r.stdout)
    r = run_ctl("--endpoints", endpoints, "-o", "json", "getleader", cwd=tmp_path)
    asked = json.loads(r.stdout)
    assert set(moved) == set(asked) == {"id", "address", "term"}
    assert moved["id"] == asked["id"] == lead


def test_a_bad_timeout_is_not_a_number_not_a_float_range(tmp_path: Path) -> None:
    r = run_ctl("--timeout", "abc", "getval", "k", cwd=tmp_path)
    assert "'abc' is not a number" in one_line_error(r.stderr) and "range" not in r.stderr


def test_global_options_may_follow_the_command(tmp_path: Path, cluster: Cluster, endpoints: str) -> None:
    """`raftctl status -o json` failed with "No such option '-o'" (issue 17): etcdctl's -w, kubectl's -o
    and docker's --format all go after the command."""
    r = run_ctl("status", "-o", "json", "--endpoints", endpoints, "--timeout", "5", cwd=tmp_path)
    assert r.returncode == 0 and [row["reachable"] for row in json.loads(r.stdout)] == [True, True, True]
    r = run_ctl(
        "--endpoints", "127.0.0.1:1", "getleader", "--endpoints", endpoints, "-o", "json", cwd=tmp_path
    )
    assert set(json.loads(r.stdout)) == {"id", "address", "term"}, "the later --endpoints wins"
    r = run_ctl("--endpoints", endpoints, "getval", "k", "--cluster", "c.conf", cwd=tmp_path)
    assert r.returncode == EXIT_USAGE and "give --endpoints or --cluster, not both" in r.stderr


def test_a_command_s_help_does_not_repeat_the_exit_codes(tmp_path: Path) -> None:
    r = run_ctl("getval", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "Exit codes" not in r.stdout and "raftctl --help" in r.stdout
    assert "--endpoints" in r.stdout and "-o, --output" in r.stdout
