"""Who may speak the peer protocol: callers from the members' addresses only (issue 19).

A cheap check until mutual TLS (the security issue) says who is calling: the source address of a peer call
must be one the members' hosts resolve to. Hosts in containers and pods come back with new addresses, so
names are looked up again when a caller is not among the known addresses; a lookup that hangs (a resolver
that does not answer for a name that left the network) must not hold up calls from the members that are
known, so lookups run one per host at a time, in the background, and a caller waits for them a bounded
while.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable

from raftd.settings import DEFAULTS, TUNING, Limits, Tuning

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# What the kernel picks as the source of a connection to a loopback address, unless the caller binds one.
LOOPBACK_SOURCES = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
Resolver = Callable[[str], Awaitable[list[str]]]


def caller_address(peer: str) -> Address | None:
    """The address in gRPC's peer string ("ipv4:10.0.0.1:5000", "ipv6:%5B::1%5D:5000"); an IPv4 caller
    of a dual-stack socket ("::ffff:10.0.0.1") as its IPv4 address; None for a Unix socket or garbage."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host = rest.rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return _plain(host)


def _plain(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # no zone index ("fe80::1%eth0")
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class MemberAddresses:
    """The addresses the members' hosts resolve to, kept per host: a failed lookup keeps the host's last
    addresses, so a resolver's hiccup does not shut a member out."""

    def __init__(
        self,
        hosts: Iterable[str],
        resolve: Resolver | None = None,
        limits: Limits = DEFAULTS,
        tuning: Tuning = TUNING,
    ) -> None:
        self._resolver = resolve or _getaddrinfo
        self._max_waiting = limits.max_peer_lookup_waiters
        self._tuning = tuning
        self._found: dict[str, frozenset[Address]] = {}
        self._names: list[str] = []
        self._lookups: dict[str, asyncio.Task[None]] = {}
        self._looked_up_at = -float("inf")
        self._waiting = 0  # callers held up in allows()
        self.set_hosts(hosts)

    def set_hosts(self, hosts: Iterable[str]) -> None:
        """The members changed: addresses of hosts that left are forgotten at once."""
        hosts = set(hosts)
        self._found = {h: a for h, a in self._found.items() if h in hosts}
        self._names = []
        for host in sorted(hosts):
            literal = _plain(host[1:-1] if host.startswith("[") else host)
            if literal is None:
                self._names.append(host)
            else:
                self._found[host] = frozenset({literal})  # an address needs no lookup
        self._looked_up_at = -float("inf")

    def known(self) -> frozenset[Address]:
        return frozenset().union(*self._found.values())

    async def allows(self, peer: str) -> bool:
        address = caller_address(peer)
        if address is None:
            return False
        loop = asyncio.get_running_loop()
        since = loop.time() - self._looked_up_at
        tuning = self._tuning
        if self._known(address):
            if since > tuning.peer_addresses_ttl_s:
                self._look_up(loop)  # in the background: a member is not kept waiting
            return True
        if since > tuning.peer_lookup_interval_s:
            self._look_up(loop)
        pending = [t for t in self._lookups.values() if not t.done()]
        if pending and self._waiting < self._max_waiting:  # more are refused at once (Limits)
            self._waiting += 1
            try:
                await asyncio.wait(pending, timeout=tuning.peer_lookup_wait_s)
            finally:
                self._waiting -= 1
        return self._known(address)

    def _known(self, address: Address) -> bool:
        """Among the members' addresses; or the loopback source address where a member's address is
        loopback: a host's own name may resolve to 127.0.1.1 (Debian's /etc/hosts), and connections to it
        come from 127.0.0.1. Only that one: a caller that binds 127.0.0.2 is still a stranger."""
        known = self.known()
        return address in known or (address in LOOPBACK_SOURCES and any(a.is_loopback for a in known))

    def close(self) -> None:
        for task in self._lookups.values():
            task.cancel()

    def _look_up(self, loop: asyncio.AbstractEventLoop) -> None:
        self._looked_up_at = loop.time()
        for host in self._names:
            running = self._lookups.get(host)
            if running is None or running.done():
                self._lookups[host] = loop.create_task(self._resolve(host))

    async def _resolve(self, host: str) -> None:
        try:
            found = [_plain(a) for a in await self._resolver(host)]
        except (OSError, UnicodeError):  # UnicodeError: a name that IDNA cannot encode
            return  # keep what this host resolved to before
        if host in self._names:
            self._found[host] = frozenset(a for a in found if a is not None)


async def _getaddrinfo(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]
