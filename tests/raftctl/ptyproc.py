"""A child process on a pseudo-terminal, driven like a person at a keyboard (stdlib pty, no pexpect).

The child gets the pty as its controlling terminal, so Ctrl-C (\\x03) and Ctrl-D (\\x04) written to the
master go through the terminal's line discipline and readline exactly as typed keys would.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
EXPECT_TIMEOUT_S = 15.0


class PtyProcess:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once, touching nothing of the parent's state
            try:
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid = pid
        self.fd = fd
        self.seen = ""  # everything read so far, control sequences stripped, \r removed
        self._pos = 0  # expect() searches from here
        self.status: int | None = None
        # A real size: readline wraps and redraws oddly on a 0x0 terminal.
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def _read(self, timeout: float) -> bool:
        """Read what is available within timeout; False at end of output."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed its side
            return False
        if not data:
            return False
        self.seen += _ANSI.sub("", data.decode(errors="replace")).replace("\r", "")
        return True

    def expect(self, pattern: str, timeout: float = EXPECT_TIMEOUT_S) -> re.Match[str]:
        """Wait for the regex in the output after the previous match; AssertionError with the output."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.seen, self._pos)
            if m:
                self._pos = m.end()
                return m
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout:g}s; output: {self.since_last()!r}")
            if not self._read(min(remaining, 0.1)):
                m = rx.search(self.seen, self._pos)
                if m:
                    self._pos = m.end()
                    return m
                raise AssertionError(f"no {pattern!r} before the output ended: {self.since_last()!r}")

    def since_last(self) -> str:
        return self.seen[self._pos :]

    def wait(self, timeout: float = EXPECT_TIMEOUT_S) -> int:
        """Wait for the child to exit (reading its last output); its exit status."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the shell did not exit; output: {self.seen!r}")
            self._read(0.05)
        while self._read(0.05):
            ready, _, _ = select.select([self.fd], [], [], 0)
            if not ready:
                break
        return self.status

    def close(self) -> None:
        """Kill the child if it still runs; always reap it and close the terminal."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(self.pid, 0)
                self.status = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            os.close(self.fd)
