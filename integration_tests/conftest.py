"""Container fixtures: a Docker engine (skipped locally without one, required under CI), image, compose."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "raftd:latest"


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    r = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return f"no Docker engine answers: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


@pytest.fixture(scope="session")
def docker_engine() -> None:
    problem = _engine_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"container tests need a Docker engine under CI: {problem}")
    pytest.skip(f"container tests skipped: {problem}")


def image_id(ref: str) -> str | None:
    r = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return r.stdout.strip() if r.returncode == 0 else None


def dangling() -> set[str]:
    r = subprocess.run(
        ["docker", "images", "--quiet", "--no-trunc", "--filter", "dangling=true"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(r.stdout.split())


@dataclass(frozen=True)
class Build:
    previous: str | None  # what raftd:latest named before the build
    current: str
    output: str
    left: set[str]  # untagged images that appeared during the build


@pytest.fixture(scope="session")
def image_build(docker_engine: None) -> Build:
    """Build raftd:latest the way `make image` does (reusing any base image already there)."""
    previous, before = image_id(IMAGE), dangling()
    r = subprocess.run(["deploy/build-image.sh"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"image build failed:\n{r.stdout}\n{r.stderr}"
    current = image_id(IMAGE)
    assert current is not None
    return Build(previous, current, r.stdout, dangling() - before)


@pytest.fixture(scope="session")
def image(image_build: Build) -> str:
    return IMAGE


@pytest.fixture(scope="session")
def compose_cmd(docker_engine: None) -> list[str]:
    """Whichever compose this machine has: the v2 plugin or docker-compose v1."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("a Docker engine runs but no compose tool is installed")
