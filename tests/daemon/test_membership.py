"""Membership changes on real processes (issue 20), driven by raftctl as an operator would: a cluster grows
from three nodes to five and back under writes, a removed node stops for good, a wiped node is refused
under its old id and comes back under a new one, and wrong requests are refused with their exit codes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from raftctl.client import Client, ClientError, OutcomeUnknown
from raftd.launcher import free_ports
from raftd.pb import kv_pb2
from raftd.storage import DirRecord

from .cluster import HOST, Cluster, meta_of, release_env, wait_until

CTL_LIMIT_S = 30.0
EXIT_WAIT_S = 20.0


def ctl(c: Cluster, *args: str, endpoints: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    eps = ",".join(endpoints or [c.address(i) for i in c.alive() if i in c.ids])  # the map's nodes
    return subprocess.run(
        [sys.executable, "-m", "raftctl", "--endpoints", eps, *args],
        capture_output=True,
        text=True,
        timeout=CTL_LIMIT_S,
        check=False,
        cwd=c.root,
    )


def members(c: Cluster, endpoints: list[str] | None = None) -> dict[str, object]:
    r = ctl(c, "-o", "json", "member", "list", endpoints=endpoints)
    assert r.returncode == 0, r.stderr
    doc: dict[str, object] = json.loads(r.stdout)
    return doc


def roles(c: Cluster, endpoints: list[str] | None = None) -> dict[int, str]:
    listed = members(c, endpoints)["members"]
    assert isinstance(listed, list)
    return {m["id"]: m["role"] for m in listed}


def local_value(address: str, key: str) -> str | None:
    """What the node at address has applied for key (a local read), None when it has not (or does not
    answer yet)."""
    with Client([address], timeout=2.0, pin=True) as client:
        try:
            return client.get(key, linearizable=False)
        except ClientError:  # NotFound, or not listening yet
            return None


def added_id(r: subprocess.CompletedProcess[str]) -> int:
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["member"]["role"] == "learner"
    return int(doc["member"]["id"])


class Writer(threading.Thread):
    """Unique values, one key per write, until stopped: every acknowledged one must be read back."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = Client(endpoints, timeout=10.0)
        self.acked: dict[str, str] = {}
        self.unknown = 0
        self.refused = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            key, value = f"k{n}", f"v{n}"
            try:
                self.client.put(key, value)
            except OutcomeUnknown:
                self.unknown += 1
            except ClientError:
                self.refused += 1
            else:
                self.acked[key] = value
            time.sleep(0.005)
        self.client.close()


def test_a_cluster_grows_to_five_and_shrinks_to_three_under_writes(tmp_path: Path) -> None:
    with Cluster(tmp_path / "c") as c:
        c.start_all()
        wait_until("the membership record", lambda: members(c)["recorded"])
        writer = Writer(c.endpoints)
        writer.start()
        try:
            ports = free_ports(2)
            new = added_id(ctl(c, "-o", "json", "member", "add", f"{HOST}:{ports[0]}"))
            assert new == 3
            c.join(new, c.endpoints)
            # Promotion is the operator's: refused (5) while the learner is behind, then done.
            wait_until("node 3's promotion", lambda: ctl(c, "member", "promote", "3").returncode == 0)
            again = ctl(c, "member", "add", f"{HOST}:{ports[0]}")
            assert again.returncode == 4 and "listens at" in again.stderr, "one member per address"
            fifth = added_id(ctl(c, "-o", "json", "member", "add", f"{HOST}:{ports[1]}"))
            assert fifth == 4
            c.join(fifth, c.endpoints, "--auto-promote")
            wait_until("node 4 to promote itself", lambda: roles(c).get(4) == "voter")
            assert roles(c) == dict.fromkeys(range(5), "voter")
            # raftctl status through the map's nodes shows the nodes that joined too, from the cluster.
            status = ctl(c, "-o", "json", "status")
            assert status.returncode == 0, status.stderr
            rows = {row["id"]: row["endpoint"] for row in json.loads(status.stdout)}
            assert rows == {
                **{i: c.address(i) for i in range(3)},
                3: f"{HOST}:{ports[0]}",
                4: f"{HOST}:{ports[1]}",
            }

            # Back to three: the leader goes first, then another of the original nodes.
            leader = c.wait_leader()
            r = ctl(c, "member", "remove", str(leader))
            assert r.returncode == 0, r.stderr
            assert c.procs[leader].wait(EXIT_WAIT_S) == 0, "a removed node stops, and not as a failure"
            assert "removed from the cluster" in c.stderr(leader)
            other = next(i for i in range(3) if i != leader)
            r = ctl(c, "member", "remove", str(other))
            assert r.returncode == 0, r.stderr
            assert c.procs[other].wait(EXIT_WAIT_S) == 0
            left = sorted({0, 1, 2, 3, 4} - {leader, other})
            eps = [c.address(i) for i in left if i < 3] + [f"{HOST}:{p}" for p in ports]
            assert roles(c, eps) == dict.fromkeys(left, "voter")
            time.sleep(0.5)
            writer.stopping.set()
            writer.join(30)
            assert len(writer.acked) > 50, (len(writer.acked), writer.refused, writer.unknown)
            with Client(eps, timeout=10.0) as client:
                for key, value in writer.acked.items():
                    assert client.get(key) == value, key

            # It stays out: restarted on its data directory, it says so and exits 0 at once.
            c.start(leader)
            assert c.procs[leader].wait(EXIT_WAIT_S) == 0
            assert c.stderr(leader).count("removed from the cluster") >= 2
        finally:
            writer.stopping.set()
            writer.join(30)


