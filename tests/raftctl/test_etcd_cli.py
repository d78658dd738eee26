"""raftctl's etcd-style commands (get, put, del, watch, lease, txn, cas) against the shared real cluster,
each test on keys of its own; and the client's retry rules and the txn reader, without a cluster."""

from __future__ import annotations

import base64
import json
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from raftctl.client import OutcomeUnknown, Unavailable
from raftctl.etcd import EtcdClient, prefix_end
from raftctl.etcd_render import printable
from raftctl.etcd_txn import TxnSyntaxError, parse, unquote
from raftctl.exits import EXIT_ERROR, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE
from raftd.pb import etcd_rpc_pb2 as pb
from raftd.pb import etcd_rpc_pb2_grpc as rpc
from tests.daemon.cluster import Cluster, cluster_of

from .conftest import RUN_LIMIT_S, ctl_env, run_ctl


@pytest.fixture
def ctl(tmp_path: Path, endpoints: str) -> Ctl:
    return Ctl(tmp_path, endpoints)


class Ctl:
    """raftctl against the cluster, on a prefix of keys no other test uses."""

    def __init__(self, cwd: Path, endpoints: str) -> None:
        self.cwd = cwd
        self.endpoints = endpoints
        self.p = f"etcd-{secrets.token_hex(4)}/"

    def args(self, *args: str) -> list[str]:
        return ["--endpoints", self.endpoints, *args]

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_ctl(*self.args(*args), cwd=self.cwd, input=input)

    def ok(self, *args: str, input: str | None = None) -> str:
        r = self.run(*args, input=input)
        assert (r.returncode, r.stderr) == (0, ""), r
        return r.stdout

    def json(self, *args: str, input: str | None = None) -> dict[str, Any]:
        doc = json.loads(self.ok(*args, "-o", "json", input=input))
        assert isinstance(doc, dict)
        return doc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "raftctl", *self.args(*args)],
            cwd=self.cwd,
            env=ctl_env(self.cwd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def one_line_error(stderr: str) -> str:
    assert stderr.startswith("raftctl: error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    return stderr


def revision(ctl: Ctl) -> int:
    return int(ctl.json("get", "any", "--count-only")["header"]["revision"])


# -- get, put, del ---------------------------------------------------------------------------------------


def test_put_get_ranges_and_del(ctl: Ctl) -> None:
    p = ctl.p
    assert ctl.ok("put", f"{p}a", "1") == "OK\n"
    first = revision(ctl)
    for k, v in (("b", "2"), ("c", "3"), ("a", "changed")):
        ctl.ok("put", f"{p}{k}", v)
    ctl.ok("put", f"{p[:-1]}0", "after the prefix")  # "/" + 1 is "0": outside every prefix query
    assert ctl.ok("get", f"{p}a") == f"{p}a\nchanged\n"
    assert ctl.ok("get", p, "--prefix") == f"{p}a\nchanged\n{p}b\n2\n{p}c\n3\n"
    assert ctl.ok("get", f"{p}a", f"{p}c") == f"{p}a\nchanged\n{p}b\n2\n"
    assert ctl.ok("get", f"{p}b", "--range", f"{p}d") == f"{p}b\n2\n{p}c\n3\n"
    assert ctl.ok("get", p, "--prefix", "--keys-only") == f"{p}a\n{p}b\n{p}c\n"
    assert ctl.ok("get", p, "--prefix", "--print-value-only") == "changed\n2\n3\n"
    assert ctl.ok("get", p, "--prefix", "--count-only") == "3\n"
    assert ctl.ok("get", f"{p}a", "--rev", str(first)) == f"{p}a\n1\n"
    assert ctl.ok("get", p, "--prefix", "--sort-by", "MODIFY", "--order", "DESCEND", "--keys-only") == (
        f"{p}a\n{p}c\n{p}b\n"
    )
    assert ctl.ok("get", f"{p}absent") == "", "absent: nothing, exit 0, as etcdctl"
    assert ctl.ok("get", f"{p}a", "--serializable").startswith(f"{p}a\n")

    page = ctl.json("get", p, "--prefix", "--limit", "2")
    assert (page["count"], page["more"]) == (3, True)
    assert set(page["header"]) == {"cluster_id", "member_id", "revision", "raft_term"}
    kvs = page["kvs"]
    assert isinstance(kvs, list) and len(kvs) == 2
    assert kvs[0] == {
        "key": b64(f"{p}a"),
        "create_revision": first,
        "mod_revision": kvs[0]["mod_revision"],
        "version": 2,
        "value": b64("changed"),
        "lease": 0,
    }
    assert kvs[0]["mod_revision"] > first

    prev = ctl.json("put", f"{p}b", "two", "--prev-kv")
    assert prev["prev_kv"]["value"] == b64("2")
    assert ctl.ok("put", f"{p}b", "2", "--prev-kv") == f"OK\n{p}b\ntwo\n"
    assert ctl.ok("put", f"{p}b", "-", input="from\nstdin\n") == "OK\n"
    assert ctl.json("get", f"{p}b")["kvs"][0]["value"] == b64("from\nstdin\n")

    assert ctl.ok("del", f"{p}c", "--prev-kv") == f"1\n{p}c\n3\n"
    assert ctl.json("del", p, "--prefix")["deleted"] == 2
    assert ctl.ok("del", p, "--prefix") == "0\n"
    assert ctl.ok("get", p, "--prefix") == ""
    assert ctl.ok("get", f"{p[:-1]}0") == f"{p[:-1]}0\nafter the prefix\n"


def test_bytes_that_are_not_utf8_print_escaped(ctl: Ctl, cluster: Cluster) -> None:
    """Keys and values are bytes: text shows non-UTF-8 ones escaped on one line, JSON has them exactly."""
    key = ctl.p.encode() + b"bin\xff\\x"
    value = b"\x00\x01\nz\xfe"
    with grpc.insecure_channel(cluster.address(0)) as channel:
        rpc.KVStub(channel).Put(pb.PutRequest(key=key, value=value), timeout=RUN_LIMIT_S)
    ctl.ok("put", f"{ctl.p}text", "línea 1\nline 2")
    out = ctl.ok("get", ctl.p, "--prefix")
    assert out == f"{ctl.p}bin\\xff\\\\x\n\x00\x01\\nz\\xfe\n{ctl.p}text\nlínea 1\nline 2\n"
    kv = ctl.json("get", ctl.p, "--prefix")["kvs"][0]
    assert (base64.b64decode(kv["key"]), base64.b64decode(kv["value"])) == (key, value)
    # One keyspace: the original's getval reads it too, the bytes that are not UTF-8 escaped.
    with grpc.insecure_channel(cluster.address(1)) as channel:
        rpc.KVStub(channel).Put(
            pb.PutRequest(key=f"{ctl.p}v1".encode(), value=b"ab\xff"), timeout=RUN_LIMIT_S
        )
    assert ctl.ok("getval", f"{ctl.p}v1") == "ab\\xff\n"


# -- watch -----------------------------------------------------------------------------------------------


def test_watch_streams_json_lines_in_revision_order(ctl: Ctl) -> None:
    p = ctl.p
    start = revision(ctl) + 1  # from here the watch misses nothing, however late it starts
    watcher = ctl.popen("watch", p, "--prefix", "--rev", str(start), "--max-events", "3", "-o", "json")
    ctl.ok("put", f"{p}a", "1")
    ctl.ok("put", f"{p[:-1]}0", "not in the prefix")
    ctl.ok("put", f"{p}b", "2")
    ctl.ok("del", f"{p}a")
    out, err = watcher.communicate(timeout=RUN_LIMIT_S)
    assert (watcher.returncode, err) == (0, "")
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["key"], e["value"]) for e in events] == [
        ("PUT", b64(f"{p}a"), b64("1")),
        ("PUT", b64(f"{p}b"), b64("2")),
        ("DELETE", b64(f"{p}a"), ""),
    ]
    revisions = [e["mod_revision"] for e in events]
    assert revisions == sorted(revisions) and revisions[0] >= start
    assert set(events[0]) == {"type", "key", "value", "create_revision", "mod_revision", "version", "lease"}

    # the same history again, in etcdctl's text, with the previous key-values
    replay = ctl.ok("watch", p, "--prefix", "--rev", str(start), "--max-events", "3", "--prev-kv")
    assert replay == f"PUT\n{p}a\n1\nPUT\n{p}b\n2\nDELETE\n{p}a\n1\n{p}a\n\n"


