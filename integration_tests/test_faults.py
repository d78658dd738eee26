"""raftd containers under the failures Raft exists for: crashes, restarts with their volumes, partitions,
freezes, the seed's suspend, a rolling restart under load, and quorum loss in a 5-node cluster.

Every scenario checks what a user relies on: a new leader is elected and serves, nothing acknowledged is
lost, a node that comes back follows and catches up, and a node cut off from the majority never reports
a write as done. The 3-node cluster is shared by the tests that leave it whole (each starts from a
converged cluster and heals it afterwards); from the host only ports published on 127.0.0.1 are used.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from integration_tests.harness import ContainerCluster, wait_until
from raftctl.client import Client, ClientError, NotFound, Unavailable
from raftd.pb import raft_pb2, raft_pb2_grpc

WRITE_TIMEOUT_S = 10.0  # a client's whole budget for one request, elections included


@pytest.fixture(scope="module")
def cluster3(image: str) -> Iterator[ContainerCluster]:
    with ContainerCluster(3, image) as cluster:
        yield cluster


@pytest.fixture
def c3(cluster3: ContainerCluster, request: pytest.FixtureRequest) -> Iterator[ContainerCluster]:
    """The shared 3-node cluster, whole and converged before the test and healed after it; when the test
    failed, every node's log is printed (the report shows it under the teardown's output)."""
    cluster3.heal_all()
    cluster3.wait_converged(range(3), timeout=60)
    failed_before = request.session.testsfailed
    yield cluster3
    if request.session.testsfailed > failed_before:
        print(cluster3.describe())
        print(cluster3.dump_logs())
    cluster3.heal_all()


def others(cluster: ContainerCluster, *excluded: int) -> list[int]:
    return [i for i in range(cluster.n) if i not in excluded]


def local_read(cluster: ContainerCluster, i: int, key: str) -> str | None:
    """What node i itself has applied for key (no quorum, no forwarding); None when absent."""
    try:
        return cluster.client(timeout=5, nodes=[i], pin=True).get(key, linearizable=False)
    except NotFound:
        return None


def restarted_term(cluster: ContainerCluster, i: int) -> int:
    """The term node i started in at its latest boot, from its log (0 means an empty disk)."""
    last_boot = cluster.logs(i, tail=2000).rsplit("The server starts", 1)[-1]
    m = re.search(r"Term: (\d+)", last_boot)
    assert m, f"n{i} logged no term since its last start:\n{last_boot}"
    return int(m.group(1))


def write_all(client: Client, items: dict[str, str]) -> None:
    for key, value in items.items():
        client.put(key, value)


def assert_all_present(client: Client, acked: dict[str, str], where: str) -> None:
    """Every acknowledged write reads back (linearizably) with its value."""
    wrong = {}
    for key, value in acked.items():
        try:
            got: str | None = client.get(key)
        except NotFound:
            got = None
        if got != value:
            wrong[key] = (value, got)
    assert not wrong, f"{where}: acknowledged writes lost or changed (key: (acked, read)): {wrong}"


def assert_node_has(cluster: ContainerCluster, i: int, acked: dict[str, str]) -> None:
    """Node i's own state machine holds every acknowledged write."""
    wrong = {k: (v, got) for k, v in acked.items() if (got := local_read(cluster, i, k)) != v}
    assert not wrong, f"n{i} lacks acknowledged writes (key: (acked, local read)): {wrong}"


# -- crashes ---------------------------------------------------------------------------------------------


def test_leader_crash_elects_a_new_leader_and_the_old_one_rejoins_as_follower(c3: ContainerCluster) -> None:
    client = c3.client(timeout=WRITE_TIMEOUT_S)
    old = c3.leader()
    before = {f"lc/{j}": f"before-{j}" for j in range(5)}
    write_all(client, before)

    c3.kill(old)
    new = c3.leader(among=others(c3, old), timeout=20)
    assert new != old
    # Writes resume through the client (it follows the new leader on its own).
    after = {f"lc/{j}": f"after-{j}" for j in range(3, 10)}
    write_all(client, after)
    acked = {**before, **after}
    assert_all_present(client, acked, "with the old leader down")

    c3.start(old)
    rows = c3.wait_converged(range(3), timeout=30)
    assert rows[old].role == "follower", rows[old]
    assert rows[old].leader_id != old
    assert_node_has(c3, old, acked)


