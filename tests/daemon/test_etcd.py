"""The etcd v3 API on a real 3-node cluster, driven by clients nobody here wrote: etcdctl 3.4 (Debian's
etcd-client, which .ci/run installs) and the Python etcd3 package (a test extra). Each skips with the
reason when its client is absent, and fails under CI=true instead."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from raftd.pb import etcd_kv_pb2, etcd_rpc_pb2, etcd_rpc_pb2_grpc, kv_pb2, raft_pb2, raft_pb2_grpc

from .cluster import (
    ETCDCTL_INSTALL,
    HOST,
    Cluster,
    etcdctl_env,
    free_ports,
    need,
    release_env,
    wait_until,
)

ETCDCTL_TIMEOUT_S = 30.0


def _need_etcdctl() -> None:
    need("etcdctl", shutil.which("etcdctl") is not None, ETCDCTL_INSTALL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("etcd")) as c:
        c.start_all()
        c.wait_leader()
        yield c


class Etcdctl:
    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints

    def run(
        self, *args: str, stdin: str | None = None, at: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        """etcdctl ARGS against every endpoint (or the one at index `at`); etcdctl's own environment rules:
        ETCDCTL_ENDPOINTS must not be set beside --endpoints."""
        endpoints = self.endpoints if at is None else [self.endpoints[at]]
        return subprocess.run(
            ["etcdctl", f"--endpoints={','.join(endpoints)}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=etcdctl_env(),
            timeout=ETCDCTL_TIMEOUT_S,
        )

    def ok(self, *args: str, stdin: str | None = None, at: int | None = None) -> str:
        done = self.run(*args, stdin=stdin, at=at)
        assert done.returncode == 0, (
            f"etcdctl {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        )
        return done.stdout

    def json(self, *args: str, at: int | None = None) -> dict[str, object]:
        return json.loads(self.ok(*args, "-w", "json", at=at))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def etcdctl(cluster: Cluster) -> Etcdctl:
    _need_etcdctl()
    return Etcdctl(cluster.endpoints)


def test_put_get_and_delete_through_any_node(cluster: Cluster, etcdctl: Etcdctl) -> None:
    leader = cluster.wait_leader()
    follower = cluster.followers(leader)[0]
    assert etcdctl.ok("put", "greeting", "hello", at=follower).strip() == "OK"  # forwarded to the leader
    assert etcdctl.ok("get", "greeting", at=leader).splitlines() == ["greeting", "hello"]
    got = etcdctl.json("get", "greeting", at=follower)
    header = got["header"]
    assert isinstance(header, dict) and header["member_id"] == follower + 1 and header["raft_term"] >= 1
    (kv,) = got["kvs"]  # type: ignore[misc]
    assert kv["version"] == 1 and kv["create_revision"] == kv["mod_revision"] == header["revision"]
    # The answer's header names the member asked, as etcd's does (not the leader that applied it).
    assert etcdctl.json("put", "other", "x", at=follower)["header"]["member_id"] == follower + 1  # type: ignore[index]
    assert etcdctl.ok("del", "greeting").strip() == "1"
    assert etcdctl.ok("get", "greeting") == ""
    assert etcdctl.ok("del", "greeting").strip() == "0"


def test_raftd_v1_and_the_etcd_api_share_one_keyspace(cluster: Cluster, etcdctl: Etcdctl) -> None:
    """A new cluster's keys are in one keyspace from its first leader on: each API reads and deletes the
    other's writes, and raftd.v1 writes are revisions etcd's watchers and ranges see."""
    cluster.put_retrying(0, "one/v1", "from raftd.v1")
    wait_until("the keyspaces to be one", lambda: etcdctl.ok("get", "one/v1") != "")
    assert etcdctl.ok("get", "one/v1").splitlines() == ["one/v1", "from raftd.v1"]
    etcdctl.ok("put", "one/etcd", "from etcd")
    assert cluster.get(1, "one/etcd").value == b"from etcd"
    # A value raftd.v1's original API cannot hold as text comes back escaped, not as an error.
    kv = etcd_rpc_pb2_grpc.KVStub(cluster.channel(2))
    kv.Put(etcd_rpc_pb2.PutRequest(key=b"one/bin", value=b"ab\xff"), timeout=10)
    seed = raft_pb2_grpc.RaftServiceStub(cluster.channel(0))
    got = seed.GetVal(raft_pb2.GetValRequest(key="one/bin"), timeout=10)
    assert got.verdict and got.value == "ab\\xff"
    before = int(etcdctl.json("get", "one/v1")["header"]["revision"])  # type: ignore[index]
    cluster.put_retrying(0, "one/v1", "again")
    (changed,) = etcdctl.json("get", "one/v1")["kvs"]  # type: ignore[misc]
    assert changed["version"] == 2 and changed["mod_revision"] == before + 1
    assert etcdctl.ok("del", "one/", "--prefix").strip() == "3"
    assert not cluster.get(0, "one/v1").found


def test_prefix_range_limit_keys_only_and_past_revisions(etcdctl: Etcdctl) -> None:
    first = etcdctl.json("put", "app/a", "1")["header"]["revision"]  # type: ignore[index]
    etcdctl.ok("put", "app/b", "2")
    etcdctl.ok("put", "app/c", "3")
    etcdctl.ok("put", "app/a", "changed")
    etcdctl.ok("put", "apq", "not in the prefix")
    assert etcdctl.ok("get", "app/", "--prefix", "--keys-only").split() == ["app/a", "app/b", "app/c"]
    assert etcdctl.ok("get", "app/a", "app/c").split() == ["app/a", "changed", "app/b", "2"]
    page = etcdctl.json("get", "app/", "--prefix", "--limit", "2")
    assert len(page["kvs"]) == 2 and page["more"] is True and page["count"] == 3  # type: ignore[arg-type]
    assert etcdctl.ok("get", "app/a", f"--rev={first}").split() == ["app/a", "1"]
    newest = etcdctl.ok("get", "app/", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "--keys-only")
    assert newest.split()[0] == "app/a"


def test_txn_compare_and_swap(etcdctl: Etcdctl) -> None:
    etcdctl.ok("put", "lock", "free")
    swap = 'value("lock") = "free"\n\nput lock mine\nget lock\n\n\n'
    assert etcdctl.ok("txn", stdin=swap).split() == ["SUCCESS", "OK", "lock", "mine"]
    assert etcdctl.ok("txn", stdin=swap).split() == ["FAILURE"]
    assert etcdctl.ok("get", "lock").split() == ["lock", "mine"]
    # etcd's lock idiom: create only if absent.
    create = 'create("fresh") = "0"\n\nput fresh yes\n\n\n'
    assert etcdctl.ok("txn", stdin=create).splitlines()[0] == "SUCCESS"
    assert etcdctl.ok("txn", stdin=create).splitlines()[0] == "FAILURE"


def test_compaction_and_etcds_errors(etcdctl: Etcdctl) -> None:
    old = etcdctl.json("put", "hist", "1")["header"]["revision"]  # type: ignore[index]
    now = etcdctl.json("put", "hist", "2")["header"]["revision"]  # type: ignore[index]
    assert etcdctl.ok("compaction", str(now)).strip() == f"compacted revision {now}"
    gone = etcdctl.run("get", "hist", f"--rev={old}")
    assert gone.returncode != 0 and "etcdserver: mvcc: required revision has been compacted" in gone.stderr
    future = etcdctl.run("get", "hist", f"--rev={now + 1000}")
    assert "etcdserver: mvcc: required revision is a future revision" in future.stderr
    empty = etcdctl.run("put", "", "x")
    assert empty.returncode != 0 and "etcdserver: key is not provided" in empty.stderr
    lease = etcdctl.run("put", "leased", "x", "--lease=1234")
    assert lease.returncode != 0 and "etcdserver: requested lease not found" in lease.stderr


def test_member_list_and_endpoint_status_and_health(cluster: Cluster, etcdctl: Etcdctl) -> None:
    leader = cluster.wait_leader()
    members = etcdctl.ok("member", "list").splitlines()
    assert [line.split(", ")[0] for line in members] == ["1", "2", "3"]
    assert all(line.endswith(", false") for line in members)  # no learners
    status = etcdctl.json("endpoint", "status")
    rows = status if isinstance(status, list) else [status]
    ids = {row["Status"]["header"]["member_id"] for row in rows}
    assert ids == {1, 2, 3}
    assert {row["Status"]["leader"] for row in rows} == {leader + 1}
    health = etcdctl.run("endpoint", "health")
    assert health.returncode == 0, health.stderr
    assert (health.stdout + health.stderr).count("is healthy") == 3
    assert etcdctl.ok("alarm", "list") == ""  # no alarm raised
    assert etcdctl.ok("defrag").count("Finished defragmenting etcd member") == 3


def test_delete_a_prefix_with_the_previous_values(etcdctl: Etcdctl) -> None:
    for k in ("tmp/1", "tmp/2", "tmq"):
        etcdctl.ok("put", k, k.upper())
    assert etcdctl.ok("del", "tmp/", "--prefix", "--prev-kv").split() == [
        "2",
        "tmp/1",
        "TMP/1",
        "tmp/2",
        "TMP/2",
    ]
    assert etcdctl.ok("get", "tm", "--prefix").split() == ["tmq", "TMQ"]


def test_the_keyspace_survives_restarts(cluster: Cluster, etcdctl: Etcdctl) -> None:
    etcdctl.ok("put", "durable", "yes")
    for i in range(cluster.n):
        cluster.restart(i)
        cluster.wait_leader()
    wait_until("the key after restarts", lambda: etcdctl.ok("get", "durable").split() == ["durable", "yes"])


def test_the_python_etcd3_client(cluster: Cluster, tmp_path: Path) -> None:
    """In a process of its own: its generated code registers etcd's protos under names ours use too."""
    need("the etcd3 package", importlib.util.find_spec("etcd3") is not None, "pip install -e '.[test]'")
    leader = cluster.wait_leader()
    host, port = cluster.address(cluster.followers(leader)[0]).rsplit(":", 1)
    script = textwrap.dedent(
        f"""
        import etcd3
        c = etcd3.client(host={host!r}, port={port})
        c.put("py/a", "1")
        c.put("py/b", "2")
        assert c.get("py/a")[0] == b"1"
        assert sorted(v for v, _ in c.get_prefix("py/")) == [b"1", b"2"]
        ok, _ = c.transaction(
            compare=[c.transactions.value("py/a") == "1"],
            success=[c.transactions.put("py/a", "swapped")],
            failure=[],
        )
        assert ok and c.get("py/a")[0] == b"swapped"
        assert c.delete("py/b") and c.get("py/b")[0] is None
        events, cancel = c.watch_prefix("py/w/")
        c.put("py/w/1", "one")
        c.delete("py/w/1")
        seen = []
        for event in events:
            seen.append((type(event).__name__, event.key))
            if len(seen) == 2:
                cancel()
        assert seen == [("PutEvent", b"py/w/1"), ("DeleteEvent", b"py/w/1")], seen
        lease = c.lease(60)
        c.put("py/leased", "v", lease=lease)
        assert lease.remaining_ttl > 0 and lease.keys == [b"py/leased"]
        lease.refresh()
        lease.revoke()
        assert c.get("py/leased")[0] is None
        lock = c.lock("py-lock", ttl=10)
        assert lock.acquire(timeout=5)
        assert not c.lock("py-lock", ttl=10).acquire(timeout=1)  # held: a second one waits, then gives up
        lock.release()
        again = c.lock("py-lock", ttl=10)
        assert again.acquire(timeout=5)
        again.release()
        status = c.status()
        assert status.leader.id == {leader + 1} and status.version.startswith("3.")
        print("etcd3 ok")
        """
    )
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and "etcd3 ok" in done.stdout, done.stderr


