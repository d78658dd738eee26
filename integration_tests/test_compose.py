"""The compose deployment end to end: build, up, healthy, write and read through published ports, lose a
node, keep serving, grow by a node that joins, down -v. From the host only ports published on 127.0.0.1
are used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from raftctl.client import Client, ServerError
from raftd.config import NodeAddr, load_cluster
from raftd.deploy.compose import render
from raftd.launcher import free_ports
from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc
from tests.daemon.cluster import ETCDCTL_INSTALL, etcdctl_env, need

WAIT_S = 90


class Deployment:
    def __init__(
        self, compose: list[str], directory: Path, project: str, ports: list[int], image: str
    ) -> None:
        self.compose = compose
        self.image = image
        self.dir = directory
        self.project = project
        self.ports = ports
        self.env = {**os.environ, "COMPOSE_API_VERSION": "auto"} if compose == ["docker-compose"] else None

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*self.compose, "-p", self.project, "-f", str(self.dir / "compose.yml"), *args],
            cwd=self.dir,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=180,
            check=False,
        )
        if check:
            assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        return r

    def container(self, service: str) -> str:
        r = subprocess.run(
            [
                "docker",
                "ps",
                "-aq",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--filter",
                f"label=com.docker.compose.service={service}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        ids = r.stdout.split()
        assert len(ids) == 1, f"expected one container for {service}, got {ids}"
        return ids[0]

    def health(self, service: str) -> str:
        r = subprocess.run(
            ["docker", "inspect", "--format", "{{json .State}}", self.container(service)],
            capture_output=True,
            text=True,
            check=True,
        )
        state = json.loads(r.stdout)
        return (state.get("Health") or {}).get("Status", state.get("Status", "?"))

    def wait_healthy(self, services: list[str]) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if all(self.health(s) == "healthy" for s in services):
                return
            time.sleep(1)
        logs = self.run("logs", "--tail=30", check=False).stdout
        pytest.fail(f"not healthy within {WAIT_S}s: {[self.health(s) for s in services]}\n{logs}")

    def kv(self, port: int) -> kv_pb2_grpc.KVStub:
        return kv_pb2_grpc.KVStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def _retry(call, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Calls through a node may fail while an election settles; any one success is what counts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _etcdctl(d: Deployment) -> Callable[..., str]:
    """etcdctl against the deployment's published ports (`on`: which nodes; all by default), its output
    stripped; skipped when etcdctl is absent, failed so under CI."""
    need("etcdctl", shutil.which("etcdctl") is not None, ETCDCTL_INSTALL)
    env = etcdctl_env()

    def run(*args: str, stdin: str | None = None, on: list[int] | None = None, stderr: bool = False) -> str:
        endpoints = ",".join(f"127.0.0.1:{d.ports[i]}" for i in (on if on is not None else range(3)))
        r = subprocess.run(
            ["etcdctl", f"--endpoints={endpoints}", "--command-timeout=20s", *args],
            input=stdin, capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, f"etcdctl {' '.join(args)}: {r.stderr}"
        return (r.stdout + (r.stderr if stderr else "")).strip()

    return run


@pytest.fixture
def deployment(image: str, compose_cmd: list[str], tmp_path: Path) -> Iterator[Deployment]:
    ports = free_ports(3)
    cluster_map = tmp_path / "cluster.yaml"
    cluster_map.write_text(
        "name: it-compose\nnodes:\n"
        + "".join(f"  - {{id: {i}, host: n{i}, port: {p}}}\n" for i, p in enumerate(ports))
    )
    (tmp_path / "compose.yml").write_text(
        render(load_cluster(cluster_map), str(cluster_map), str(tmp_path), image)
    )
    d = Deployment(compose_cmd, tmp_path, f"raftdit{uuid.uuid4().hex[:8]}", ports, image)
    try:
        d.run("up", "-d")
        yield d
    finally:
        d.run("down", "-v", "--remove-orphans", "-t", "2", check=False)


def test_compose_cluster_survives_a_lost_node(deployment: Deployment) -> None:
    d = deployment
    d.wait_healthy(["n0", "n1", "n2"])
    p0, p1, p2 = d.ports
    # Write through one published port, read (linearizably) through another.
    _retry(lambda: d.kv(p0).Put(pb.PutRequest(key=b"k", value=b"v1"), timeout=5))
    assert _retry(lambda: d.kv(p1).Get(pb.GetRequest(key=b"k"), timeout=5)).value == b"v1"
    # Inside the network, the image's raftctl reads the same value.
    r = d.run("exec", "-T", "n2", "raftctl", "getval", "k")
    assert r.stdout.strip() == "v1"
    # etcd's own CLI, on the host: the commands tests/daemon/test_etcd.py runs against processes.
    etcdctl = _etcdctl(d)
    assert etcdctl("put", "svc/a", "1", on=[0]) == "OK"
    etcdctl("put", "svc/b", "2", on=[1])
    assert etcdctl("get", "svc/", "--prefix", on=[2]).split() == ["svc/a", "1", "svc/b", "2"]
    assert etcdctl("txn", stdin='value("svc/a") = "1"\n\nput svc/a swapped\n\n\n').split() == [
        "SUCCESS",
        "OK",
    ]
    assert etcdctl("del", "svc/b") == "1"
    assert len(etcdctl("member", "list").splitlines()) == 3
    assert (
        len({row["Status"]["leader"] for row in json.loads(etcdctl("endpoint", "status", "-w", "json"))}) == 1
    )
    assert etcdctl("endpoint", "health", stderr=True).count("is healthy") == 3  # etcdctl writes it to stderr
    # Kill one node's container: the other two keep serving reads and writes, to both APIs.
    subprocess.run(["docker", "kill", d.container("n0")], capture_output=True, check=True)
    _retry(lambda: d.kv(p1).Put(pb.PutRequest(key=b"k", value=b"v2"), timeout=5))
    assert _retry(lambda: d.kv(p2).Get(pb.GetRequest(key=b"k"), timeout=5)).value == b"v2"
    etcdctl("put", "svc/c", "3", on=[1, 2])
    assert etcdctl("get", "svc/c", on=[2]).split() == ["svc/c", "3"]
    # It comes back with its volume and catches up.
    d.run("start", "n0")
    d.wait_healthy(["n0"])
    got = _retry(lambda: d.kv(p0).Get(pb.GetRequest(key=b"k"), timeout=5))
    assert got.value == b"v2"


def test_compose_cluster_grows_by_a_service_that_joins(deployment: Deployment) -> None:
    """docs/operations.md's procedure: member add, regenerate with --join, up -d the new service only,
    promote. The running services are not recreated."""
    d = deployment
    d.wait_healthy(["n0", "n1", "n2"])
    running = {s: d.container(s) for s in ("n0", "n1", "n2")}
    host = [f"127.0.0.1:{p}" for p in d.ports]
    with Client(host, timeout=30.0) as client:
        client.put("k", "before")
        (port,) = free_ports(1)
        added = client.member_add(f"n3:{port}").member
        assert (added.id, added.learner) == (3, True)
        cluster_map = d.dir / "cluster.yaml"
        joiner = NodeAddr(3, "n3", port)
        (d.dir / "compose.yml").write_text(
            render(load_cluster(cluster_map), str(cluster_map), str(d.dir), d.image, [joiner])
        )
        d.run("up", "-d", "n3")
        d.wait_healthy(["n3"])
        assert {s: d.container(s) for s in running} == running, "the running services were left alone"
        deadline = time.monotonic() + WAIT_S
        while True:  # refused (FAILED_PRECONDITION) while it is behind
            try:
                client.member_promote(3)
                break
            except ServerError:
                assert time.monotonic() < deadline, "node 3 was never promoted"
                time.sleep(0.5)
        roles = {m.id: m.learner for m in client.member_list().members}
        assert roles == {0: False, 1: False, 2: False, 3: False}
        client.put("k", "after")
    with Client([f"127.0.0.1:{port}"], timeout=30.0, pin=True) as new:
        assert new.get("k") == "after", "served (linearizably) by the node that joined"
    r = d.run("exec", "-T", "n3", "raftctl", "member", "list")
    assert r.stdout.count("voter") == 4, r.stdout


def test_image_runs_as_non_root_with_a_data_volume(image: str) -> None:
    r = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config}}", image],
        capture_output=True,
        text=True,
        check=True,
    )
    config = json.loads(r.stdout)
    assert config["User"] not in ("", "0", "root", "0:0")
    assert "/data" in (config.get("Volumes") or {})
    assert config["Entrypoint"] == ["raftd"]
    r = subprocess.run(
        ["docker", "run", "--rm", image, "--version"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0 and "raftd" in r.stdout
    r = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "raftctl", image, "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
