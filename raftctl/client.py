"""A leader-following client for raftd, for programs as well as for the raftctl command.

A cluster answers from any node (followers forward writes to the leader), but nodes die, get suspended and
lose elections, so every request here is retried within one overall timeout: first at the leader a node
named (GetLeader, or "not the leader; try HOST:PORT" in an error), then at the other endpoints, sleeping a
capped exponential backoff between failures. Writes carry an exactly-once id (client_id, seq) that stays
the same on every retry of one write, so a write that reached the leader before its answer was lost
applies once.

This module knows nothing of Click or terminals; errors are the exception classes below.
"""

from __future__ import annotations

import dataclasses
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftd.pb import kv_pb2 as pb
from raftd.pb import kv_pb2_grpc
from raftd.pipe import (
    LEADER_KEY,
    NOT_APPLIED,
    OUTCOME_KEY,
    RequestError,
    details_of,
    never_connected,
    trailer,
)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0
# An election takes 200-400 ms with the default timeouts: backing off beyond a tenth of a second would add
# more to a failover than the election itself (a 1 s cap made windows of ~780 ms after a ~200 ms election).
# A leaderless node answers at once, so polling it a few times a second costs little.
BACKOFF_MIN_S = 0.025
BACKOFF_MAX_S = 0.1
# One attempt may use at most this share of the overall timeout (but at least ATTEMPT_MIN_S), so a node
# that accepts connections but never answers (SIGSTOPped, partitioned) leaves time to try the others.
ATTEMPT_SHARE = 0.5
ATTEMPT_MIN_S = 1.0
# Reconnect quickly: a node that restarts should be found again within one backoff step.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_HINT_RE = re.compile(r"not the leader; try (\S+)")


class ClientError(Exception):
    """Base of every error the client raises; str() is one line, ready to show to a user."""


class NotFound(ClientError):
    """The key is absent."""


class Unavailable(ClientError):
    """No node could serve the request within the timeout (no leader, all unreachable, suspended)."""


class OutcomeUnknown(ClientError):
    """A write whose outcome stayed unknown after its retries: it may have applied, or may still apply.
    Not a failure: read the key to find out (a retry with the same session would apply at most once)."""


class SessionExpired(OutcomeUnknown):
    """A write refused because the cluster no longer holds its exactly-once session (it evicted the least
    recently used, raftd --max-sessions) and an earlier attempt of it may have applied: applying it again
    could apply it twice. This attempt never applies; the client starts a new session for later writes."""


class InvalidArgument(ClientError):
    """The server refused the request as invalid (empty or oversized key, bad period, unknown node id)."""


class ServerError(ClientError):
    """The server failed the request with a status other than the ones above."""


@dataclass
class WriteSession:
    """One exactly-once session as a client keeps it: its id, the last number it gave a write, and whether
    the cluster may hold it. A write says it is the session's first (WriteSession.first, on each of its
    attempts) when no earlier write of the session may have applied, so a later write on a session the
    cluster evicted is refused rather than mistaken for a new session's."""

    client_id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(16))
    seq: int = 0
    live: bool = False  # a write of this session may have applied

    def number(self, into: pb.WriteSession) -> None:
        """Give the next write its (client_id, seq), kept on every retry of that write."""
        self.seq += 1
        into.client_id = self.client_id
        into.seq = self.seq

    def renew(self) -> None:
        """A new session after the cluster forgot this one: writes through it would all be refused."""
        self.client_id, self.seq, self.live = secrets.token_hex(16), 0, False


@dataclass(frozen=True)
class Leader:
    id: int
    address: str
    term: int