def test_a_follower_behind_a_snapshot_gets_the_keyspace_with_it(tmp_path: Path) -> None:
    """The keyspace rides in snapshots: a follower that missed the entries (compacted away meanwhile)
    is sent the leader's image, and then serves the keys, their revisions and the compaction point."""
    _need_etcdctl()
    with Cluster(tmp_path) as c:
        c.args += ["--snapshot-entries", "10"]
        leader = c.start_all()
        assert leader is not None
        behind = c.followers(leader)[0]
        ctl = Etcdctl(c.endpoints)
        c.kill(behind)
        for i in range(40):
            ctl.ok("put", f"snap/{i:02d}", str(i), at=leader)
        ctl.ok("compaction", "5", at=leader)
        c.start(behind)

        def caught_up() -> bool:
            got = ctl.json("get", "snap/", "--prefix", "--consistency=s", at=behind)
            return got.get("count") == 40 and got["header"]["revision"] == 40  # type: ignore[index]

        wait_until("the follower to serve the keyspace", caught_up)
        assert ctl.ok("get", "snap/07", "--consistency=s", at=behind).split() == ["snap/07", "7"]
        gone = ctl.run("get", "snap/00", "--rev=3", "--consistency=s", at=behind)
        assert "required revision has been compacted" in gone.stderr
        assert "Installed a snapshot at index" in c.log(behind)  # not the entries one by one


