"""The seeded simulator: many seeds pass, a seed replays exactly, and a broken rule is caught."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from raftd.core import Entry, HardState, Message, MsgType, Role, quorum
from raftd.core.log import RaftLog
from raftd.core.raft import _RESPONSE_OF, Raft
from raftd.core.read_only import ReadRequest
from raftd.sim import Simulation
from raftd.sim import cluster as cluster_module
from raftd.sim.__main__ import main, run_seed

SEEDS = 400
TICKS = 400
CHUNK = 50


@pytest.mark.parametrize("first", range(0, SEEDS, CHUNK))
def test_seeds_pass(first: int) -> None:
    """At least 300 seeds over 3- and 5-node clusters, in chunks so a failure names a narrow range."""
    for seed in range(first, first + CHUNK):
        failure = run_seed(seed, 3 if seed % 2 == 0 else 5, TICKS)
        assert failure is None, failure


def test_seed_replays_exactly() -> None:
    a = Simulation(7, 5, 200)
    b = Simulation(7, 5, 200)
    assert a.run() == b.run()
    assert a.check.applied == b.check.applied
    assert a.stats["proposed"] > 0 and a.stats["reads_ok"] > 0


def test_faults_actually_happen() -> None:
    """The weather is not calm: across seeds we see crashes, partitions, snapshots sent and reads served."""
    totals: dict[str, int] = {}
    for seed in range(40):
        for k, v in Simulation(seed, 3 if seed % 2 == 0 else 5, 300).run().items():
            totals[k] = totals.get(k, 0) + v
    for key in ("proposed", "reads_ok", "crashes", "partitions", "snapshots_sent"):
        assert totals[key] > 0, key


def test_membership_changes_happen() -> None:
    """The membership nemesis adds learners, promotes and removes members in a third of the seeds or more,
    and a member whose removal committed is shut down (test_seeds_pass: the histories stay safe)."""
    totals: dict[str, int] = {}
    promoted = 0
    for seed in range(40):
        sim = Simulation(seed, 3 if seed % 2 == 0 else 5, 300)
        for k, v in sim.run().items():
            totals[k] = totals.get(k, 0) + v
        leaders = [n.raw for n in sim.nodes.values() if n.raw is not None and n.raw.role is Role.LEADER]
        promoted += any(v > sim.params.nodes for r in leaders for v in r.conf_state().voters)
    assert totals["conf_changes"] > 20 and totals["removed"] > 5, totals
    assert promoted > 0, "no learner was ever promoted to a voter"


def test_damaged_disks_are_injected_and_every_damage_is_detected() -> None:
    """Bit flips at rest, torn writes and lying fsyncs on a minority; seeds pass (test_seeds_pass) because
    each node finds the damage at boot and stays down, as raftd does."""
    totals: dict[str, int] = {}
    for seed in range(60):
        for k, v in Simulation(seed, 3 if seed % 2 == 0 else 5, 400).run().items():
            totals[k] = totals.get(k, 0) + v
    for key in ("disk_lies", "bit_flips", "torn_writes", "damage_detected"):
        assert totals[key] > 0, (key, totals)


def test_without_the_boot_checks_damage_becomes_a_safety_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks have teeth: served instead of refused, damaged entries break state machine safety."""
    monkeypatch.setattr(cluster_module.Disk, "damage", lambda self: None)
    failures = [run_seed(seed, 3 if seed % 2 == 0 else 5, 400) for seed in range(40)]
    assert any(f is not None and "safety" in f for f in failures)


def test_a_database_that_went_back_in_time_is_damage() -> None:
    """raft.vote holds the newest term and vote; a database behind it lost writes it had made durable."""
    d = cluster_module.Disk(hard=HardState(5, 2, 9), vote=(5, 2))
    assert d.damage() is None
    assert cluster_module.Disk(hard=HardState(4, 2, 9), vote=(5, 2)).damage() is not None
    assert cluster_module.Disk(hard=HardState(5, 0, 9), vote=(5, 2)).damage() is not None
    entry = Entry(1, 1, b"a=1")
    torn = cluster_module.Disk(entries=[Entry(1, 1, b"a\x00")], crcs=[cluster_module._crc(entry)])
    assert torn.damage() == "log entry 1 is damaged"


# -- teeth: each broken rule, injected only here, must be reported --------------------------------------


def _short_quorum(voters, match):  # type: ignore[no-untyped-def]
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[max(quorum.majority(len(acked)) - 2, 0)]


def _no_truncate(self: RaftLog, index: int, log_term: int, commit: int, entries: tuple) -> int | None:  # type: ignore[type-arg]
    if not self.match_term(index, log_term):
        return None
    new = [e for e in entries if e.index > self.last_index()]
    if new:
        self.append(new)
    self.commit_to(min(commit, index + len(entries)))
    return index + len(entries)


def _vote_for_anyone(self: Raft, m: Message) -> None:
    self._send(Message(_RESPONSE_OF[m.type], m.frm), term=m.term)
    if m.type is MsgType.VOTE:
        self.vote = m.frm


def _read_without_quorum(self: Raft, m: Message) -> None:
    self._answer_read(ReadRequest(self.log.committed, m.context, m.frm))


BROKEN: dict[str, tuple[object, str, Callable[..., object], tuple[str, ...]]] = {
    "quorum one vote short": (quorum, "committed_index", _short_quorum, ("safety", "completeness")),
    "follower keeps conflicting entries": (
        RaftLog,
        "maybe_append",
        _no_truncate,
        ("log matching", "state machine safety"),
    ),
    "votes twice in a term": (
        Raft,
        "_handle_vote_request",
        _vote_for_anyone,
        ("election safety", "completeness"),
    ),
    "ReadIndex without a heartbeat round": (
        Raft,
        "_handle_read_index",
        _read_without_quorum,
        ("linearizability",),
    ),
}


@pytest.fixture(params=sorted(BROKEN))
def broken_rule(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    target, name, replacement, _ = BROKEN[request.param]
    monkeypatch.setattr(target, name, replacement)
    yield request.param


def test_simulator_has_teeth(broken_rule: str) -> None:
    expected = BROKEN[broken_rule][3]
    for seed in range(200):
        failure = run_seed(seed, 3 if seed % 2 == 0 else 5, 300)
        if failure is not None:
            assert any(e in failure for e in expected), failure
            assert f"replay: python -m raftd.sim --seed {seed} --nodes" in failure
            return
    pytest.fail(f"the simulator did not notice: {broken_rule}")


def test_cli_prints_replay_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(quorum, "committed_index", _short_quorum)
    assert main(["--seeds", "60", "--ticks", "300"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAIL seed ")
    replay = err.split("replay: python -m raftd.sim ")[1].split()
    # The printed command replays the same failure on its own.
    assert main(replay) == 1
    assert capsys.readouterr().err.splitlines()[0] == err.splitlines()[0]


def test_cli_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "4", "--ticks", "100"]) == 0
    assert capsys.readouterr().out.startswith("ok: 4 seeds passed")