@dataclass(frozen=True)
class NodeStatus:
    """One node's own view; reachable=False rows keep only the endpoint and the error."""

    endpoint: str
    reachable: bool
    id: int | None = None
    address: str = ""
    role: str = ""
    term: int | None = None
    leader_id: int | None = None  # None when the node knows no leader
    commit_index: int | None = None
    applied_index: int | None = None
    last_log_index: int | None = None
    suspended: bool = False
    health: str = ""  # SERVING / NOT_SERVING / UNKNOWN / "" when not asked or not answered
    error: str = ""
    cluster: str = ""
    cluster_id: str = ""  # "" until the node has applied it
    alarms: tuple[str, ...] = ()  # raised by the node, e.g. "CORRUPT: ..." (docs/operations.md)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _encode(what: str, text: str) -> bytes:
    """Text that cannot be UTF-8 (lone surrogates from undecodable argv bytes) never leaves the client."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid UTF-8") from None


class _Routing:
    """Leader following as bookkeeping only, no I/O: shared by Client and raftctl.aio.AsyncClient.

    The state that outlives a call (the leader last heard, the next endpoint to ask); one call's attempts
    are _Attempts.
    """

    def __init__(self, endpoints: list[str], timeout: float, pin: bool) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.pin = pin
        self._leader: str | None = None  # the leader's address as last heard; a hint, not a fact
        self._next = 0  # index into endpoints of the one to try when no leader is known

    def _known_target(self, failed: set[str]) -> str | None:
        """The pinned node or the known leader; None when an endpoint must be asked first."""
        if self.pin:
            return self.endpoints[0]
        if self._leader is not None and self._leader not in failed:
            return self._leader
        return None

    def _adopt_leader(self, endpoint: str, response: pb.GetLeaderResponse | None, failed: set[str]) -> str:
        """Where to go after asking endpoint (response None: it did not answer; the request will say why)."""
        if response is not None and response.leader_id >= 0 and response.address not in failed:
            self._leader = response.address
            return response.address
        return endpoint

    def _heard_leader(self, response: pb.GetLeaderResponse) -> Leader | None:
        """A GetLeader answer for get_leader(): the leader, remembered unless pinned; None if none known."""
        if response.leader_id < 0:
            return None
        if not self.pin:
            self._leader = response.address
        return Leader(response.leader_id, response.address, response.term)

    def _endpoint_to_ask(self, failed: set[str]) -> str:
        """The next endpoint that has not failed during this call (when all have: simply the next one).

        After the leader dies, asking it again who leads would only cost another backoff round.
        """
        n = len(self.endpoints)
        for k in range(n):
            i = (self._next + k) % n
            if self.endpoints[i] not in failed:
                self._next = i
                break
        return self.endpoints[self._next]

    def _skip_endpoint(self) -> None:
        """Ask the next endpoint next time (never when pinned)."""
        if not self.pin:
            self._next = (self._next + 1) % len(self.endpoints)

    def _note_failure(self, target: str, e: grpc.RpcError, failed: set[str]) -> bool:
        """Record a retryable failure at target; True when an error named a fresh leader to try at once."""
        failed.add(target)  # addresses that failed during this call: their hints are not followed
        hint = None if self.pin else leader_hint(e)
        if target == self._leader:
            self._leader = None
        elif not self.pin and target == self.endpoints[self._next]:
            self._next = (self._next + 1) % len(self.endpoints)
        if hint is not None and hint not in failed:
            self._leader = hint
            return True
        return False

    def _give_up_if_nothing_listens(
        self, what: str, target: str, details: str, dead: dict[str, str], maybe_applied: bool = False
    ) -> None:
        """Remember an endpoint that refused the connection or whose name does not resolve; once every
        endpoint has, fail at once rather than at the timeout, as docker and etcdctl do. A node that is
        merely slow or down in some other way keeps the client waiting: it may yet answer."""
        reason = _dead_end(target, details)
        if reason is None:
            dead.pop(target, None)
            return
        dead[target] = reason
        if all(endpoint in dead for endpoint in self.endpoints):
            reasons = "; ".join(f"{endpoint}: {dead[endpoint]}" for endpoint in self.endpoints)
            raise self._gave_up(what, f"no node answers ({reasons})", maybe_applied, waited=False)

    def _attempt_timeout(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        return max(0.001, min(remaining, max(ATTEMPT_MIN_S, self.timeout * ATTEMPT_SHARE)))

    def _pause(
        self, backoff: float, deadline: float, what: str, last_error: str, maybe_applied: bool = False
    ) -> float:
        """How long to sleep before the next attempt; Unavailable when no time is left.

        Between half and all of backoff, at random: requests that failed together (a batch on a broken
        stream) would otherwise retry in lock step, all asking the same dead node at the same moment.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._gave_up(what, last_error, maybe_applied)
        return min(backoff * random.uniform(0.5, 1.0), remaining)

    def _gave_up(
        self, what: str, last_error: str, maybe_applied: bool = False, *, waited: bool = True
    ) -> ClientError:
        within = f" within {self.timeout:g}s" if waited else ""
        if maybe_applied:
            return OutcomeUnknown(
                f"{what}: no definite answer{within}, the write may have applied; last error: {last_error}"
            )
        if not waited:
            return Unavailable(f"{what}: {last_error}")
        return Unavailable(f"{what}: no answer{within}; last error: {last_error}")

    @staticmethod
    def _raise_unless_retryable(e: grpc.RpcError, what: str = "", maybe_applied: bool = False) -> None:
        """Raise the error a failure that no retry can mend ends in; a write that may have applied by now
        (maybe_applied: this or an earlier attempt) ends in OutcomeUnknown, never in a failure."""
        code = e.code()
        if code in RETRYABLE:
            return
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidArgument(details_of(e)) from None
        if maybe_applied:
            raise OutcomeUnknown(
                f"{what}: {code.name}: {details_of(e)}; the write may have applied"
            ) from None
        raise ServerError(f"{code.name}: {details_of(e)}") from None


