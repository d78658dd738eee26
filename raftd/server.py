"""Assemble one raftd process: storage, the driver loop, and every gRPC service on the node's one port."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from raftd.api.common import Calls, Forwarder, LongCalls
from raftd.api.etcd import EtcdCluster, EtcdKV, EtcdMaintenance
from raftd.api.etcd_lease import EtcdLease, Lessor
from raftd.api.etcd_watch import EtcdWatch
from raftd.api.kv import AdminService, KVService
from raftd.api.malformed import RefusingMalformed
from raftd.api.seed import SeedService
from raftd.config import ClusterConfig
from raftd.core import Message, MsgType, Snapshot
from raftd.errors import Removed, TargetUnreachable
from raftd.events import NodeEvents
from raftd.grpcenv import pin_aio
from raftd.kv import ImageError, KVStore, mvcc, verify
from raftd.node import RaftNode
from raftd.pb import etcd_rpc_pb2_grpc, kv_pb2, kv_pb2_grpc, peer_pb2, peer_pb2_grpc, raft_pb2_grpc
from raftd.settings import DEFAULTS, Limits
from raftd.storage import SqliteStorage
from raftd.transport.codec import CodecError, message_from_pb
from raftd.transport.gate import MemberAddresses, caller_address
from raftd.transport.peer import CHANNEL_OPTIONS

log = logging.getLogger("raftd.server")

SERVICES = ("", "raftd.v1.KV", "raftd.v1.Admin", "RaftService")


class StartupError(Exception):
    """The node cannot start (port taken, ...); the message is for the user, one line."""


# Messages a follower passes on to the leader as they are: their sender field names the node that asked
# (a read's origin, a transfer's target), not the one that sent the batch.
_PASSED_ON = frozenset({MsgType.READ_INDEX, MsgType.TRANSFER_LEADER})


def sender_of(messages: list[Message]) -> int | None:
    """The core id of the node that sent a batch, None when its messages are all passed on. A batch's
    version, state hash and data directory are its sender's: taken as another node's, a follower passing
    on a peer's read was refused as a wiped node (found by the Jepsen run) and stopped."""
    return next((m.frm for m in messages if m.type not in _PASSED_ON), None)


class PeerService(peer_pb2_grpc.RaftPeerServicer):
    def __init__(self, node: RaftNode, check_callers: bool = True) -> None:
        self.node = node
        self.streams = LongCalls()
        self.refused: set[tuple[str, str]] = set()  # (name, id) pairs whose traffic was refused and logged
        self.max_snapshot_bytes = node.limits.max_snapshot_bytes
        self.max_refusals_logged = node.tuning.max_refusals_logged
        self.members = (
            MemberAddresses((n.host for n in node.cluster.nodes), None, node.limits, node.tuning)
            if check_callers
            else None
        )
        self.strangers: set[str] = set()  # callers refused and logged

    async def _check_caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Before anything of the call is read: a stranger's bytes are not even parsed."""
        if self.members is None or await self.members.allows(context.peer()):
            return
        who = str(caller_address(context.peer()) or context.peer())
        if who not in self.strangers and len(self.strangers) < self.max_refusals_logged:
            self.strangers.add(who)
            log.warning("Refused peer traffic from %s: not an address of a member (--peer-check)", who)
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"peer traffic from {who} refused: not an address of a member of this cluster",
        )

    def close(self) -> None:
        self.streams.close()
        if self.members is not None:
            self.members.close()

    def _log_refusal(self, who: str, refusal: str) -> None:
        """Once per sender and reason: a refused node stops, but one that does not (an earlier release)
        retries every second."""
        if (who, refusal) not in self.refused and len(self.refused) < self.max_refusals_logged:
            self.refused.add((who, refusal))
            log.warning("Refused peer traffic from %s: %s", who, refusal)

    async def _check_cluster(
        self, name: str, cluster_id: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        refusal = self.node.identity.refuses(name, cluster_id)
        if refusal is None:
            return
        if (name, cluster_id) not in self.refused:
            # Once per foreign cluster: its nodes retry every second.
            if len(self.refused) < self.max_refusals_logged:
                self.refused.add((name, cluster_id))
            log.warning("Refused peer traffic from %s: %s", context.peer(), refusal)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)

    async def Stream(
        self, requests: AsyncIterator[peer_pb2.MessageBatch], context: grpc.aio.ServicerContext[Any, Any]
    ) -> peer_pb2.StepResponse:
        async with self.streams.track():
            await self._check_caller(context)
            async for batch in requests:
                await self._check_cluster(batch.cluster, batch.cluster_id, context)
                try:
                    messages = [message_from_pb(m) for m in batch.messages]
                except CodecError as e:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                sender = sender_of(messages)
                if sender is not None:
                    refusal = self.node.peer_refusal(sender, batch.incarnation)
                    if refusal is not None:
                        self._log_refusal(f"node {sender - 1}", refusal)
                        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
                    if batch.version:
                        self.node.peer_speaks(sender, batch.version)
                    if batch.hash_index:
                        self.node.peer_state_hash(sender, batch.hash_index, batch.state_hash)
                self.node.deliver(messages)
        return peer_pb2.StepResponse()

    async def InstallSnapshot(
        self, chunks: AsyncIterator[peer_pb2.SnapshotChunk], context: grpc.aio.ServicerContext[Any, Any]
    ) -> peer_pb2.StepResponse:
        """Gather the image, then hand the whole SNAP message to the node; a partial one is dropped."""
        async with self.streams.track():
            await self._check_caller(context)
            header: peer_pb2.Message | None = None
            total = 0
            sender_id = ""
            # BytesIO rather than a bytearray: getvalue() hands over its buffer, where bytes(bytearray)
            # would hold the whole image twice (measured: 43 MB peak for a 40 MB image, not 83).
            data = io.BytesIO()
            async for chunk in chunks:
                if header is None:
                    await self._check_cluster(chunk.cluster, chunk.cluster_id, context)
                    header, total, sender_id = chunk.header, chunk.total_size, chunk.cluster_id
                    if total > self.max_snapshot_bytes:
                        await context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"a snapshot of {total} bytes announced; this node takes at most "
                            f"{self.max_snapshot_bytes} (--max-snapshot-bytes)",
                        )
                data.write(chunk.data)
                if data.tell() > total:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "snapshot larger than announced")
            if header is None or data.tell() != total:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"snapshot incomplete: {data.tell()}/{total}"
                )
            try:
                m = message_from_pb(header)
            except CodecError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            if m.type is not MsgType.SNAP or m.snapshot is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "InstallSnapshot carries a SNAP message"
                )
            image = data.getvalue()
            try:
                verify(image)
            except ImageError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"snapshot refused: {e}")
            self.node.deliver_snapshot(
                dataclasses.replace(m, snapshot=Snapshot(m.snapshot.meta, image)), sender_id
            )
        return peer_pb2.StepResponse()