def test_follower_crash_and_restart_with_its_volume_catches_up(c3: ContainerCluster) -> None:
    client = c3.client(timeout=WRITE_TIMEOUT_S)
    lead = c3.leader()
    follower = others(c3, lead)[0]
    acked = {f"fc/{j}": f"a-{j}" for j in range(20)}
    write_all(client, acked)
    c3.wait_caught_up(follower, c3.status(lead).commit_index or 0)

    c3.kill(follower)
    # The other two are a majority: the leader keeps committing.
    more = {f"fc/{j}": f"b-{j}" for j in range(10, 40)}
    write_all(client, more)
    acked.update(more)
    assert c3.leader(among=others(c3, follower)) == lead

    c3.start(follower)
    c3.wait_converged(range(3), timeout=30)
    # It came back with its disk: it booted into the term it had persisted, not into term 0.
    assert restarted_term(c3, follower) > 0, c3.logs(follower)
    assert_node_has(c3, follower, acked)
    assert_all_present(client, acked, "after the follower's restart")


# -- partition -------------------------------------------------------------------------------------------


def test_leader_partitioned_from_the_majority_cannot_commit_and_steps_down_after_healing(
    c3: ContainerCluster,
) -> None:
    client = c3.client(timeout=WRITE_TIMEOUT_S)
    old = c3.leader()
    majority = others(c3, old)
    client.put("pt/k", "v0")
    committed_before = c3.wait_converged(range(3))[old].commit_index or 0

    c3.disconnect(old)
    # A write sent straight to the cut-off leader (through its published port, no forwarding possible).
    isolated = c3.client(timeout=3, nodes=[old], pin=True)
    isolated_ok = False
    try:
        isolated.put("pt/isolated", "from-the-minority")
        isolated_ok = True
    except ClientError as e:
        isolated_error = str(e)
    # A linearizable read there cannot be confirmed by a quorum either.
    with pytest.raises(Unavailable):
        isolated.get("pt/k")

    # The majority elects a new leader and keeps serving.
    new = c3.leader(among=majority, timeout=20)
    assert new != old
    majority_client = c3.client(timeout=WRITE_TIMEOUT_S, nodes=majority)
    majority_client.put("pt/k", "v1")
    write_all(majority_client, {f"pt/m{j}": str(j) for j in range(5)})
    assert majority_client.get("pt/k") == "v1"

    # The cut-off node committed nothing new and no longer leads (check-quorum).
    wait_until(
        lambda: (s := c3.status(old)).reachable and s.role != "leader", 10, f"cut-off n{old} to step down"
    )
    assert (c3.status(old).commit_index or 0) == committed_before

    c3.connect(old)
    rows = c3.wait_converged(range(3), timeout=30)
    assert rows[old].role == "follower", rows[old]
    assert rows[old].leader_id != old
    assert local_read(c3, old, "pt/k") == "v1"
    for j in range(5):
        assert local_read(c3, old, f"pt/m{j}") == str(j)
    # The minority's write: reported done only if it really committed. It was appended to the cut-off
    # node's log alone, in a term the majority has since passed, so Raft must have dropped it.
    try:
        value: str | None = client.get("pt/isolated")
    except NotFound:
        value = None
    if isolated_ok:
        assert value == "from-the-minority", "the cut-off leader acknowledged a write that is not there"
    else:
        assert value is None, f"a write the cut-off leader failed ({isolated_error}) committed anyway"


# -- freezes ---------------------------------------------------------------------------------------------