class _Attempts:
    """One call's attempts, decided without I/O (h11's style): Client and raftctl.aio.AsyncClient each drive
    it with their own calls and sleeps, so the rules of retrying exist once.

    A call's loop: target() (None: ask ask_endpoint() who leads, within ask_timeout(), and go where
    asked() says); the call, within timeout(); on a failure, failed() gives the seconds to wait (0: a fresh
    leader was named, go at once) or raises the error the call ends in; after a wait, waited(). A leader
    query's loop (get_leader) asks query_target() and reports query_failed() or no_leader_named().
    """

    def __init__(
        self,
        routing: _Routing,
        what: str,
        *,
        last_error: str = "",
        session: tuple[WriteSession, pb.WriteSession] | None = None,
    ) -> None:
        self.routing = routing
        self.what = what
        self.session = session  # a write's session, and the request's copy of it; None for a read
        self.write = session is not None
        # Fixed for all of the write's attempts: an attempt whose outcome is unknown may never have reached
        # the log (a paused node), and a retry that said "not first" would then be refused.
        self.first = session is not None and not session[0].live
        self.deadline = time.monotonic() + routing.timeout
        self.backoff = BACKOFF_MIN_S
        self.last_error = last_error
        self.failed_at: set[str] = (
            set()
        )  # addresses that failed during this call: their hints are not followed
        self.dead: dict[str, str] = {}  # endpoints that refused the connection or do not resolve
        self.maybe_applied = False  # a write attempt that may have applied: the call never ends in a refusal

    def target(self) -> str | None:
        return self.routing._known_target(self.failed_at)

    def ask_endpoint(self) -> str:
        return self.routing._endpoint_to_ask(self.failed_at)

    def ask_timeout(self) -> float:
        return min(self.timeout(), ATTEMPT_MIN_S)

    def asked(self, endpoint: str, response: pb.GetLeaderResponse | None) -> str:
        """Where the attempt goes after asking endpoint (None: it did not answer)."""
        return self.routing._adopt_leader(endpoint, response, self.failed_at)

    def timeout(self) -> float:
        return self.routing._attempt_timeout(self.deadline)

    def attempt(self) -> None:
        """Before each attempt: a write says whether it is its session's first (WriteSession.first)."""
        if self.session is not None:
            self.session[1].first = self.first

    def succeeded(self) -> None:
        if self.session is not None:
            self.session[0].live = True

    def failed(self, target: str, e: grpc.RpcError) -> float:
        r = self.routing
        if self.write and may_have_applied(e):
            self.maybe_applied = True
            if self.session is not None:
                self.session[0].live = True
        if self.write and e.code() == grpc.StatusCode.FAILED_PRECONDITION:
            if self.session is not None:
                self.session[0].renew()
            raise SessionExpired(f"{self.what}: {details_of(e)}") from None
        r._raise_unless_retryable(e, self.what, self.maybe_applied)
        details = details_of(e)
        self.last_error = f"{target}: {details}"
        r._give_up_if_nothing_listens(self.what, target, details, self.dead, self.maybe_applied)
        if r._note_failure(target, e, self.failed_at):
            return 0.0
        return self.pause()

    def query_target(self) -> str:
        r = self.routing
        return r.endpoints[0] if r.pin else r.endpoints[r._next]

    def query_failed(self, target: str, e: grpc.RpcError) -> float:
        r = self.routing
        r._raise_unless_retryable(e)
        details = details_of(e)
        self.last_error = f"{target}: {details}"
        r._give_up_if_nothing_listens(self.what, target, details, self.dead)
        r._skip_endpoint()
        return self.pause()

    def no_leader_named(self, target: str) -> float:
        self.last_error = f"{target}: no leader known"
        self.routing._skip_endpoint()
        return self.pause()

    def pause(self) -> float:
        return self.routing._pause(
            self.backoff, self.deadline, self.what, self.last_error, self.maybe_applied
        )

    def waited(self) -> None:
        """After a pause: the call ends when its time is up, else the next pause is longer."""
        if time.monotonic() >= self.deadline:
            raise self.routing._gave_up(self.what, self.last_error, self.maybe_applied)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)


