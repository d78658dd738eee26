"""The shell on a pseudo-terminal: prompts, line editing keys, Ctrl-C, Ctrl-D, history, quoting."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftd.launcher import free_ports
from tests.daemon.cluster import Cluster

from .conftest import ctl_env
from .ptyproc import PtyProcess

PROMPT = r"(?m)^> "


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME of the test's own, with an inputrc that keeps readline from sending bracketed-paste codes."""
    (tmp_path / ".inputrc").write_text("set enable-bracketed-paste off\n")
    return tmp_path


def spawn(home: Path, *args: str) -> PtyProcess:
    env = ctl_env(home, TERM="dumb", INPUTRC=str(home / ".inputrc"))
    return PtyProcess([sys.executable, "-m", "raftctl", *args], env, home)


@pytest.fixture
def nowhere(home: Path) -> Iterator[PtyProcess]:
    """A shell whose only endpoint is a port no one listens on."""
    (port,) = free_ports(1)
    p = spawn(home, "--endpoints", f"127.0.0.1:{port}", "--timeout", "0.5")
    try:
        p.expect(r"The client starts\n")
        p.expect(PROMPT)
        yield p
    finally:
        p.close()


def test_prompt_help_and_quit(nowhere: PtyProcess) -> None:
    nowhere.send("help\r")
    nowhere.expect(r"getval KEY +print the value under KEY, or None")
    nowhere.expect(PROMPT)
    nowhere.send("quit\r")
    nowhere.expect(r"The client ends\n")
    assert nowhere.wait() == 0


def test_ctrl_d_ends_like_quit(nowhere: PtyProcess) -> None:
    nowhere.send("\x04")
    nowhere.expect(r"The client ends\n")
    assert nowhere.wait() == 0


def test_ctrl_c_cancels_the_line(nowhere: PtyProcess) -> None:
    # Had the cancelled line run, setval with one argument would complain.
    nowhere.send("setval onlyakey")
    nowhere.expect("setval onlyakey")  # echoed as typed
    nowhere.send("\x03")
    nowhere.expect(PROMPT)
    nowhere.send("getleader extra\r")
    nowhere.expect(r"error: getleader: wrong number of arguments \(1\); no arguments\n")
    assert "setval: wrong number" not in nowhere.seen
    nowhere.expect(PROMPT)
    nowhere.send("quit\r")
    nowhere.expect(r"The client ends\n")
    assert nowhere.wait() == 0


def test_ctrl_c_interrupts_a_waiting_request(home: Path) -> None:
    # A port that accepts connections and never answers: the request hangs inside gRPC until Ctrl-C.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        p = spawn(home, "--endpoints", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "60")
        try:
            p.expect(PROMPT)
            p.send("getval k\r")
            p.expect(r"getval k\n")
            # Ctrl-C typed while readline still returns the line would only cancel the line; let the
            # request start first. (A wait before acting, not a timing assertion.)
            time.sleep(1.0)
            p.send("\x03")
            p.expect(r"error: interrupted\n")
            p.expect(PROMPT)
            p.send("\x04")
            p.expect(r"The client ends\n")
            assert p.wait() == 0
        finally:
            p.close()


def test_bad_lines_each_get_one_message_and_a_prompt(nowhere: PtyProcess) -> None:
    for line, message in [
        ("bogus", r"error: unknown command 'bogus'; type help for the list"),
        ("suspend soon", r"error: suspend: PERIOD must be a whole number of seconds, not 'soon'"),
        ("setval a b c", r"error: setval: wrong number of arguments \(3\); usage: setval KEY VAL"),
        ('getval "open', r"error: cannot parse the line: No closing quotation"),
        (
            "connect localhost notaport",
            r"error: connect: endpoint 'localhost:notaport': port .* is not an integer",
        ),
        ("getval k", r"error: getval: no node answers \(127\.0\.0\.1:\d+: connection refused\)"),
    ]:
        nowhere.send(line + "\r")
        nowhere.expect(message + r"\n> ")
    nowhere.send("quit\r")
    nowhere.expect(r"The client ends\n")
    assert nowhere.wait() == 0


def test_history_is_kept_and_an_unwritable_one_ignored(home: Path, tmp_path: Path) -> None:
    p = spawn(home, "--endpoints", "127.0.0.1:1")
    try:
        p.expect(PROMPT)
        p.send("help\r")
        p.expect(PROMPT)
        p.send("quit\r")
        assert p.wait() == 0
    finally:
        p.close()
    assert "help" in (home / ".raftctl_history").read_text()

    # The history path is a directory: reading and writing it fail, and that is no one's problem.
    other = tmp_path / "other-home"
    (other / ".raftctl_history").mkdir(parents=True)
    (other / ".inputrc").write_text("set enable-bracketed-paste off\n")
    p = spawn(other, "--endpoints", "127.0.0.1:1")
    try:
        p.expect(r"The client starts\n")
        p.expect(PROMPT)
        p.send("quit\r")
        p.expect(r"The client ends\n")
        assert p.wait() == 0
    finally:
        p.close()
    assert "Traceback" not in p.seen


def test_quoted_values_through_a_terminal(home: Path, cluster: Cluster) -> None:
    p = spawn(home, "--endpoints", cluster.address(0))
    try:
        p.expect(PROMPT)
        p.send("setval 'pty key' \"a value  with spaces\"\r")
        p.expect(PROMPT)
        p.send("getval 'pty key'\r")
        p.expect(r"\na value  with spaces\n> ")
        p.send("getleader\r")
        p.expect(r"\n\d+ 127\.0\.0\.1:\d+\n> ")
        p.send("\x04")
        p.expect(r"The client ends\n")
        assert p.wait() == 0
    finally:
        p.close()