def _read_in_thread(client: Client, key: str) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(client.get(key))
        except ClientError as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_pause_of_the_leader_then_unpause_never_serves_a_stale_read(c3: ContainerCluster) -> None:
    client = c3.client(timeout=WRITE_TIMEOUT_S)
    old = c3.leader()
    client.put("pl/k", "before")
    c3.wait_converged(range(3))

    c3.pause(old)
    new = c3.leader(among=others(c3, old), timeout=20)
    assert new != old
    majority_client = c3.client(timeout=WRITE_TIMEOUT_S, nodes=others(c3, old))
    majority_client.put("pl/k", "after")  # acknowledged before the read below is sent
    # A linearizable read sent to the frozen old leader waits in its socket; once thawed it still
    # believes it leads, but it must not answer with what it had before the freeze.
    frozen = c3.client(timeout=8, nodes=[old], pin=True)
    reader, result = _read_in_thread(frozen, "pl/k")
    time.sleep(0.5)
    c3.unpause(old)
    reader.join(15)
    assert not reader.is_alive(), "the read at the thawed node never finished"
    assert result and result[0] != "before", f"stale read from the thawed old leader: {result}"

    rows = c3.wait_converged(range(3), timeout=30)
    assert rows[old].role == "follower", rows[old]
    assert local_read(c3, old, "pl/k") == "after"


def test_pause_of_a_follower_then_unpause(c3: ContainerCluster) -> None:
    client = c3.client(timeout=WRITE_TIMEOUT_S)
    lead = c3.leader()
    follower = others(c3, lead)[0]
    c3.pause(follower)
    acked = {f"pf/{j}": str(j) for j in range(15)}
    write_all(client, acked)
    assert c3.leader(among=others(c3, follower)) == lead
    c3.unpause(follower)
    rows = c3.wait_converged(range(3), timeout=30)
    assert rows[follower].role == "follower"
    assert rows[lead].role == "leader", "a thawed follower must not disrupt the leader"
    assert_node_has(c3, follower, acked)


def test_seed_suspend_command_on_the_leader(c3: ContainerCluster) -> None:
    client = c3.client(timeout=WRITE_TIMEOUT_S)
    old = c3.leader()
    client.put("su/k", "before")
    period = 4
    # The original project's RaftService.Suspend, as its client sends it.
    seed = raft_pb2_grpc.RaftServiceStub(c3._raw_channel(old))
    seed.Suspend(raft_pb2.SuspendRequest(period=period), timeout=5)
    suspended_at = time.monotonic()

    new = c3.leader(among=others(c3, old), timeout=20)
    assert new != old
    with pytest.raises(grpc.RpcError) as e:
        seed.GetVal(raft_pb2.GetValRequest(key="su/k"), timeout=2)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    client.put("su/k", "during")
    assert time.monotonic() - suspended_at < period, "the suspension ended before the checks ran"

    # It comes back by itself after the period, as a follower, and catches up.
    rows = c3.wait_converged(range(3), timeout=period + 30)
    assert rows[old].role == "follower", rows[old]
    assert not rows[old].suspended
    assert local_read(c3, old, "su/k") == "during"
    reply = seed.GetVal(raft_pb2.GetValRequest(key="su/k"), timeout=5)
    assert reply.verdict and reply.value == "during"


# -- restarts --------------------------------------------------------------------------------------------


def test_full_cluster_restart_keeps_every_acknowledged_write(c3: ContainerCluster) -> None:
    client = c3.client(timeout=WRITE_TIMEOUT_S)
    acked = {f"fr/{j}": f"v{j}" for j in range(30)}
    write_all(client, acked)
    client.delete("fr/0")
    del acked["fr/0"]
    for i in range(3):
        c3.kill(i)
    for i in range(3):
        c3.start(i)
    c3.leader(timeout=30)
    c3.wait_converged(range(3), timeout=30)
    assert_all_present(client, acked, "after every node was killed and restarted")
    with pytest.raises(NotFound):
        client.get("fr/0")
    for i in range(3):
        assert_node_has(c3, i, acked)