class Channels:
    """One long-lived channel per address: its connection survives between requests (both clients)."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.Channel] = {}

    def get(self, endpoint: str) -> grpc.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
            self._channels[endpoint] = channel
        return channel

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


class Client(_Routing):
    """Talks to a raftd cluster through the given endpoints ("host:port").

    pin=True sends every request to endpoints[0] only (the shell's `connect`, like the original client,
    which talks to the connected node; that node forwards writes to the leader itself). Failures there are
    still retried until the timeout, since a node in an election or just back from a suspension recovers.
    """

    def __init__(
        self, endpoints: list[str], timeout: float = DEFAULT_TIMEOUT_S, *, pin: bool = False
    ) -> None:
        super().__init__(endpoints, timeout, pin)
        self.session = WriteSession()
        self.channels = Channels()

    # -- lifecycle ----------------------------------------------------------------------------------
    def close(self) -> None:
        self.channels.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _channel(self, endpoint: str) -> grpc.Channel:
        """A method, not the pool's own: a subclass may dial another address (the container tests')."""
        return self.channels.get(endpoint)

    # -- KV -----------------------------------------------------------------------------------------
    def put(self, key: str, value: str) -> int:
        """Store value under key; returns the log index at which it applied."""
        request = pb.PutRequest(key=_encode("the key", key), value=_encode("the value", value))
        self.session.number(request.session)
        response = self._call(
            "setval",
            lambda ch, t: kv_pb2_grpc.KVStub(ch).Put(request, timeout=t),
            session=(self.session, request.session),
        )
        return response.index

    def get(self, key: str, linearizable: bool = True) -> str:
        """The value under key; NotFound when absent. linearizable=False may be stale but needs no quorum."""
        request = pb.GetRequest(key=_encode("the key", key), local=not linearizable)
        response = self._call("getval", lambda ch, t: kv_pb2_grpc.KVStub(ch).Get(request, timeout=t))
        if not response.found:
            raise NotFound(f"key {key!r} not found")
        return response.value.decode("utf-8", errors="backslashreplace")

    def delete(self, key: str) -> bool:
        """Remove key; False when it was already absent."""
        request = pb.DeleteRequest(key=_encode("the key", key))
        self.session.number(request.session)
        response = self._call(
            "delete",
            lambda ch, t: kv_pb2_grpc.KVStub(ch).Delete(request, timeout=t),
            session=(self.session, request.session),
        )
        return response.deleted

    # -- admin --------------------------------------------------------------------------------------
    def get_leader(self) -> Leader:
        """The leader as a node names it; retried (also at other nodes) until one is known."""
        attempts = _Attempts(self, "getleader", last_error="no node named a leader")
        while True:
            target = attempts.query_target()
            try:
                response = self._ask_leader(target, attempts.timeout())
            except grpc.RpcError as e:
                pause = attempts.query_failed(target, e)
            else:
                leader = self._heard_leader(response)
                if leader is not None:
                    return leader
                pause = attempts.no_leader_named(target)
            time.sleep(pause)
            attempts.waited()

    def transfer_leader(self, node_id: int) -> Leader:
        """Make node_id the leader; returns the leader once the transfer completed, as the node that did
        the transfer knew it then (the address is empty from a node older than that field)."""
        request = pb.TransferLeaderRequest(target_id=node_id)
        response = self._call(
            "transfer-leader", lambda ch, t: kv_pb2_grpc.AdminStub(ch).TransferLeader(request, timeout=t)
        )
        return Leader(response.leader_id, response.address, response.term)

    # -- membership ---------------------------------------------------------------------------------
    def member_list(self) -> pb.MemberListResponse:
        """The membership, as the leader has it (with each member's match index)."""
        return self._call(
            "member list",
            lambda ch, t: kv_pb2_grpc.AdminStub(ch).MemberList(pb.MemberListRequest(), timeout=t),
        )

    def member_add(self, address: str, node_id: int | None = None) -> pb.MemberChangeResponse:
        """Add a learner at address (HOST:PORT), under node_id or the lowest id never given; the answer
        names the id the cluster gave it."""
        request = pb.MemberAddRequest(address=address, id=node_id)
        return self._change(
            "member add", lambda ch, t: kv_pb2_grpc.AdminStub(ch).MemberAdd(request, timeout=t)
        )

    def member_promote(self, node_id: int) -> pb.MemberChangeResponse:
        request = pb.MemberPromoteRequest(id=node_id)
        return self._change(
            "member promote", lambda ch, t: kv_pb2_grpc.AdminStub(ch).MemberPromote(request, timeout=t)
        )

    def member_remove(self, node_id: int) -> pb.MemberChangeResponse:
        request = pb.MemberRemoveRequest(id=node_id)
        return self._change(
            "member remove", lambda ch, t: kv_pb2_grpc.AdminStub(ch).MemberRemove(request, timeout=t)
        )

    def member_update(self, node_id: int, address: str) -> pb.MemberChangeResponse:
        request = pb.MemberUpdateRequest(id=node_id, address=address)
        return self._change(
            "member update", lambda ch, t: kv_pb2_grpc.AdminStub(ch).MemberUpdate(request, timeout=t)
        )

    def _change(
        self, what: str, rpc: Callable[[grpc.Channel, float], pb.MemberChangeResponse]
    ) -> pb.MemberChangeResponse:
        """A membership change has no session to make a retry apply once (a second add would add a second
        learner): it is retried only while refused, and an attempt that may have applied ends the call."""

        def once(channel: grpc.Channel, timeout: float) -> pb.MemberChangeResponse:
            try:
                return rpc(channel, timeout)
            except grpc.RpcError as e:
                details = details_of(e)
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidArgument(f"{what}: {details}") from None
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise ServerError(f"{what}: {details}") from None
                if may_have_applied(e):
                    suffix = "" if "may have applied" in details else "; the change may have applied"
                    raise OutcomeUnknown(f"{what}: {details}{suffix}") from None
                raise

        return self._call(what, once)

    def backup(self) -> bytes:
        """A backup file's bytes: the whole store as of a linearizable read point, taken on the leader."""

        def fetch(channel: grpc.Channel, timeout: float) -> bytes:
            stream = kv_pb2_grpc.AdminStub(channel).Backup(pb.BackupRequest(), timeout=timeout)
            return b"".join(chunk.data for chunk in stream)

        return self._call("snapshot save", fetch)

    def suspend(self, period: int, endpoint: str | None = None) -> None:
        """Suspend one node for period seconds: endpoint, else the first endpoint (the connected node).

        Never retried elsewhere: suspending some other node than the one meant would be wrong.
        """
        target = endpoint or self.endpoints[0]
        request = pb.SuspendRequest(period=period)
        try:
            kv_pb2_grpc.AdminStub(self._channel(target)).Suspend(request, timeout=self.timeout)
        except grpc.RpcError as e:
            self._raise_unless_retryable(e)
            raise Unavailable(f"cannot suspend {target}: {details_of(e)}") from None

    def status(self, endpoint: str) -> NodeStatus:
        """One node's view and health; an unreachable node gives a row with reachable=False."""
        return self._status_rows([endpoint])[0]

    def status_all(self) -> list[NodeStatus]:
        """Every endpoint's status, asked in parallel, in endpoint order; then every other member the
        cluster lists (a node that joined after the endpoints were written down), at its address."""
        rows = self._status_rows(self.endpoints)
        others = self._other_members(rows)
        extra = self._status_rows([m.address for m in others]) if others else []
        return rows + [
            r if r.reachable else dataclasses.replace(r, id=m.id) for r, m in zip(extra, others, strict=True)
        ]

    def _other_members(self, rows: list[NodeStatus]) -> list[pb.Member]:
        """The members that joined and that no row answered for, as the first node that lists them says:
        one attempt per node, so that a cluster that is down costs no more than its status rows did."""
        seen = {r.id for r in rows if r.reachable}
        for r in rows:
            if not r.reachable:
                continue
            try:
                listed = kv_pb2_grpc.AdminStub(self._channel(r.endpoint)).MemberList(
                    pb.MemberListRequest(), timeout=self.timeout
                )
            except grpc.RpcError:
                continue  # joining, removed, or older than membership changes
            # Bootstrap voters are the map's nodes, which the endpoints name (a down one is a row already,
            # under the address the endpoints give it, which may not be its address in the cluster).
            known = seen | set(listed.bootstrap_voters)
            return [m for m in listed.members if m.id not in known and m.address not in self.endpoints]
        return []

    def _status_rows(self, endpoints: list[str]) -> list[NodeStatus]:
        calls = []
        for ep in endpoints:
            channel = self._channel(ep)
            status = kv_pb2_grpc.AdminStub(channel).Status.future(pb.StatusRequest(), timeout=self.timeout)
            health = health_pb2_grpc.HealthStub(channel).Check.future(
                health_pb2.HealthCheckRequest(service=""), timeout=self.timeout
            )
            calls.append((ep, status, health))
        rows = []
        for ep, status_call, health_call in calls:
            # Both calls are always waited for, never cancelled: a cancelled call's completion is still
            # handled later on gRPC's daemon thread under the call's lock, and an exit in that window froze
            # the thread holding the lock, hanging the interpreter's final collection (seen under load).
            health_call.exception()
            try:
                st: pb.StatusResponse = status_call.result()
            except grpc.RpcError as e:
                rows.append(NodeStatus(endpoint=ep, reachable=False, error=details_of(e)))
                continue
            try:
                health = health_pb2.HealthCheckResponse.ServingStatus.Name(health_call.result().status)
            except grpc.RpcError as e:
                health = "UNKNOWN" if e.code() != grpc.StatusCode.UNIMPLEMENTED else ""
            rows.append(
                NodeStatus(
                    endpoint=ep,
                    reachable=True,
                    id=st.id,
                    address=st.address,
                    role=st.role,
                    term=st.term,
                    leader_id=st.leader_id if st.leader_id >= 0 else None,
                    commit_index=st.commit_index,
                    applied_index=st.applied_index,
                    last_log_index=st.last_log_index,
                    suspended=st.suspended,
                    health=health,
                    cluster=st.cluster,
                    cluster_id=st.cluster_id,
                    alarms=tuple(st.alarms),
                )
            )
        return rows

    # -- the retry loop -----------------------------------------------------------------------------
    def _call(
        self,
        what: str,
        rpc: Callable[[grpc.Channel, float], T],
        *,
        session: tuple[WriteSession, pb.WriteSession] | None = None,
    ) -> T:
        """rpc(channel, timeout) at the leader or, failing that, at the endpoints in turn, until timeout.

        `rpc` must be safe to repeat: reads and admin calls are, writes (those with a session) are because
        their request carries one (client_id, seq) for all attempts.
        """
        attempts = _Attempts(self, what, session=session)
        while True:
            target = attempts.target()
            if target is None:
                endpoint = attempts.ask_endpoint()
                try:
                    response: pb.GetLeaderResponse | None = self._ask_leader(endpoint, attempts.ask_timeout())
                except grpc.RpcError:
                    response = None
                target = attempts.asked(endpoint, response)
            attempts.attempt()
            try:
                answer = rpc(self._channel(target), attempts.timeout())
            except grpc.RpcError as e:
                pause = attempts.failed(target, e)
            else:
                attempts.succeeded()
                return answer
            if pause:  # else a fresh lead: follow it at once
                time.sleep(pause)
                attempts.waited()

    def _ask_leader(self, endpoint: str, timeout: float) -> pb.GetLeaderResponse:
        return kv_pb2_grpc.AdminStub(self._channel(endpoint)).GetLeader(
            pb.GetLeaderRequest(), timeout=timeout
        )


def outcome_of(e: grpc.RpcError) -> str | None:
    """What a node said of a failed write ("not-applied" / "unknown"), None when it said nothing."""
    if isinstance(e, RequestError):
        return e.outcome
    return trailer(e, OUTCOME_KEY)


def leader_hint(e: grpc.RpcError) -> str | None:
    """The leader's HOST:PORT a node named when it refused for not leading: from the trailer (or a stream
    answer's Error.leader), else, from a node older than those, from its message."""
    named = e.leader if isinstance(e, RequestError) else trailer(e, LEADER_KEY)
    return named or _hint(details_of(e))


def may_have_applied(e: grpc.RpcError) -> bool:
    """Whether a failed write attempt may have applied. A node says so (outcome_of); without its word (an
    older node, a call that broke), only a call that never left (no connection) or a refusal that names
    the leader or says there is none is taken as not applied."""
    outcome = outcome_of(e)
    if outcome is not None:
        return outcome != NOT_APPLIED
    if e.code() != grpc.StatusCode.UNAVAILABLE:
        return True
    details = details_of(e)
    refused = leader_hint(e) is not None or details.startswith("no leader known")
    return not (refused or never_connected(details))


def _dead_end(target: str, details: str) -> str | None:
    """Why gRPC could not even connect to target, when no waiting will help: refused, or no such host."""
    lowered = details.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "dns resolution failed" in lowered or "errors resolving" in lowered:
        return f"cannot resolve {target.rsplit(':', 1)[0]}"
    return None


def _hint(details: str) -> str | None:
    m = _HINT_RE.search(details)
    return m.group(1) if m else None
