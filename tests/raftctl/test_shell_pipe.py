"""The shell reading a pipe: the original client's lines exactly, no prompts, and no crash on bad input."""

from __future__ import annotations

from pathlib import Path

from raftctl.exits import EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_USAGE
from raftd.launcher import free_ports
from tests.daemon.cluster import Cluster, wait_until

from .conftest import run_ctl


def test_original_example_1(tmp_path: Path, cluster: Cluster) -> None:
    """The original README's first client session, line for line (minus the prompts a pipe does not get)."""
    lead = cluster.wait_leader()
    follower = cluster.followers(lead)[0]
    host, port = cluster.address(follower).split(":")
    script = f"connect {host} {port}\ngetleader\ngetval key1\nsetval key1 100\ngetval key1\nquit\n"
    r = run_ctl("--endpoints", cluster.address(lead), cwd=tmp_path, input=script)
    expected = f"The client starts\n{lead} {cluster.address(lead)}\nNone\n100\nThe client ends\n"
    assert (r.returncode, r.stdout, r.stderr) == (0, expected, "")


def test_end_of_input_ends_like_quit_and_quotes_keep_spaces(tmp_path: Path, cluster: Cluster) -> None:
    script = (
        "setval 'pipe key' \"two  spaces and 'quotes'\"\n"
        "getval 'pipe key'\n"
        "setval pipe-empty ''\n"
        "getval pipe-empty\n"
        "\n"
        "   \n"
        "delete 'pipe key'\n"
        "delete 'pipe key'\n"
        "getval 'pipe key'\n"
        "connect " + cluster.address(2) + "\n"
        "getval pipe-empty"  # no newline at the end, and no quit
    )
    r = run_ctl("--cluster", str(cluster.config_path), cwd=tmp_path, input=script)
    expected = "The client starts\ntwo  spaces and 'quotes'\n\nNone\nNone\n\nThe client ends\n"
    assert (r.returncode, r.stdout, r.stderr) == (0, expected, "")


def test_bad_lines_get_one_message_each_and_the_shell_goes_on(tmp_path: Path, cluster: Cluster) -> None:
    bad = [
        "setval",
        "setval a b c",
        "getval",
        "getval a b",
        "delete",
        "getleader now",
        "suspend",
        "suspend x",
        "suspend 1.5",
        "suspend -3",
        "suspend 99999",
        "frobnicate",
        'setval "open',
        "connect",
        "connect 127.0.0.1",
        "connect 127.0.0.1 port",
        "connect 127.0.0.1 70000",
        "connect a b c",
        "quit now",
        "setval '' value",
    ]
    script = "\n".join([*bad, "setval pipe-after ok", "getval pipe-after", "quit", "getval never"]) + "\n"
    r = run_ctl("--endpoints", cluster.address(0), cwd=tmp_path, input=script)
    assert r.returncode == EXIT_USAGE, "every line ran; the exit code is the first failed line's"
    assert r.stdout == "The client starts\nok\nThe client ends\n"
    errors = r.stderr.splitlines()
    assert len(errors) == len(bad), r.stderr
    assert all(e.startswith("error: ") for e in errors), errors
    assert "Traceback" not in r.stderr
    assert errors[-1] == "error: the key is empty"
    assert errors[10] == "error: period must be 1..3600 seconds, not 99999"


def test_an_unreachable_server_is_one_message(tmp_path: Path, cluster: Cluster) -> None:
    (port,) = free_ports(1)
    script = (
        f"connect 127.0.0.1 {port}\ngetleader\nsetval k v\ngetval k\nsuspend 1\nstatus\n"
        f"connect {cluster.address(1)}\ngetval pipe-unset\n"
    )
    r = run_ctl("--endpoints", cluster.address(0), "--timeout", "0.5", cwd=tmp_path, input=script)
    assert r.returncode == EXIT_UNAVAILABLE
    lines = r.stdout.splitlines()
    assert lines[0] == "The client starts" and lines[-2:] == ["None", "The client ends"]
    # status lists the shell's endpoint and the connected one, which did not answer
    assert f"| 127.0.0.1:{port} " in r.stdout and r.stdout.count("| no ") == 1
    errors = r.stderr.splitlines()
    assert len(errors) == 5, r.stderr
    for e in errors[:3]:
        assert f"no node answers (127.0.0.1:{port}: connection refused)" in e
    assert errors[3].startswith(f"error: cannot suspend 127.0.0.1:{port}: ")
    assert errors[4].startswith(f"error: 1 of 2 endpoints unreachable (127.0.0.1:{port}: ")


def test_suspend_the_connected_follower(tmp_path: Path, cluster: Cluster) -> None:
    """Suspended, the connected node knows no leader; getleader waits (within --timeout) until it is back."""
    lead = cluster.wait_leader()
    follower = cluster.followers(lead)[1]
    script = f"connect {cluster.address(follower)}\nsuspend 1\ngetleader\nquit\n"
    r = run_ctl("--timeout", "10", cwd=tmp_path, input=script)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == f"The client starts\n{lead} {cluster.address(lead)}\nThe client ends\n"
    wait_until(f"node {follower} to be back", lambda: not cluster.status(follower).suspended, 20)


def test_a_script_learns_of_its_first_failed_line_and_can_stop_there(
    tmp_path: Path, cluster: Cluster
) -> None:
    """It exited 0 after failing lines (issue 17). None for an absent key is not a failure."""
    script = "getval pipe-absent\nsetval '' v\nsetval pipe-later x\ngetval pipe-later\n"
    e = ["--endpoints", cluster.address(0)]
    r = run_ctl(*e, cwd=tmp_path, input=script)
    assert (r.returncode, r.stdout) == (EXIT_INVALID, "The client starts\nNone\nx\nThe client ends\n"), r
    r = run_ctl(*e, "--stop-on-error", cwd=tmp_path, input=script.replace("pipe-later", "pipe-never"))
    assert (r.returncode, r.stdout) == (EXIT_INVALID, "The client starts\nNone\nThe client ends\n"), r
    assert r.stderr == "error: the key is empty\n"
    r = run_ctl(*e, "getval", "pipe-never", cwd=tmp_path)
    assert r.stdout == "None\n", "--stop-on-error stopped before the write"
    r = run_ctl(*e, cwd=tmp_path, input="getval pipe-absent\ndelete pipe-absent\n")
    assert (r.returncode, r.stderr) == (0, "")


def test_member_commands_in_the_shell(tmp_path: Path, cluster: Cluster) -> None:
    """The one-shot `member` commands' lines, and their refusals, one line each with their exit codes."""
    script = "member list\nmember promote 0\nmember add nowhere\nmember frob\nmember remove\n"
    r = run_ctl("--cluster", str(cluster.config_path), cwd=tmp_path, input=script)
    lines = r.stdout.splitlines()
    assert lines[1].split() == ["ID", "ADDRESS", "ROLE", "MATCH", "INCARNATION"], r.stdout
    assert sorted(int(line.split()[0]) for line in lines[2:5]) == [0, 1, 2]
    errors = r.stderr.splitlines()
    assert len(errors) == 4, r.stderr
    assert "member promote: node 0 is a voter already" in errors[0] or "not recorded" in errors[0], errors
    assert "is not one HOST:PORT" in errors[1] and "usage: member list" in errors[2], errors
    assert r.returncode in (EXIT_INVALID, 5), "the first failure's code: a wrong request, or too early"