def test_watch_from_now(ctl: Ctl) -> None:
    """Without --rev the watch starts when it is created: keep writing until it has seen one event."""
    watcher = ctl.popen("watch", f"{ctl.p}k", "--max-events", "1")
    deadline = time.monotonic() + RUN_LIMIT_S
    while watcher.poll() is None and time.monotonic() < deadline:
        ctl.ok("put", f"{ctl.p}k", "v")
        time.sleep(0.2)
    out, err = watcher.communicate(timeout=RUN_LIMIT_S)
    assert (watcher.returncode, out, err) == (0, f"PUT\n{ctl.p}k\nv\n", "")


def test_watch_from_a_compacted_revision_fails_in_one_line(ctl: Ctl, cluster: Cluster) -> None:
    ctl.ok("put", f"{ctl.p}k", "1")
    now = revision(ctl)
    with grpc.insecure_channel(cluster.address(0)) as channel:
        rpc.KVStub(channel).Compact(pb.CompactionRequest(revision=now), timeout=RUN_LIMIT_S)
    r = ctl.run("watch", f"{ctl.p}k", "--rev", "1")
    assert r.returncode == EXIT_ERROR and r.stdout == ""
    assert f"the earliest a watch can start from is {now}" in one_line_error(r.stderr)


def test_watch_resumes_at_the_next_endpoint_when_its_node_dies(tmp_path: Path) -> None:
    """The stream breaks with its node: the watch goes on at the next endpoint from the revision after
    the last event printed, with nothing missed and nothing twice."""
    with cluster_of(tmp_path / "cluster") as c:
        ctl = Ctl(tmp_path, ",".join(c.endpoints))
        others = Ctl(tmp_path, ",".join(c.endpoints[1:]))
        watcher = ctl.popen("watch", "k", "--prefix", "--max-events", "6", "-o", "json", "--rev", "1")
        assert watcher.stdout is not None
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in watcher.stdout or ():
                lines.put(line)

        reader = threading.Thread(target=read)
        reader.start()
        for i in range(3):
            others.ok("put", f"k{i}", "v", "--timeout", "15")
        seen = [lines.get(timeout=RUN_LIMIT_S) for _ in range(3)]
        c.kill(0)  # the watch's node: the first endpoint
        for i in range(3, 6):
            others.ok("put", f"k{i}", "v", "--timeout", "15")
        assert watcher.wait(timeout=RUN_LIMIT_S) == 0, watcher.stderr.read() if watcher.stderr else ""
        reader.join(timeout=RUN_LIMIT_S)
        seen += [lines.get_nowait() for _ in range(lines.qsize())]
    events = [json.loads(line) for line in seen]
    assert [base64.b64decode(e["key"]) for e in events] == [f"k{i}".encode() for i in range(6)]
    revisions = [e["mod_revision"] for e in events]
    assert revisions == sorted(set(revisions))


