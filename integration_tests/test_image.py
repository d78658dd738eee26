"""`make image` cleans up after itself (issue 17): it left two untagged images behind on every build, the
build stage's and the one raftd:latest named before."""

from __future__ import annotations

from .conftest import Build


def test_the_build_leaves_no_untagged_image_behind(image_build: Build) -> None:
    # (A previous image still used by a container stays, and the build says so.)
    assert image_build.left == set() or "still in use" in image_build.output, image_build.output
