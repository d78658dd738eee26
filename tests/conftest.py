"""Shared pytest options for the whole suite."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Started as a background job of a non-interactive shell, the suite inherits SIGINT ignored, and so
    # would every raftctl it starts: the Ctrl-C tests, which play a person at a keyboard, would then see
    # Ctrl-C do nothing. A handled (not ignored) SIGINT here is the default again in each child.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    # Golden files are regenerated rather than hand-edited; reviewers then read the diff.
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="rewrite golden interaction scripts (tests/core/testdata/*.txt) with the actual output",
    )


@pytest.fixture
def rewrite(request: pytest.FixtureRequest) -> bool:
    """True when the run should regenerate golden files instead of comparing against them."""
    return bool(request.config.getoption("--rewrite"))