# -- leases ----------------------------------------------------------------------------------------------


def test_lease_grant_attach_timetolive_list_revoke(ctl: Ctl) -> None:
    granted = ctl.ok("lease", "grant", "60").split()
    assert granted[0] == "lease" and granted[2:] == ["granted", "with", "TTL(60s)"], granted
    lease = granted[1]
    assert len(lease) == 16
    ctl.ok("put", f"{ctl.p}k", "v", "--lease", lease)
    assert ctl.json("get", f"{ctl.p}k")["kvs"][0]["lease"] == int(lease, 16)
    line = ctl.ok("lease", "timetolive", lease, "--keys")
    assert line.startswith(f"lease {lease} granted with TTL(60s), remaining(")
    assert line.endswith(f", attached keys([{ctl.p}k])\n"), line
    ttl = ctl.json("lease", "timetolive", lease, "--keys")
    assert (ttl["ID"], ttl["grantedTTL"], ttl["keys"]) == (int(lease, 16), 60, [b64(f"{ctl.p}k")])
    assert lease in ctl.ok("lease", "list").splitlines()[1:]
    assert {"ID": int(lease, 16)} in ctl.json("lease", "list")["leases"]
    assert ctl.ok("lease", "keep-alive", lease, "--once") == f"lease {lease} keepalived with TTL(60)\n"

    assert ctl.ok("lease", "revoke", lease) == f"lease {lease} revoked\n"
    assert ctl.ok("get", f"{ctl.p}k") == "", "its key went with it"
    assert ctl.ok("lease", "timetolive", lease) == f"lease {lease} already expired\n"
    r = ctl.run("lease", "revoke", lease)
    assert r.returncode == EXIT_NOT_FOUND and "requested lease not found" in one_line_error(r.stderr)
    r = ctl.run("lease", "keep-alive", lease)
    assert r.returncode == EXIT_NOT_FOUND and "expired or revoked" in one_line_error(r.stderr)
    r = ctl.run("put", f"{ctl.p}k", "v", "--lease", lease)
    assert r.returncode == EXIT_NOT_FOUND and "requested lease not found" in one_line_error(r.stderr)
    doc = ctl.json("lease", "grant", "60")
    assert doc["TTL"] == 60 and isinstance(doc["ID"], int) and "revision" in doc["header"]
    ctl.ok("lease", "revoke", f"{doc['ID']:x}")


