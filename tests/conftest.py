"""Shared pytest options for the whole suite."""

from __future__ import annotations

import pytest


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