def test_a_wiped_node_is_refused_under_its_old_id_and_rejoins_under_a_new_one(tmp_path: Path) -> None:
    with Cluster(tmp_path / "c") as c:
        leader = c.start_all()
        c.put_retrying(0, "k", "v")
        wait_until(
            "every member's data directory recorded",
            lambda: all(
                m["incarnation"]
                for m in members(c)["members"]  # type: ignore[attr-defined]
            ),
        )
        wiped = next(i for i in range(3) if i != leader)
        c.kill(wiped)
        shutil.rmtree(c.data_dir(wiped))
        c.start(wiped)
        assert c.procs[wiped].wait(EXIT_WAIT_S) == 1, c.dump_logs()
        assert "this id belongs to another data directory; rejoin under a new id" in c.stderr(wiped)
        c.put_retrying(leader, "k", "after")

        # Wrong requests: a wrong request is 4, a wrong moment 5, a malformed address a usage error.
        assert ctl(c, "member", "promote", "0").returncode == 4
        assert ctl(c, "member", "remove", "9").returncode == 4
        assert ctl(c, "member", "add", "no-port").returncode == 2
        again = ctl(c, "member", "add", str(wiped), c.address(wiped))
        assert again.returncode == 4 and f"node id {wiped} was given already" in again.stderr, again.stderr
        survivor = next(i for i in range(3) if i not in (leader, wiped))
        quorumless = ctl(c, "member", "remove", str(survivor))
        assert quorumless.returncode == 5 and "quorum" in quorumless.stderr, quorumless.stderr

        # The documented way back: remove the old id, add the node anew, start it with --join.
        assert ctl(c, "member", "remove", str(wiped)).returncode == 0
        new = added_id(ctl(c, "-o", "json", "member", "add", c.address(wiped)))
        assert new == 3, "ids are never given twice"
        c.join(new, c.endpoints)
        wait_until("node 3 to catch up", lambda: local_value(c.address(wiped), "k") == "after")
        wait_until("node 3's promotion", lambda: ctl(c, "member", "promote", "3").returncode == 0)
        assert roles(c) == {leader: "voter", survivor: "voter", 3: "voter"}
        # A restart with the same flags finds the cluster in its own data directory.
        c.kill(new)
        c.join(new, c.endpoints)
        c.put_retrying(leader, "k", "restarted")
        wait_until("node 3 after its restart", lambda: local_value(c.address(wiped), "k") == "restarted")


# The last commit before membership changes in the daemon: its directories have no record, its nodes speak
# peer protocol 3 and would stop on a membership entry.
BEFORE_MEMBERSHIP = "3855c01e557e08756c27d5f1445713e57ca230a7"


def test_a_cluster_of_the_previous_release_records_its_membership_once_every_node_is_upgraded(
    tmp_path: Path,
) -> None:
    old_env = release_env(BEFORE_MEMBERSHIP, tmp_path / "previous-release")
    with Cluster(tmp_path / "c", env=old_env) as c:
        c.start_all()
        c.put_retrying(0, "k", "before")
        for i in range(3):
            assert c.terminate(i) == 0
        assert all("record" not in meta_of(c.data_dir(i) / "raft.db") for i in range(3))

        c.start(2)  # still the previous release
        c.env = {}
        c.start(0)
        c.start(1)
        if c.wait_leader() == 2:  # raftctl asks the leader, and the old one has no member methods
            c.admin(2).TransferLeader(kv_pb2.TransferLeaderRequest(target_id=0), timeout=5)
        assert c.wait_leader(exclude=2) in (0, 1)
        c.put_retrying(0, "k", "during")
        c.wait_value(2, "k", "during", local=True)
        time.sleep(1.0)  # ten heartbeats: time enough for a leader to propose a record it should not
        assert sorted(c.running()) == [0, 1, 2], c.dump_logs()
        assert not members(c, [c.address(0)])["recorded"]
        early = ctl(c, "member", "add", f"{HOST}:{free_ports(1)[0]}", endpoints=[c.address(0), c.address(1)])
        assert early.returncode == 5 and "not recorded its membership" in early.stderr, early.stderr

        assert c.terminate(2) == 0
        c.start(2)
        wait_until("the membership record", lambda: members(c)["recorded"])
        wait_until(
            "every member's data directory recorded",
            lambda: all(m["incarnation"] for m in members(c)["members"]),  # type: ignore[attr-defined]
        )
        for i in range(3):
            c.wait_value(i, "k", "during", local=True)
            record = DirRecord.load(str(meta_of(c.data_dir(i) / "raft.db")["record"]))
            assert record.voters == (0, 1, 2) and not record.removed
        assert roles(c) == dict.fromkeys(range(3), "voter")