class _Health(NodeEvents):
    """SERVING while the node is in the cluster and knows a leader; NOT_SERVING otherwise."""

    def __init__(self, node: RaftNode, servicer: Any) -> None:
        self.node = node
        self.servicer = servicer
        self.last: int | None = None
        self.pending: set[asyncio.Future[None]] = set()

    def changed(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.node.leader() is not None
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if self.last != status:
            self.last = status
            for name in SERVICES:
                task = asyncio.ensure_future(self.servicer.set(name, status))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)


async def serve(
    cluster: ClusterConfig,
    node_id: int,
    data_dir: Path,
    listen: str | None = None,
    limits: Limits = DEFAULTS,
    check_peers: bool = True,
    auto_promote: bool = False,
) -> None:
    """Run until SIGTERM/SIGINT; raises StartupError, StorageError, FatalError or Removed for the caller
    to report.

    check_peers: take peer calls from the members' addresses only (raftd.transport.gate). auto_promote:
    a learner asks the leader to make it a voter once it has caught up.
    """
    pin_aio()
    me = cluster.node(node_id)
    storage = SqliteStorage.open(data_dir, cluster.name, node_id, name_given=cluster.named)
    try:
        if storage.record.removed:
            raise Removed()
        if storage.record.voters is None:
            # The membership the log starts from, for good: the map may be edited after changes.
            voters = tuple(n.id for n in cluster.nodes)
            storage.save_record(dataclasses.replace(storage.record, voters=voters))
        if storage.cluster_name != cluster.name:
            log.info(
                "%s was created for cluster %r, when the map's addresses were others; it keeps that name",
                storage.path,
                storage.cluster_name,
            )
        # The keyspace lives in a file beside the log, rebuilt at every start (raftd.kv.mvcc.open_file).
        directory = storage.path.parent
        mvcc.remove_files(directory)
        node = RaftNode(
            cluster, node_id, storage, limits, state_machine=functools.partial(KVStore, directory)
        )
        # Without so_reuseport=0, gRPC on Linux lets a second process bind the same port silently.
        server = grpc.aio.server(options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)])
        peers = PeerService(node, check_peers)
        if peers.members is not None:
            node.on_addresses.append(peers.members.set_hosts)
        # Stands in for the server in the generated registrations (typed for a real server only).
        guarded: Any = RefusingMalformed(server)
        peer_pb2_grpc.add_RaftPeerServicer_to_server(peers, guarded)
        calls, forwarder = Calls(node), Forwarder(node)
        kv = KVService(node, calls, forwarder)
        kv_pb2_grpc.add_KVServicer_to_server(kv, guarded)
        kv_pb2_grpc.add_AdminServicer_to_server(AdminService(node), guarded)
        raft_pb2_grpc.add_RaftServiceServicer_to_server(SeedService(node, calls, forwarder), guarded)
        etcd_rpc_pb2_grpc.add_KVServicer_to_server(EtcdKV(node, calls), guarded)
        etcd_rpc_pb2_grpc.add_ClusterServicer_to_server(EtcdCluster(node), guarded)
        watch_service = EtcdWatch(node)
        etcd_rpc_pb2_grpc.add_WatchServicer_to_server(watch_service, guarded)
        lessor = Lessor(node)
        lease_service = EtcdLease(node, calls, lessor)
        etcd_rpc_pb2_grpc.add_LeaseServicer_to_server(lease_service, guarded)
        etcd_rpc_pb2_grpc.add_MaintenanceServicer_to_server(EtcdMaintenance(node), guarded)
        # grpc-stubs types grpc_health's threaded servicer only, not its asyncio one (health.aio).
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        bind = listen or me.address
        try:
            server.add_insecure_port(bind)
        except RuntimeError:
            raise StartupError(f"cannot listen on {bind}: the address is in use or not available") from None
        await server.start()
        log.info("The server starts at %s", me.address)
        watch = _Health(node, health_servicer)
        node.observers.append(watch)
        watch.changed()
        promoting = asyncio.get_running_loop().create_task(_auto_promote(node)) if auto_promote else None
        expiring = asyncio.get_running_loop().create_task(lessor.run())
        try:
            await _run_until_signal(node)
        finally:
            if promoting is not None:
                promoting.cancel()
            # Also when the node stops on a fatal error: a server left to the garbage collector after the
            # event loop closed prints a traceback ("Event loop is closed") under the one-line error.
            await forwarder.close()
            peers.close()
            kv.streams.close()
            watch_service.streams.close()
            lease_service.streams.close()
            expiring.cancel()
            await server.stop(grace=0.5)
            await _calls_finished(node.tuning.calls_finish_s)
    finally:
        storage.close()
    log.info("The server stops")