BEFORE_ETCD = "eabb607"  # the last commit before the etcd API: the previous release


def test_a_rolling_upgrade_refuses_keyspace_writes_until_every_node_runs_this_release(tmp_path: Path) -> None:
    """Data directories of the previous release start as they are; while one member still runs it,
    etcd writes are refused (it could not apply them) and raftd.v1 writes go on; once it is upgraded too,
    etcd writes work."""
    _need_etcdctl()
    old_env = release_env(BEFORE_ETCD, tmp_path / "previous-release")
    with Cluster(tmp_path / "c", env=old_env) as c:
        c.start_all()
        c.put_retrying(0, "k", "before")
        for i in range(3):
            assert c.terminate(i) == 0
        c.start(2)  # still the previous release
        c.env = {}
        c.start(0)
        c.start(1)
        if c.wait_leader() == 2:
            c.admin(2).TransferLeader(kv_pb2.TransferLeaderRequest(target_id=0), timeout=5)
        assert c.wait_leader(exclude=2) in (0, 1)
        ctl = Etcdctl([c.address(0), c.address(1)])
        refused = ctl.run("put", "etcd-key", "v")
        assert refused.returncode != 0 and "etcdserver: not capable" in refused.stderr, refused.stderr
        c.put_retrying(0, "k", "during")
        c.wait_value(2, "k", "during", local=True)

        assert c.terminate(2) == 0
        c.start(2)
        wait_until(
            "etcd writes once every node is upgraded", lambda: ctl.run("put", "etcd-key", "v").returncode == 0
        )
        assert ctl.ok("get", "etcd-key").split() == ["etcd-key", "v"]
        assert c.get(2, "k").value == b"during"


