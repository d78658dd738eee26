"""The interactive shell: the original client's commands and output lines, hardened.

It reads a terminal with line editing and history, or a pipe without any prompt noise, and it never
crashes: every bad line, unreachable node or server error becomes one line on stderr and the next prompt.
Reading a pipe it runs every line and then exits with the code of the first line that failed (as the
one-shot command would have), or stops at that line with stop_on_error (psql's ON_ERROR_STOP), so that
`raftctl < script.txt` can tell a script that a line failed. None for an absent key is not a failure.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TextIO

from raftctl.client import Client, ClientError, NotFound
from raftctl.exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, exit_code
from raftctl.render import (
    alarm_lines,
    change_line,
    leader_line,
    members_table,
    status_table,
    unreachable_summary,
)
from raftd.config import ConfigError, parse_address

PROMPT = "> "
HISTORY_FILE = "~/.raftctl_history"
HISTORY_LENGTH = 1000


# While input() waits, Python's readline module notices a Ctrl-C only when its select() is interrupted: a
# SIGINT that comes while readline is busy with the keys typed before it (echoing them, say) is left
# pending, and the shell waits for a next key that the terminal has just flushed. Under load that left the
# prompt unanswered one time in five. A timer interrupts select() this often, and each time the pending
# signal is handled.
SIGNAL_CHECK_S = 0.1


@contextlib.contextmanager
def _signals_checked() -> Iterator[None]:
    if not hasattr(signal, "setitimer"):
        yield
        return
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, SIGNAL_CHECK_S, SIGNAL_CHECK_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class ShellError(Exception):
    """A line the shell cannot run; the message is shown as one line and the shell goes on."""


@dataclass(frozen=True)
class _Command:
    usage: str
    help: str
    min_args: int
    max_args: int
    run: Callable[[list[str]], bool]  # False ends the shell


class Shell:
    def __init__(
        self,
        endpoints: list[str],
        timeout: float,
        ids: Mapping[str, int] | None = None,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        stop_on_error: bool = False,
    ) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.ids = dict(ids or {})
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.interactive = self.stdin.isatty()
        self.stop_on_error = stop_on_error
        self.failed: int | None = None  # the exit code of the first line that failed
        self.client = Client(self.endpoints, timeout)
        self._history: str | None = None
        self.commands: dict[str, _Command] = {
            "connect": _Command(
                "connect HOST PORT | connect HOST:PORT",
                "send every later command to this node",
                1,
                2,
                self._connect,
            ),
            "getleader": _Command("getleader", "print the leader as ID HOST:PORT", 0, 0, self._getleader),
            "setval": _Command(
                "setval KEY VAL", "store VAL under KEY (quote a VAL with spaces)", 2, 2, self._setval
            ),
            "getval": _Command("getval KEY", "print the value under KEY, or None", 1, 1, self._getval),
            "delete": _Command(
                "delete KEY", "remove KEY (prints None when it was absent)", 1, 1, self._delete
            ),
            "suspend": _Command(
                "suspend PERIOD", "suspend the connected node for PERIOD seconds", 1, 1, self._suspend
            ),
            "status": _Command("status", "a table of every node's view", 0, 0, self._status),
            "member": _Command(
                "member list|add [ID] HOST:PORT|promote ID|remove ID|update ID HOST:PORT",
                "the membership, and changes to it",
                1,
                3,
                self._member,
            ),
            "help": _Command("help", "this list", 0, 0, self._help),
            "quit": _Command("quit", "end the client (also Ctrl-D)", 0, 0, lambda _: False),
        }

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> int:
        self._say("The client starts")
        self._load_history()
        try:
            while True:
                try:
                    line = self._read_line()
                except KeyboardInterrupt:
                    # Ctrl-C drops the line being typed; the terminal already echoed ^C.
                    if self.interactive:
                        self._say("")
                    continue
                if line is None:  # Ctrl-D or the end of the pipe
                    if self.interactive:
                        self._say("")
                    break
                try:
                    if not self.execute(line):
                        break
                except KeyboardInterrupt:
                    self._error("interrupted", EXIT_INTERRUPTED)
                if self.stop_on_error and self.failed is not None:
                    break
        finally:
            self._save_history()
            self.client.close()
        self._say("The client ends")
        # At a terminal the person saw each error as it came; a script learns of them from the exit code.
        return EXIT_OK if self.interactive or self.failed is None else self.failed

    def _read_line(self) -> str | None:
        """The next line without its newline; None at the end of input."""
        if self.interactive:
            try:
                with _signals_checked():
                    return input(PROMPT)
            except EOFError:
                return None
        line = self.stdin.readline()
        return line.rstrip("\r\n") if line else None

    def execute(self, line: str) -> bool:
        """Run one line; False when it ends the shell. Every error is reported here, none escapes."""
        try:
            words = shlex.split(line)
        except ValueError as e:
            self._error(f"cannot parse the line: {e}", EXIT_USAGE)
            return True
        if not words:
            return True
        name, args = words[0], words[1:]
        command = self.commands.get(name)
        if command is None:
            self._error(f"unknown command {name!r}; type help for the list", EXIT_USAGE)
            return True
        if not command.min_args <= len(args) <= command.max_args:
            want = "no arguments" if command.max_args == 0 else f"usage: {command.usage}"
            self._error(f"{name}: wrong number of arguments ({len(args)}); {want}", EXIT_USAGE)
            return True
        try:
            return command.run(args)
        except ShellError as e:
            self._error(f"{name}: {e}", EXIT_USAGE)
        except ClientError as e:
            self._error(str(e), exit_code(e))
        except Exception as e:  # the shell outlives any bug in one command
            self._error(f"{name}: internal error: {type(e).__name__}: {e}", EXIT_ERROR)
        return True

    # -- commands -----------------------------------------------------------------------------------
    def _connect(self, args: list[str]) -> bool:
        text = f"{args[0]}:{args[1]}" if len(args) == 2 else args[0]
        try:
            endpoint = parse_address(text)
        except ConfigError as e:
            raise ShellError(str(e)) from None
        old, self.client = self.client, Client([endpoint], self.timeout, pin=True)
        old.close()
        return True

    def _getleader(self, args: list[str]) -> bool:
        self._say(leader_line(self.client.get_leader()))
        return True

    def _setval(self, args: list[str]) -> bool:
        self.client.put(args[0], args[1])
        return True

    def _getval(self, args: list[str]) -> bool:
        try:
            self._say(self.client.get(args[0]))
        except NotFound:
            self._say("None")
        return True

    def _delete(self, args: list[str]) -> bool:
        if not self.client.delete(args[0]):
            self._say("None")
        return True

    def _suspend(self, args: list[str]) -> bool:
        try:
            period = int(args[0])
        except ValueError:
            raise ShellError(f"PERIOD must be a whole number of seconds, not {args[0]!r}") from None
        self.client.suspend(period)  # the node checks the bounds, for every client alike
        return True

    def _status(self, args: list[str]) -> bool:
        # Every node the shell knows of: the endpoint list, and the connected node should it be elsewhere.
        endpoints = self.endpoints + [e for e in self.client.endpoints if e not in self.endpoints]
        with Client(endpoints, self.timeout) as everyone:
            rows = everyone.status_all()
        self._say(status_table(rows, self.ids))
        problem = unreachable_summary(rows)
        if problem is not None:
            self._error(problem, EXIT_UNAVAILABLE)  # as the one-shot `status` exits
        elif alarms := alarm_lines(rows):
            self._error("; ".join(alarms), EXIT_ERROR)
        return True

    def _member(self, args: list[str]) -> bool:
        verb, rest = args[0], args[1:]
        arity = {"list": (0,), "add": (1, 2), "promote": (1,), "remove": (1,), "update": (2,)}
        if len(rest) not in arity.get(verb, ()):
            raise ShellError("usage: " + self.commands["member"].usage)
        if verb == "list":
            r = self.client.member_list()
            self._say(members_table(list(r.members), r.leader_id))
            return True
        if verb == "add":
            node = self._id(rest[0]) if len(rest) == 2 else None
            answer = self.client.member_add(self._address(rest[-1]), node)
        elif verb == "update":
            answer = self.client.member_update(self._id(rest[0]), self._address(rest[1]))
        elif verb == "promote":
            answer = self.client.member_promote(self._id(rest[0]))
        else:
            answer = self.client.member_remove(self._id(rest[0]))
        self._say(change_line(verb, answer, self.endpoints))
        return True

    @staticmethod
    def _id(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise ShellError(f"ID must be a whole number, not {text!r}") from None

    @staticmethod
    def _address(text: str) -> str:
        try:
            return parse_address(text)
        except ConfigError:
            raise ShellError(f"{text!r} is not one HOST:PORT") from None

    def _help(self, args: list[str]) -> bool:
        width = max(len(c.usage) for c in self.commands.values())
        for c in self.commands.values():
            self._say(f"{c.usage:<{width}}  {c.help}")
        return True

    # -- output and history -------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    def _error(self, text: str, code: int) -> None:
        """Report a failed line, and remember the first failure's exit code."""
        if self.failed is None:
            self.failed = code
        self.stdout.flush()
        print(f"error: {' '.join(text.split())}", file=self.stderr, flush=True)

    def _load_history(self) -> None:
        """Line editing and history on a terminal only; a missing or unreadable history file is no error."""
        if not self.interactive:
            return
        try:
            import readline
        except ImportError:
            return
        self._history = os.path.expanduser(HISTORY_FILE)
        readline.set_history_length(HISTORY_LENGTH)
        with contextlib.suppress(OSError, ValueError):
            readline.read_history_file(self._history)

    def _save_history(self) -> None:
        if self._history is None:
            return
        try:
            import readline

            readline.write_history_file(self._history)
        except (OSError, ImportError, ValueError):
            pass
