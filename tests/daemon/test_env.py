"""raftd's settings from the environment: every option has its variable, as `raftd --help` says, and a
RAFTD_* variable raftd does not know gets a warning (issue 17: RAFTD_HEARTBEAT_INTERVAL=900 was silently
ignored, and nothing read the election timeout or --restore from the environment)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from raftd.cli import ENV

from .cluster import HOST, Cluster, free_ports, raftd_env, run_raftd, wait_until


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    ports = free_ports(3)
    path = tmp_path / "config.conf"
    path.write_text("".join(f"{i} {HOST} {p}\n" for i, p in enumerate(ports)))
    return path


@pytest.mark.parametrize(
    ("variable", "value", "error"),
    [
        ("RAFTD_HEARTBEAT_INTERVAL", "900", "need heartbeat < election minimum"),
        ("RAFTD_ELECTION_TIMEOUT", "abc", "--election-timeout wants MIN-MAX in ms"),
        ("RAFTD_RESTORE", "no-such-backup.bak", "no-such-backup.bak"),
        ("RAFTD_MAX_SNAPSHOT_BYTES", "0", "--max-snapshot-bytes"),
        ("RAFTD_MAX_PEER_QUEUE", "0", "--max-peer-queue"),
        ("RAFTD_MAX_KEY_BYTES", "0", "--max-key-bytes"),
        ("RAFTD_MAX_VALUE_BYTES", "4193281", "--max-value-bytes"),
    ],
)
def test_each_option_s_variable_is_read(
    tmp_path: Path, conf: Path, variable: str, value: str, error: str
) -> None:
    """Each value is bad, so the node refuses to start: proof that the variable was read."""
    r = run_raftd(["0", "--config", str(conf)], tmp_path, env={variable: value})
    assert r.returncode != 0 and error in r.stderr, r
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_help_names_every_variable() -> None:
    r = run_raftd(["--help"], Path.cwd())
    text = " ".join(r.stdout.split())
    for option, variable in ENV.items():
        assert f"{variable} for {option}" in text.replace("- ", "-"), (variable, r.stdout)


def test_an_unknown_variable_is_a_warning_and_the_node_starts(tmp_path: Path, conf: Path) -> None:
    env = {**raftd_env(), "RAFTD_HEARTBEAT_INTERVALL": "900", "RAFTD_TEST_ANYTHING": "1"}
    with (tmp_path / "err").open("w") as err, (tmp_path / "out").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raftd", "0", "--config", str(conf)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
        )
    try:
        wait_until("the node to start", lambda: "The server starts" in (tmp_path / "out").read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (tmp_path / "err").read_text() == (
        "raftd: warning: unknown environment variable RAFTD_HEARTBEAT_INTERVALL is ignored\n"
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["abc"], "raftd: error: ID: 'abc' is not a valid integer"),
        (
            ["0", "--heartbeat-interval", "x"],
            "raftd: error: --heartbeat-interval: 'x' is not a valid integer",
        ),
        (["0", "--bogus"], "raftd: error: No such option '--bogus'"),
        (["0", "--max-peer-queue", "0"], "raftd: error: --max-peer-queue: 0 is not in the range x>=1"),
        (
            ["0", "--max-key-bytes", "0"],
            "raftd: error: --max-key-bytes: 0 is not in the range 1<=x<=4193280",
        ),
        (
            # Beyond it an answer carrying the value would not fit the original client's 4 MiB messages.
            ["0", "--max-value-bytes", "4193281"],
            "raftd: error: --max-value-bytes: 4193281 is not in the range 1<=x<=4193280",
        ),
        ([], "raftd: error: Missing argument 'ID'"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], error: str) -> None:
    """As raftctl's are; click's own form took three lines (issue 17)."""
    r = run_raftd(args, tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", error + "\n")


def test_log_timestamps_on_request_and_the_original_lines_without(tmp_path: Path, conf: Path) -> None:
    for flag, pattern in (
        (["--log-timestamps"], r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z The server starts at "),
        ([], r"The server starts at "),
    ):
        out = tmp_path / f"out{len(flag)}"
        with out.open("w") as sink:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "raftd",
                    "0",
                    "--config",
                    str(conf),
                    "--data-dir",
                    str(tmp_path / f"d{len(flag)}"),
                    *flag,
                ],
                cwd=tmp_path,
                env=raftd_env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until("the first line", lambda out=out: "The server starts" in out.read_text())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        assert re.fullmatch(pattern + r"127\.0\.0\.1:\d+", out.read_text().splitlines()[0]), out.read_text()


def test_a_peer_that_goes_away_is_one_debug_line_naming_its_address(tmp_path: Path) -> None:
    """Debug logs named core ids ("peer 3" for node 2) and dumped a gRPC error's dozen-line repr, or an
    exception's bare type name (issue 17)."""
    c = Cluster(tmp_path)
    try:
        for i in range(3):
            c.start(i, "--log-level", "debug")
        leader = c.wait_leader()
        gone = c.followers(leader)[0]
        since = c.log_size(leader)
        c.kill(gone)
        c.put_retrying(leader, "k", "v")
        wanted = f"Peer at {c.address(gone)} unreachable: "

        def line() -> str | None:
            return next((x for x in c.log(leader, since).splitlines() if wanted in x), None)

        text = wait_until("the leader's line", line)
        assert not re.search(r"RpcError|InvalidStateError|\bpeer \d", text), text
        assert "debug_error_string" not in c.log(leader, since)
    finally:
        c.close()
