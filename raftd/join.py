"""`raftd ID --join ENDPOINTS`: a node added with `raftctl member add` finds its cluster.

It asks the members at ENDPOINTS (Admin.MemberList) for the cluster's name, id, timings, bootstrap voters
and members' addresses, and keeps the answer in its new data directory (raftd.storage.DirRecord.joined):
a restart with the same flags needs no member to answer. As etcd's `--initial-cluster-state existing`,
but the node is told the cluster rather than given it on the command line, so it cannot be given wrongly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import grpc

from raftd.config import ClusterConfig, ConfigError, parse_endpoints
from raftd.node import node_addr
from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc
from raftd.pipe import details_of
from raftd.storage import SqliteStorage
from raftd.storage.sqlite import DB_NAME

ASK_TIMEOUT_S = 2.0
# How long the members are asked before the join gives up: a follower may not have applied the addition
# yet, and a cluster may be electing a leader.
JOIN_WAIT_S = 30.0


class JoinError(Exception):
    """The node cannot join; the message is one line for the user."""


def cluster_of(doc: dict[str, object], source: str) -> ClusterConfig:
    """The cluster map a joined node runs with, from what a member told it."""
    members = doc["members"]
    timing = doc["election_timeout_ms"]
    assert isinstance(members, list) and isinstance(timing, list)
    nodes = tuple(node_addr(int(i), str(a)) for i, a in members)
    return ClusterConfig(
        nodes=nodes,
        name=str(doc["cluster"]),
        election_timeout_ms=(int(timing[0]), int(timing[1])),
        heartbeat_interval_ms=int(str(doc["heartbeat_interval_ms"])),
        source=source,
        named=True,
        addresses_given=False,
    )


def prepare(data_dir: Path, node_id: int, endpoints: str) -> ClusterConfig:
    """The cluster node_id joins, recorded in data_dir on the first join, read back from it after."""
    source = f"--join {endpoints}"
    if (data_dir / DB_NAME).exists():
        with SqliteStorage.open(data_dir, "", node_id, name_given=False) as storage:
            joined = storage.record.joined
        if joined is not None:
            try:
                return cluster_of(joined, source)
            except (KeyError, ValueError, TypeError, AssertionError) as e:
                raise JoinError(f"{data_dir}: the cluster recorded at its join is unreadable ({e})") from None
        raise JoinError(
            f"{data_dir} belongs to a node that did not join with --join; start it with its --config"
        )
    try:
        addresses = parse_endpoints(endpoints)
    except ConfigError as e:
        raise JoinError(f"--join: {e}") from None
    answer = _ask(addresses, node_id)
    doc: dict[str, object] = {
        "cluster": answer.cluster,
        "members": [[m.id, m.address] for m in answer.members],
        "election_timeout_ms": [answer.election_timeout_min_ms, answer.election_timeout_max_ms],
        "heartbeat_interval_ms": answer.heartbeat_interval_ms,
    }
    cluster = cluster_of(doc, source)
    with SqliteStorage.open(data_dir, answer.cluster, node_id) as storage:
        record = dataclasses.replace(storage.record, voters=tuple(answer.bootstrap_voters), joined=doc)
        storage.save_record(record)
        if answer.cluster_id:
            storage.record_cluster_id(answer.cluster_id)
    return cluster


def _ask(addresses: tuple[str, ...], node_id: int) -> pb.MemberListResponse:
    """A member's answer that lists node_id; JoinError when none does within JOIN_WAIT_S."""
    deadline = time.monotonic() + JOIN_WAIT_S
    last = "no member answered"
    while True:
        for address in addresses:
            with grpc.insecure_channel(address) as channel:
                try:
                    answer = kv_pb2_grpc.AdminStub(channel).MemberList(
                        pb.MemberListRequest(), timeout=ASK_TIMEOUT_S
                    )
                except grpc.RpcError as e:
                    last = f"{address}: {details_of(e)}"
                    continue
            if any(m.id == node_id for m in answer.members):
                return answer
            last = f"{address}: node {node_id} is not a member; add it first (raftctl member add HOST:PORT)"
        if time.monotonic() >= deadline:
            raise JoinError(f"cannot join: {last}")
        time.sleep(0.5)
