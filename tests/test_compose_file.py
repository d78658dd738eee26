"""The compose generator, and that the committed docker-compose.yml is what the 3-node map generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from raftd.config import load_cluster
from raftd.deploy.compose import render

ROOT = Path(__file__).resolve().parent.parent


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftd", "compose", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_committed_compose_file_is_current() -> None:
    r = _compose("--cluster", "deploy/cluster-3.yaml", "-o", "docker-compose.yml", "--check")
    assert r.returncode == 0, r.stderr


def test_check_notices_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "docker-compose.yml"
    stale.write_text((ROOT / "docker-compose.yml").read_text().replace("unless-stopped", "always"))
    r = _compose("--cluster", str(ROOT / "deploy/cluster-3.yaml"), "-o", str(stale), "--check")
    assert r.returncode == 1
    assert "regenerate" in r.stderr


def test_five_node_map(tmp_path: Path) -> None:
    cluster = load_cluster(ROOT / "deploy/cluster-5.yaml")
    doc = yaml.safe_load(render(cluster, str(ROOT / "deploy/cluster-5.yaml"), str(tmp_path)))
    assert "version" not in doc
    assert list(doc["services"]) == ["n0", "n1", "n2", "n3", "n4"]
    assert list(doc["volumes"]) == [f"n{i}-data" for i in range(5)]
    for i, (name, svc) in enumerate(doc["services"].items()):
        assert svc["ports"] == [f"127.0.0.1:{50000 + i}:{50000 + i}"]
        assert svc["environment"]["RAFTD_NODE_ID"] == str(i)
        assert svc["volumes"][0] == f"{name}-data:/data"
        assert svc["volumes"][1].endswith("deploy/cluster-5.yaml:/etc/raftd/cluster.yaml:ro")
        assert "raftd.deploy.probe" in svc["healthcheck"]["test"]
    assert "&id" not in render(cluster, "deploy/cluster-5.yaml", str(ROOT))


def test_conf_format_map_and_bad_hosts(tmp_path: Path) -> None:
    r = _compose("--cluster", "deploy/cluster-3.conf")
    assert r.returncode == 0, r.stderr
    assert "/etc/raftd/cluster.conf:ro" in r.stdout
    r = _compose("--cluster", "config.conf")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "service name" in r.stderr and "Traceback" not in r.stderr


def test_the_host_is_told_every_published_endpoint(tmp_path: Path) -> None:
    """The map's host names resolve only inside the compose network (issue 17: `raftctl --cluster
    deploy/cluster-5.yaml status` failed from the host); all of them, so that raftctl fails over."""
    out = tmp_path / "c.yml"
    r = _compose("--cluster", "deploy/cluster-5.yaml", "-o", str(out))
    ports = [n.port for n in load_cluster(ROOT / "deploy/cluster-5.yaml").nodes]
    line = "export RAFTCTL_ENDPOINTS=" + ",".join(f"127.0.0.1:{p}" for p in ports)
    assert r.returncode == 0 and r.stdout == f"Wrote {out}. From the host: {line}\n"
    assert f"# Ports are published on 127.0.0.1. From the host: {line}\n" in out.read_text()
    r = _compose("--cluster", "deploy/cluster-5.yaml")
    assert yaml.safe_load(r.stdout)["services"] and r.stderr == f"From the host: {line}\n"