BEFORE_MERGE = "16f09e4"  # the last commit whose raftd.v1 keys lived apart from the etcd keyspace


def test_a_rolling_upgrade_merges_the_two_keyspaces_once_every_node_runs_this_release(tmp_path: Path) -> None:
    """The previous release kept raftd.v1's keys apart from the etcd keyspace. Its data directories
    (snapshots included) start as they are; the keys stay apart while one member still runs it, and move
    into the one keyspace once the last is upgraded: a key both APIs wrote keeps raftd.v1's value, as a
    new version of the etcd key."""
    _need_etcdctl()
    old_env = release_env(BEFORE_MERGE, tmp_path / "previous-release")
    with Cluster(tmp_path / "c", env=old_env) as c:
        c.args += ["--snapshot-entries", "5"]  # the old nodes' directories hold a snapshot of both
        c.start_all()
        ctl = Etcdctl(c.endpoints)
        ctl.ok("put", "shared", "from etcd")
        ctl.ok("put", "etcd-only", "e")
        c.put_retrying(0, "shared", "from raftd.v1")
        for i in range(8):
            c.put_retrying(0, f"v1/{i}", str(i))
        for i in range(3):
            assert c.terminate(i) == 0
        c.start(2)  # still the previous release
        c.env = {}
        c.start(0)
        c.start(1)
        c.wait_leader()
        c.put_retrying(0, "during", "x")
        assert ctl.ok("get", "shared").split("\n")[1] == "from etcd", "apart while node 2 is old"
        assert ctl.ok("get", "during") == ""

        assert c.terminate(2) == 0
        c.start(2)
        wait_until("the keyspaces to merge", lambda: ctl.ok("get", "during") != "")
        got = ctl.json("get", "shared")
        (kv,) = got["kvs"]  # type: ignore[misc]
        assert kv["version"] == 2 and base64.b64decode(kv["value"]) == b"from raftd.v1"
        assert ctl.ok("get", "v1/", "--prefix", "--keys-only").split() == [f"v1/{i}" for i in range(8)]
        assert ctl.ok("get", "etcd-only").split() == ["etcd-only", "e"]
        # One keyspace from here on, on every node: each API sees the other's writes. (A put may meet
        # node 2 before it knows the leader: "no leader", never applied; the same put again is harmless.)
        wait_until("an etcd put", lambda: ctl.run("put", "v1/0", "changed by etcd").returncode == 0)
        for i in range(3):
            c.wait_value(i, "v1/0", "changed by etcd", local=True)
        c.put_retrying(0, "after", "y")
        wait_until(
            "node 2 to serve it",
            lambda: ctl.ok("get", "after", "--consistency=s", at=2).split() == ["after", "y"],
        )


def test_the_history_is_compacted_to_the_retention(tmp_path: Path) -> None:
    """--auto-compaction-retention bounds the history every node holds: the leader compacts through the
    log once it grows a tenth past the retention, so no client can make it grow without bound."""
    _need_etcdctl()
    with Cluster(tmp_path) as c:
        c.args += ["--auto-compaction-retention", "10"]
        leader = c.start_all()
        assert leader is not None
        ctl = Etcdctl(c.endpoints)
        for i in range(30):
            ctl.ok("put", "counter", str(i), at=leader)
        assert ctl.json("get", "counter")["header"]["revision"] == 30  # type: ignore[index]
        old = ctl.run("get", "counter", "--rev=5")
        assert "required revision has been compacted" in old.stderr, old.stderr
        # At most the retention and its tenth are kept; the newest ten always are, on every node.
        for i in range(c.n):
            wait_until(
                f"node {i} to compact past revision 18",
                lambda i=i: (
                    "compacted" in ctl.run("get", "counter", "--rev=18", "--consistency=s", at=i).stderr
                ),
            )
            kept = ctl.ok("get", "counter", "--rev=20", "--consistency=s", at=i)
            assert kept.split() == ["counter", "19"]


