"""The glibc malloc settings: effective on glibc, harmless no-ops anywhere else."""

from __future__ import annotations

import platform

import pytest

from raftd import malloc


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc",
    reason="mallopt/malloc_trim exist only in glibc; the no-op path elsewhere is tested below",
)
def test_on_glibc_the_settings_take_effect() -> None:
    assert malloc.tune() is True
    assert isinstance(malloc.trim(), bool)


def test_without_glibc_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "_glibc", None)
    assert malloc.tune() is False
    assert malloc.trim() is False


def test_a_c_library_other_than_glibc_is_not_taken_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc._load_glibc() is None