# -- txn and cas -----------------------------------------------------------------------------------------


def test_txn_from_stdin(ctl: Ctl) -> None:
    k = f"{ctl.p}k"
    ctl.ok("put", k, "v1")
    script = f'value("{k}") = "v1"\nversion("{k}") > "0"\n\nput {k} v2\nget {k}\n\nget {k}\n'
    assert ctl.ok("txn", input=script) == f"SUCCESS\n\nOK\n\n{k}\nv2\n"
    assert ctl.ok("txn", input=script) == f"FAILURE\n\n{k}\nv2\n", "v1 no longer: the failure branch"
    doc = ctl.json("txn", input=f'mod("{k}") > "0"\n\ndel {k} --prev-kv\n')
    assert doc["succeeded"] is True
    deleted = doc["responses"][0]["response_delete_range"]
    assert deleted["deleted"] == 1 and deleted["prev_kvs"][0]["value"] == b64("v2")
    r = ctl.run("txn", input='value("k") == "v"\n')
    assert r.returncode == EXIT_USAGE and "line 1: malformed comparison" in one_line_error(r.stderr)


def test_cas(ctl: Ctl) -> None:
    k = f"{ctl.p}k"
    assert ctl.ok("cas", "--absent", k, "first") == "OK\n"
    assert ctl.ok("cas", k, "first", "second") == "OK\n"
    r = ctl.run("cas", k, "first", "third")
    assert (r.returncode, r.stdout) == (EXIT_NOT_FOUND, "")
    assert f"{k} did not hold 'first' (it holds 'second')" in one_line_error(r.stderr)
    r = ctl.run("cas", "--absent", k, "again")
    assert r.returncode == EXIT_NOT_FOUND and "exists (it holds 'second')" in one_line_error(r.stderr)
    r = ctl.run("cas", f"{ctl.p}none", "x", "y", "-o", "json")
    assert r.returncode == EXIT_NOT_FOUND and "it does not exist" in one_line_error(r.stderr)
    doc = json.loads(r.stdout)
    assert (doc["succeeded"], doc["kv"]) == (False, None)
    assert ctl.ok("get", k, "--print-value-only") == "second\n"


