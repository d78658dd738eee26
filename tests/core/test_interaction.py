"""Runs every golden interaction script in testdata/ and compares the output with the file, byte for byte.

With ``pytest --rewrite`` the files are regenerated instead; review the resulting diff like code.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from raftd.core import Entry, Role
from tests.core.interaction import Env, ScriptError, run_script

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


def test_scripts_exist() -> None:
    assert SCRIPTS, f"no interaction scripts found in {TESTDATA}"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_interaction(path: Path, rewrite: bool) -> None:
    expected = path.read_text()
    actual = run_script(expected, str(path))
    if rewrite:
        if actual != expected:
            path.write_text(actual)
        return
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=f"{path.name} (expected)",
                tofile=f"{path.name} (actual)",
            )
        )
        pytest.fail(f"{path.name} differs from the actual output (rerun with --rewrite to accept):\n{diff}")


def test_rewrite_fills_in_missing_output_and_is_a_fixed_point() -> None:
    """A bare command gets its block; a rewritten script rewrites to itself (so a passing file is stable)."""
    script = "# prose\nadd-nodes 1\n\ncampaign 1\nstatus 1\n"
    once = run_script(script)
    assert once.startswith("# prose\nadd-nodes 1\n----\nnodes 1: ")
    # A single node wins its own election at once, before any Ready is processed.
    assert "campaign 1\n----\nok\n\nstatus 1\n----\n1: leader term=1 " in once
    assert run_script(once) == once


def test_stale_expected_output_is_replaced() -> None:
    assert run_script("add-nodes 1\n----\nsomething else\n") != "add-nodes 1\n----\nsomething else\n"


def test_unknown_command_is_a_script_error() -> None:
    with pytest.raises(ScriptError, match="unknown command"):
        run_script("add-nodes 1\nfrobnicate 1\n")


def test_safety_checks_are_not_vacuous() -> None:
    """Forge two leaders of one term and a divergent apply: the interpreter must flag both."""
    env = Env()
    env.run("add-nodes 3")
    for i in (1, 2):
        env.nodes[i].raft.term = 1
        env.nodes[i].raft.role = Role.LEADER
    assert any("both led term 1" in line for line in env.run("status 1"))
    env.apply(1, Entry(1, 1, b"a"))
    env.out = []
    env.apply(2, Entry(1, 1, b"b"))
    assert any("!!! SAFETY" in line for line in env.out)