def test_a_map_that_disagrees_with_the_membership_is_reported_at_start(tmp_path: Path) -> None:
    """Node 2 moved while the cluster was down, and the map says so: the map wins at this start (the
    nodes reach it), and each node says once how to make the move the cluster's own."""
    with Cluster(tmp_path / "c") as c:
        c.start_all()
        wait_until("the membership record", lambda: members(c)["recorded"])
        for i in range(3):
            assert c.terminate(i) == 0
        old = c.address(2)
        c.ports[2] = free_ports(1)[0]
        c.write_map("conf")
        marks = [c.log_size(i) for i in range(3)]
        c.start_all()
        new = c.address(2)
        warning = (
            f"The cluster map has node 2 at {new}, the cluster has it at {old}: if it moved, run "
            f"raftctl member update 2 {new}"
        )
        for i in range(3):
            c.wait_log(i, re.escape(warning), since=marks[i])
            assert c.log(i, marks[i]).count("The cluster map has") == 1
        r = ctl(c, "member", "update", "2", new)
        assert r.returncode == 0, r.stderr
        listed = {m["id"]: m["address"] for m in members(c)["members"]}  # type: ignore[attr-defined]
        assert listed[2] == new


def test_changes_refused_at_the_wrong_moment_say_why_and_exit_5(tmp_path: Path) -> None:
    """A learner far behind, a second change while one is in progress, the last voter: each refused with
    its reason, and none of them applies. Long election timeouts: a leader whose followers are frozen
    keeps leading long enough to refuse the second change."""
    with Cluster(tmp_path / "c", election_timeout_ms=(1500, 3000), heartbeat_ms=150) as c:
        c.args += ["--max-learner-lag", "0"]
        leader = c.start_all()
        wait_until("the membership record", lambda: members(c)["recorded"])
        for i in range(20):
            c.put_retrying(leader, f"k{i}", "v")

        # A learner that never started is as far behind as can be (the lag allowed is 0 here).
        (port,) = free_ports(1)
        learner = added_id(ctl(c, "-o", "json", "member", "add", "7", f"{HOST}:{port}", "--learner"))
        assert learner == 7, "the id asked for"
        behind = ctl(c, "member", "promote", str(learner))
        assert behind.returncode == 5 and f"learner {learner} is " in behind.stderr, behind.stderr
        assert "entries behind the commit index" in behind.stderr
        assert roles(c)[learner] == "learner"
        assert ctl(c, "member", "remove", str(learner)).returncode == 0

        # A change that cannot commit (both followers frozen) is in progress: the next one is refused.
        followers = c.followers(leader)
        for f in followers:
            c.stop(f)
        first = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "raftctl",
                "--endpoints",
                c.address(leader),
                "--timeout",
                "4",
                "member",
                "add",
                f"{HOST}:{free_ports(1)[0]}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=c.root,
        )
        try:
            time.sleep(0.3)
            second = ctl(c, "member", "add", f"{HOST}:{free_ports(1)[0]}", endpoints=[c.address(leader)])
            assert second.returncode == 5 and "in progress" in second.stderr, second.stderr
        finally:
            for f in followers:
                c.cont(f)
            _, err = first.communicate(timeout=CTL_LIMIT_S)
        assert first.returncode in (0, 6), err  # done, or may have applied: never refused
        wait_until("the first addition", lambda: len(roles(c)) == 4)

        # Down to one voter: the last one cannot go.
        extra = next(i for i in roles(c) if i > 2)
        assert ctl(c, "member", "remove", str(extra)).returncode == 0
        for f in followers:
            r = ctl(c, "member", "remove", str(f))
            assert r.returncode == 0, r.stderr
            assert c.procs[f].wait(EXIT_WAIT_S) == 0
        last = ctl(c, "member", "remove", str(leader), endpoints=[c.address(leader)])
        assert last.returncode == 5 and f"node {leader} is the last voter" in last.stderr, last.stderr
        assert roles(c, [c.address(leader)]) == {leader: "voter"}