# -- bad input -------------------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_an_exit_code(ctl: Ctl, tmp_path: Path) -> None:
    for args in (
        ["put", "k", "v", "--lease", "not-hex"],
        ["lease", "revoke", "xyz"],
        ["get", "a", "b", "--prefix"],
        ["del", "a", "--prefix", "--from-key"],
        ["put", "k"],
        ["cas", "k", "v"],
    ):
        r = ctl.run(*args)
        assert (r.returncode, r.stdout) == (EXIT_USAGE, ""), (args, r)
        one_line_error(r.stderr)
    r = ctl.run("put", "", "v")
    assert r.returncode == EXIT_INVALID and "key is not provided" in one_line_error(r.stderr)
    for args in (["get", "k"], ["put", "k", "v"], ["watch", "k"], ["lease", "list"]):
        r = run_ctl("--endpoints", "127.0.0.1:1", *args, cwd=tmp_path)
        assert r.returncode == EXIT_UNAVAILABLE and "connection refused" in one_line_error(r.stderr), r


# -- without a cluster -----------------------------------------------------------------------------------


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, outcome: str | None = None) -> None:
        self._code, self._details = code, details
        self._trailers = (("raftd-outcome", outcome),) if outcome else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers


def _calls(*failures: _Failed) -> tuple[list[str], Callable[[grpc.Channel, float], str]]:
    """An rpc that fails with each of failures in turn, then answers "done"; and where each attempt went."""
    seen: list[str] = []
    pending = list(failures)

    def call(channel: grpc.Channel, timeout: float) -> str:
        seen.append(str(len(seen)))
        if pending:
            raise pending.pop(0)
        return "done"

    return seen, call


def test_a_write_moves_on_only_when_it_surely_did_not_apply() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    with EtcdClient(["127.0.0.1:1", "127.0.0.1:2"], 2.0) as c:
        seen, call = _calls(_Failed(unavailable, "etcdserver: no leader", "not-applied"))
        assert c._call("put", call, write=True) == "done" and len(seen) == 2
        for failure in (
            _Failed(unavailable, "etcdserver: leader changed", "unknown"),
            _Failed(unavailable, "etcdserver: request timed out", "unknown"),
            _Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
            _Failed(unavailable, "Socket closed"),
        ):
            _, call = _calls(failure)
            with pytest.raises(OutcomeUnknown, match="may have applied"):
                c._call("put", call, write=True)
            seen, call = _calls(failure)
            assert c._call("get", call, write=False) == "done" and len(seen) == 2
        _, call = _calls(
            *[_Failed(unavailable, "failed to connect to all addresses; connection refused")] * 2
        )
        with pytest.raises(Unavailable, match="no node answers"):
            c._call("put", call, write=True)


def test_the_txn_reader_and_the_byte_helpers() -> None:
    t = parse(
        'value("k") = "a\\"b"\nmod("k") < "5"\nlease("k") != "1f"\n\nput k "two words"\n\nget k --prefix\n'
    )
    assert [(c.target, c.result) for c in t.compare] == [
        (pb.Compare.VALUE, pb.Compare.EQUAL),
        (pb.Compare.MOD, pb.Compare.LESS),
        (pb.Compare.LEASE, pb.Compare.NOT_EQUAL),
    ]
    assert (t.compare[0].value, t.compare[1].mod_revision, t.compare[2].lease) == (b'a"b', 5, 31)
    assert t.success[0].request_put.value == b"two words"
    assert (t.failure[0].request_range.key, t.failure[0].request_range.range_end) == (b"k", b"l")
    assert parse("\nput k v\n") == pb.TxnRequest(
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"k", value=b"v"))]
    )
    for bad in ('value("k") ~ "v"', 'size("k") = "1"', "\nfetch k", "\n\n\nput k v", "\nput k v --lease=zz"):
        with pytest.raises(TxnSyntaxError, match="line"):
            parse(bad)
    raw = b"a\\b\xff\n\x00"
    assert printable(raw) == "a\\\\b\\xff\\n\x00" and unquote(printable(raw)) == raw
    assert printable("ünï\ncode\\".encode()) == "ünï\ncode\\"
    assert (prefix_end(b"a/"), prefix_end(b"a\xff"), prefix_end(b"\xff")) == (b"a0", b"b", b"\x00")