async def _auto_promote(node: RaftNode) -> None:
    """--auto-promote: while this node is a learner, ask the leader to promote it (refused while it is
    behind: then it asks again), as the Kubernetes deployment's new pods do. Nothing ends the asking but
    the promotion: an error it did not foresee is logged (once per kind) and the next round asks again,
    since a learner left behind for good by a dead task is what the flag exists to prevent."""
    said: set[str] = set()
    while True:
        await asyncio.sleep(node.tuning.auto_promote_interval_s)
        try:
            if await _ask_promotion(node):
                log.info("Promoted to voter")
                return
        except grpc.aio.AioRpcError as e:
            log.debug("Promotion not yet: %s", e.details())
        except Exception as e:
            if type(e).__name__ not in said:
                said.add(type(e).__name__)
                log.warning("Asking for promotion failed (asking again): %r", e)


async def _ask_promotion(node: RaftNode) -> bool:
    """One round of --auto-promote: True once this node is a voter."""
    me = next((m for m in node.members() if m.id == node.me.id), None)
    if me is not None and not me.learner:
        return True
    leader = node.leader()
    if me is None or leader is None:
        return False
    try:
        stub = kv_pb2_grpc.AdminStub(node.channel_to(leader.id))
    except (KeyError, LookupError):
        return False  # no sender to it yet
    await stub.MemberPromote(kv_pb2.MemberPromoteRequest(id=node.me.id), timeout=5.0)
    return True


async def _calls_finished(timeout: float) -> None:
    """Wait for the tasks that ran gRPC's calls to end, after server.stop().

    stop() returns once the core has ended every call, but the task that ran one may still be waiting for
    the callback that says its last batch (the status) is done. asyncio.run would then cancel it, and gRPC
    prints a traceback for each ("CancelledError" in _schedule_rpc_coro): seen at one stop in three in the
    test suite, on the peer and client streams. By now the node's own tasks have ended, so what is left is
    gRPC's.
    """
    me = asyncio.current_task()
    others = {task for task in asyncio.all_tasks() if task is not me}
    if others:
        await asyncio.wait(others, timeout=timeout)


async def _run_until_signal(node: RaftNode) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = loop.create_task(node.run(), name="raft-loop")
    stopper = loop.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        stopper.cancel()
        await node.stop()
        runner.result()  # re-raises the loop's fatal error
        return
    await _hand_over(node)
    await node.stop()
    await runner


async def _hand_over(node: RaftNode) -> None:
    """A leader that is told to stop passes leadership on first, so the cluster does not wait a timeout."""
    if not node.is_leader():
        return
    target = node.best_transfer_target()
    if target is None:
        return
    log.info("Handing leadership to node %d before stopping", target)
    wait = node.tuning.shutdown_transfer_s
    try:
        await asyncio.wait_for(node.transfer_leader(target), wait)
    except TimeoutError:
        log.info("Leadership hand-over did not finish within %.1fs", wait)
    except TargetUnreachable as e:
        # Routine when the whole cluster stops at once: not a failure worth alarming anyone about.
        log.info("Hand-over skipped: node %d unreachable (the cluster may be stopping)", e.target)
    except Exception as e:
        log.info("Leadership hand-over failed: %s", e)