def test_periodic_compaction_keeps_the_history_of_the_last_period(tmp_path: Path) -> None:
    """etcd's --auto-compaction-mode periodic: a revision goes once it is the retention old (2 s here),
    whatever the count; the newer ones stay readable."""
    _need_etcdctl()
    with Cluster(tmp_path) as c:
        c.args += ["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s"]
        leader = c.start_all()
        assert leader is not None
        ctl = Etcdctl(c.endpoints)
        for i in range(3):
            ctl.ok("put", "aged", str(i), at=leader)
        first = int(ctl.json("get", "aged")["header"]["revision"])  # type: ignore[index]
        assert ctl.ok("get", "aged", f"--rev={first - 1}").split() == ["aged", "1"], "not 2 s old yet"
        time.sleep(2.5)
        ctl.ok("put", "aged", "new", at=leader)
        wait_until(
            "revisions 2 s old to be compacted",
            lambda: "compacted" in ctl.run("get", "aged", f"--rev={first - 1}").stderr,
            timeout=10,
        )
        assert ctl.ok("get", "aged").split() == ["aged", "new"]


class Watch:
    """`etcdctl watch ...` running in the background, its output read line by line."""

    def __init__(self, endpoint: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            ["etcdctl", f"--endpoints={endpoint}", "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=etcdctl_env(),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def until(self, n: int, timeout: float = 20.0) -> list[str]:
        """The first n non-empty lines, waiting for them."""
        wait_until(f"{n} lines from etcdctl watch", lambda: len([x for x in self.lines if x]) >= n, timeout)
        return [x for x in self.lines if x][:n]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_watch_a_prefix_live_and_from_a_past_revision(cluster: Cluster, etcdctl: Etcdctl) -> None:
    leader = cluster.wait_leader()
    follower = cluster.followers(leader)[0]
    live = Watch(cluster.address(follower), "wp/", "--prefix")
    try:
        time.sleep(0.5)  # etcdctl prints nothing when its watch is created
        start = etcdctl.json("put", "wp/a", "1")["header"]["revision"]  # type: ignore[index]
        etcdctl.ok("put", "wp/b", "2")
        etcdctl.ok("put", "other", "not watched")
        etcdctl.ok("del", "wp/a")
        expected = ["PUT", "wp/a", "1", "PUT", "wp/b", "2", "DELETE", "wp/a"]
        assert live.until(len(expected)) == expected
    finally:
        live.close()
    past = Watch(cluster.address(leader), "wp/a", f"--rev={start}", "--prev-kv")
    try:
        # The delete carries the key as it was before it (prev_kv), which etcdctl prints first.
        assert past.until(7) == ["PUT", "wp/a", "1", "DELETE", "wp/a", "1", "wp/a"]
    finally:
        past.close()


def test_a_watch_from_a_compacted_revision_is_cancelled(cluster: Cluster, etcdctl: Etcdctl) -> None:
    leader = cluster.wait_leader()
    first = etcdctl.json("put", "wc", "1")["header"]["revision"]  # type: ignore[index]
    now = etcdctl.json("put", "wc", "2")["header"]["revision"]  # type: ignore[index]
    etcdctl.ok("compaction", str(now))
    done = subprocess.run(
        ["etcdctl", f"--endpoints={cluster.address(leader)}", "watch", "wc", f"--rev={first}"],
        capture_output=True, text=True, env=etcdctl_env(), timeout=ETCDCTL_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode != 0
    assert "watch was canceled (etcdserver: mvcc: required revision has been compacted)" in done.stderr


def test_a_watch_on_a_follower_misses_nothing_when_the_leader_dies(
    cluster: Cluster, etcdctl: Etcdctl
) -> None:
    leader = cluster.wait_leader()
    follower = cluster.followers(leader)[0]
    watch = Watch(cluster.address(follower), "wl/", "--prefix")
    try:
        time.sleep(0.5)
        for i in range(5):
            etcdctl.ok("put", f"wl/{i}", str(i))
        cluster.kill(leader)
        survivors = [cluster.address(i) for i in range(cluster.n) if i != leader]
        after = Etcdctl(survivors)
        for i in range(5, 10):
            wait_until(f"put wl/{i}", lambda i=i: after.run("put", f"wl/{i}", str(i)).returncode == 0)
        lines = watch.until(30)
        keys = [lines[k + 1] for k in range(0, 30, 3)]
        assert keys == [f"wl/{i}" for i in range(10)], lines  # in order, none missing, none twice
    finally:
        watch.close()
        cluster.start(leader)
        cluster.wait_leader()


def test_watch_bounds(tmp_path: Path) -> None:
    """--max-watchers-per-stream cancels the watcher past it as it is created; --max-watch-streams
    refuses the stream past it."""
    with Cluster(tmp_path) as c:
        c.args += ["--max-watchers-per-stream", "2", "--max-watch-streams", "2"]
        leader = c.start_all()
        assert leader is not None
        channel = grpc.insecure_channel(c.address(leader))
        stub = etcd_rpc_pb2_grpc.WatchStub(channel)
        create = [
            etcd_rpc_pb2.WatchRequest(create_request=etcd_rpc_pb2.WatchCreateRequest(key=f"k{i}".encode()))
            for i in range(3)
        ]
        hold = threading.Event()  # keeps each call's request side open, as a watching client does

        def requests(items: list[etcd_rpc_pb2.WatchRequest]) -> Iterator[etcd_rpc_pb2.WatchRequest]:
            yield from items
            hold.wait(10)

        first = stub.Watch(requests(create), timeout=10)
        answers = [next(first) for _ in range(3)]
        assert [(a.created, a.canceled) for a in answers] == [(True, False), (True, False), (True, True)]
        assert "--max-watchers-per-stream" in answers[2].cancel_reason
        second = stub.Watch(requests(create[:1]), timeout=10)
        assert next(second).created
        third = stub.Watch(requests(create[:1]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            next(third)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "--max-watch-streams" in refused.value.details()  # type: ignore[attr-defined]
        hold.set()
        first.cancel()
        second.cancel()
        channel.close()


def test_watch_options_progress_filters_and_cancel(tmp_path: Path) -> None:
    """progress_notify (every --watch-progress-notify-interval while nothing happens), a progress request
    (watch_id -1), the NOPUT filter, prev_kv, and a cancel request, on etcd's own messages."""
    with Cluster(tmp_path) as c:
        c.args += ["--watch-progress-notify-interval", "0.3"]
        leader = c.start_all()
        assert leader is not None
        channel = grpc.insecure_channel(c.address(leader))
        kv = etcd_rpc_pb2_grpc.KVStub(channel)
        outbox: queue.Queue[etcd_rpc_pb2.WatchRequest | None] = queue.Queue()

        def requests() -> Iterator[etcd_rpc_pb2.WatchRequest]:
            while (item := outbox.get(timeout=20)) is not None:
                yield item

        answers = etcd_rpc_pb2_grpc.WatchStub(channel).Watch(requests(), timeout=20)
        create = etcd_rpc_pb2.WatchCreateRequest
        outbox.put(
            etcd_rpc_pb2.WatchRequest(create_request=create(key=b"quiet", progress_notify=True, watch_id=7))
        )
        assert next(answers).created
        notified = next(answers)  # nothing happened for 0.3 s: an empty answer with the revision reached
        assert notified.watch_id == 7 and not notified.events and not notified.created
        outbox.put(etcd_rpc_pb2.WatchRequest(cancel_request=etcd_rpc_pb2.WatchCancelRequest(watch_id=7)))
        assert (lambda a: (a.watch_id, a.canceled))(next(answers)) == (7, True)

        outbox.put(
            etcd_rpc_pb2.WatchRequest(
                create_request=create(key=b"f", filters=[create.NOPUT], prev_kv=True, watch_id=8)
            )
        )
        assert next(answers).created
        kv.Put(etcd_rpc_pb2.PutRequest(key=b"f", value=b"1"), timeout=5)
        deleted = kv.DeleteRange(etcd_rpc_pb2.DeleteRangeRequest(key=b"f"), timeout=5)
        got = next(answers)
        assert [e.type for e in got.events] == [etcd_kv_pb2.Event.DELETE]  # the put filtered out
        assert (
            got.events[0].prev_kv.value == b"1" and got.events[0].kv.mod_revision == deleted.header.revision
        )
        outbox.put(etcd_rpc_pb2.WatchRequest(progress_request=etcd_rpc_pb2.WatchProgressRequest()))
        progress = next(answers)
        assert progress.watch_id == -1 and progress.header.revision == deleted.header.revision
        outbox.put(None)
        answers.cancel()
        channel.close()


def _lease_id(granted: str) -> str:
    """The hex id in etcdctl's "lease 694d7a1b8f0a2b3c granted with TTL(5s)"."""
    assert granted.startswith("lease ") and "granted with TTL" in granted, granted
    return granted.split()[1]


def test_leases_grant_attach_keep_alive_and_revoke(cluster: Cluster, etcdctl: Etcdctl) -> None:
    leader = cluster.wait_leader()
    follower = cluster.followers(leader)[0]
    lease = _lease_id(etcdctl.ok("lease", "grant", "60", at=follower))  # granted by the leader
    assert etcdctl.ok("put", "leased/a", "1", f"--lease={lease}").strip() == "OK"
    etcdctl.ok("put", "leased/b", "2", f"--lease={lease}")
    ttl = etcdctl.ok("lease", "timetolive", lease, "--keys", at=follower)
    assert f"lease {lease} granted with TTL(60s)" in ttl and "attached keys([leased/a leased/b])" in ttl
    assert lease in etcdctl.ok("lease", "list").split()
    kept = etcdctl.run("lease", "keep-alive", "--once", lease, at=follower)  # through the follower
    assert kept.returncode == 0 and f"lease {lease} keepalived with TTL(60)" in kept.stdout, kept.stderr
    before = etcdctl.json("get", "leased/", "--prefix")["header"]["revision"]  # type: ignore[index]
    assert etcdctl.ok("lease", "revoke", lease).strip() == f"lease {lease} revoked"
    assert etcdctl.ok("get", "leased/", "--prefix") == ""
    gone = etcdctl.json("get", "leased/a", f"--rev={before + 1}")
    assert gone.get("kvs") is None  # both keys went at the one revision after
    assert f"lease {lease} already expired" in etcdctl.ok("lease", "timetolive", lease)
    missing = etcdctl.run("put", "x", "y", "--lease=1234abcd")
    assert missing.returncode != 0 and "etcdserver: requested lease not found" in missing.stderr


def test_a_lease_no_one_keeps_alive_expires_with_its_keys(cluster: Cluster, etcdctl: Etcdctl) -> None:
    lease = _lease_id(etcdctl.ok("lease", "grant", "1"))  # raised to the minimum TTL
    granted = int(etcdctl.ok("lease", "timetolive", lease).split("TTL(")[1].split("s")[0])
    assert granted >= 1
    etcdctl.ok("put", "ephemeral", "here", f"--lease={lease}")
    assert etcdctl.ok("get", "ephemeral").split() == ["ephemeral", "here"]
    wait_until("the lease to expire", lambda: etcdctl.ok("get", "ephemeral") == "", timeout=granted + 10)
    assert lease not in etcdctl.ok("lease", "list").split()


def test_a_failover_does_not_expire_a_lease(cluster: Cluster, etcdctl: Etcdctl) -> None:
    """The new leader gives every lease its TTL again (and an election timeout): the client has until
    then to reach it with a keep-alive."""
    leader = cluster.wait_leader()
    lease = _lease_id(etcdctl.ok("lease", "grant", "6", at=leader))
    etcdctl.ok("put", "survivor", "yes", f"--lease={lease}")
    time.sleep(3)
    cluster.kill(leader)
    try:
        others = Etcdctl([cluster.address(i) for i in range(cluster.n) if i != leader])
        wait_until("a new leader", lambda: others.run("put", "ping", "1").returncode == 0)
        time.sleep(4)  # past the lease's first deadline (6 s after its grant)
        assert others.ok("get", "survivor").split() == ["survivor", "yes"]
        kept = others.run("lease", "keep-alive", "--once", lease)
        assert "keepalived with TTL(6)" in kept.stdout, kept.stderr
    finally:
        cluster.start(leader)
        cluster.wait_leader()


def test_lease_bounds(tmp_path: Path) -> None:
    """--max-leases refuses a grant past it; --max-keepalive-streams refuses a keep-alive call past it."""
    with Cluster(tmp_path) as c:
        c.args += ["--max-leases", "2", "--max-keepalive-streams", "1"]
        leader = c.start_all()
        assert leader is not None
        channel = grpc.insecure_channel(c.address(leader))
        lease = etcd_rpc_pb2_grpc.LeaseStub(channel)
        granted = [lease.LeaseGrant(etcd_rpc_pb2.LeaseGrantRequest(TTL=60), timeout=5).ID for _ in range(2)]
        with pytest.raises(grpc.RpcError) as refused:
            lease.LeaseGrant(etcd_rpc_pb2.LeaseGrantRequest(TTL=60), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "--max-leases" in refused.value.details()  # type: ignore[attr-defined]
        lease.LeaseRevoke(etcd_rpc_pb2.LeaseRevokeRequest(ID=granted[0]), timeout=5)
        lease.LeaseGrant(etcd_rpc_pb2.LeaseGrantRequest(TTL=60), timeout=5)  # room again

        hold = threading.Event()

        def keep(ids: list[int]) -> Iterator[etcd_rpc_pb2.LeaseKeepAliveRequest]:
            for i in ids:
                yield etcd_rpc_pb2.LeaseKeepAliveRequest(ID=i)
            hold.wait(10)

        first = lease.LeaseKeepAlive(keep([granted[1]]), timeout=10)
        assert next(first).TTL == 60
        second = lease.LeaseKeepAlive(keep([granted[1]]), timeout=10)
        with pytest.raises(grpc.RpcError) as busy:
            next(second)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "--max-keepalive-streams" in busy.value.details()  # type: ignore[attr-defined]
        hold.set()
        first.cancel()
        channel.close()


def test_endpoint_hashkv_agrees_across_members(cluster: Cluster, etcdctl: Etcdctl) -> None:
    etcdctl.ok("put", "hashed/a", "1")
    etcdctl.ok("put", "hashed/a", "2")
    revision = int(etcdctl.json("get", "hashed/a")["header"]["revision"])  # type: ignore[index]

    def hashes(*extra: str) -> set[str] | None:
        lines = etcdctl.ok("endpoint", "hashkv", *extra).splitlines()
        found = {line.rsplit(",", 1)[1].strip() for line in lines}
        return found if len(lines) == cluster.n and len(found) == 1 else None

    (now,) = wait_until("the members to agree on the hash", hashes)
    (before,) = wait_until("the same at a past revision", lambda: hashes(f"--rev={revision - 1}"))
    assert now != before, "the hash covers the rows up to the revision asked"
    future = etcdctl.run("endpoint", "hashkv", f"--rev={revision + 10_000}")
    assert future.returncode != 0 and "future revision" in future.stderr


def test_etcdctl_move_leader(cluster: Cluster, etcdctl: Etcdctl) -> None:
    leader = cluster.wait_leader()
    target = cluster.followers(leader)[0]
    out = etcdctl.ok("move-leader", f"{target + 1:x}")
    assert f"Leadership transferred from {leader + 1:x} to {target + 1:x}" in out, out
    assert cluster.wait_leader() == target
    bad = etcdctl.run("move-leader", "ff")
    assert bad.returncode != 0 and "bad leader transferee" in bad.stderr, bad.stderr


def test_etcdctl_snapshot_save_writes_a_backup_raftd_restores(
    cluster: Cluster, etcdctl: Etcdctl, tmp_path: Path
) -> None:
    etcdctl.ok("put", "saved/key", "kept")
    leader = cluster.wait_leader()
    follower = cluster.followers(leader)[0]
    path = tmp_path / "snap.db"
    assert "Snapshot saved at" in etcdctl.ok("snapshot", "save", str(path), at=follower)
    with Cluster(tmp_path / "restored", n=1) as one:
        one.start(0, "--restore", str(path))
        one.wait_leader()
        restored = Etcdctl(one.endpoints)
        assert restored.ok("get", "saved/key").split() == ["saved/key", "kept"]


def test_etcdctl_member_add_promote_update_and_remove(tmp_path: Path) -> None:
    """etcd's membership calls over raftd's: a new member is a learner (raftd's rule) until promoted, and
    is promoted only once it has answered; a member id nobody has is "member not found"."""
    _need_etcdctl()
    with Cluster(tmp_path) as c:
        c.start_all()
        ctl = Etcdctl(c.endpoints)
        (port,) = free_ports(1)
        added = ctl.ok("member", "add", "newbie", f"--peer-urls=http://{HOST}:{port}")
        member = added.split()[1]  # "Member 4 added to cluster ...", the id in hex
        node = int(member, 16) - 1
        assert node == 3 and f'ETCD_INITIAL_ADVERTISE_PEER_URLS="http://{HOST}:{port}"' in added
        listed = ctl.ok("member", "list").splitlines()
        assert listed[-1].startswith(f"{member}, ") and listed[-1].endswith(", true")  # a learner
        early = ctl.run("member", "promote", member)  # it has not started: it never answered
        assert early.returncode != 0 and f"learner {node} has not caught up" in early.stderr, early.stderr
        assert "member not found" in ctl.run("member", "promote", "ff").stderr
        c.join(node, c.endpoints)
        wait_until("the learner's promotion", lambda: ctl.run("member", "promote", member).returncode == 0)
        assert ctl.ok("member", "list").splitlines()[-1].endswith(", false")
        assert "updated in cluster" in ctl.ok("member", "update", member, f"--peer-urls=http://{HOST}:{port}")
        assert f"Member {member:>16} removed" in ctl.ok("member", "remove", member)
        assert c.wait_exit(node, signal.SIGCONT) == 0  # a removed node stops by itself
        assert len(ctl.ok("member", "list").splitlines()) == 3


def test_an_enum_value_etcd_does_not_define_is_invalid_input(cluster: Cluster) -> None:
    """proto3 lets a client send any number in an enum field: refused in words, not an internal error."""
    with grpc.insecure_channel(cluster.address(cluster.wait_leader())) as channel:
        kv = etcd_rpc_pb2_grpc.KVStub(channel)
        with pytest.raises(grpc.RpcError) as bad_sort:
            kv.Range(etcd_rpc_pb2.RangeRequest(key=b"a", range_end=b"b", sort_order=9), timeout=5)  # type: ignore[arg-type]
        assert bad_sort.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert bad_sort.value.details() == "etcdserver: sort order 9 is not one etcd defines"  # type: ignore[attr-defined]
        compare = etcd_rpc_pb2.Compare(key=b"a", target=7)  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as bad_target:
            kv.Txn(etcd_rpc_pb2.TxnRequest(compare=[compare]), timeout=5)
        assert bad_target.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