class Writer(threading.Thread):
    """Writes fresh keys one after another through one exactly-once client until stopped; records what
    was acknowledged and every error the client let through (retries inside the client are invisible)."""

    def __init__(self, client: Client, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.prefix = prefix
        self.acked: dict[str, str] = {}
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        j = 0
        while not self.halt.is_set():
            key, value = f"{self.prefix}/{j}", f"w{j}"
            try:
                self.client.put(key, value)
            except ClientError as e:
                self.errors.append(f"{key}: {e}")
            else:
                self.acked[key] = value
            j += 1


def test_rolling_restart_under_write_load_loses_nothing(c3: ContainerCluster) -> None:
    writer = Writer(c3.client(timeout=15), "rr")
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) >= 5, 10, "the writer to get going")
        # Followers first, the leader last: each stop is graceful (SIGTERM), a leader hands over.
        lead = c3.leader()
        for i in [*others(c3, lead), lead]:
            count = len(writer.acked)
            c3.stop(i)
            c3.start(i)
            c3.wait_converged(range(3), timeout=30)
            wait_until(lambda c=count: len(writer.acked) > c + 3, 15, f"writes to go on around n{i}")
    finally:
        writer.halt.set()
        writer.join(20)
    assert not writer.is_alive()
    # A write reaching a leader that is handing over gets a retryable UNAVAILABLE (it once got UNKNOWN).
    assert not writer.errors, f"client-visible errors during the rolling restart: {writer.errors}"
    assert len(writer.acked) > 20
    client = c3.client(timeout=WRITE_TIMEOUT_S)
    assert_all_present(client, writer.acked, "after the rolling restart")
    c3.wait_converged(range(3))
    for i in range(3):
        assert_node_has(c3, i, writer.acked)


# -- quorum in a 5-node cluster --------------------------------------------------------------------------


def test_five_nodes_serve_with_two_down_and_stop_with_three_down(image: str) -> None:
    with ContainerCluster(5, image) as c5:
        try:
            _five_node_scenario(c5)
        except BaseException:
            print(c5.dump_logs())
            raise


def _five_node_scenario(c5: ContainerCluster) -> None:
    client = c5.client(timeout=WRITE_TIMEOUT_S)
    acked = {"q/base": "v0"}
    write_all(client, acked)

    # Two down, the leader among them: the other three elect a leader and serve.
    lead = c5.leader()
    first_down = [lead, (lead + 1) % 5]
    for i in first_down:
        c5.kill(i)
    up = others(c5, *first_down)
    c5.leader(among=up, timeout=20)
    two_down = {f"q/two/{j}": str(j) for j in range(10)}
    write_all(client, two_down)
    acked.update(two_down)
    assert_all_present(client, acked, "with two of five nodes down")
    c5.wait_converged(up)

    # Three down: no quorum. Writes are never acknowledged, linearizable reads cannot be confirmed, and
    # no node goes on calling itself leader; what the survivors applied can still be read locally.
    third = c5.leader(among=up)
    c5.kill(third)
    survivors = others(c5, *first_down, third)
    stuck = c5.client(timeout=3, nodes=survivors)
    with pytest.raises(Unavailable):
        stuck.put("q/three", "never-acknowledged")
    with pytest.raises(Unavailable):
        stuck.get("q/base")
    wait_until(
        lambda: all(s.role != "leader" for s in c5.statuses(survivors).values()),
        10,
        "the survivors to have no leader",
    )
    for i in survivors:
        assert_node_has(c5, i, acked)
    with pytest.raises(Unavailable):
        stuck.put("q/three", "never-acknowledged")

    # One back: three of five again, and it serves.
    c5.start(first_down[0])
    c5.leader(among=[*survivors, first_down[0]], timeout=20)
    back = {f"q/back/{j}": str(j) for j in range(5)}
    write_all(client, back)
    acked.update(back)

    for i in (first_down[1], third):
        c5.start(i)
    c5.wait_converged(range(5), timeout=30)
    assert_all_present(client, acked, "after every node came back")
    for i in range(5):
        assert_node_has(c5, i, acked)
