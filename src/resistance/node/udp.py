"""UDP ASSOCIATE: the relay Telegram calls go through.

Theory of operation
-------------------
The association binds one UDP socket on the address the client reached the
node at (so the client can reach it too, even on a multi-homed host) and
tells the client that address.  Datagrams on it are accepted only from the
client: its IP address (the control connection's peer), and its port when the
client named one, otherwise the first port it sends from.  Each datagram's
header is parsed, fragments are dropped (RFC 1928 lets a server not support
fragmentation), the destination goes through the egress policy, and the
payload leaves through an outbound socket of the destination's family.

Answers come back only from destinations the client has sent to, so the
association is never an open inbound port; they are wrapped with the header
naming their source and sent to the client.  Names in datagrams are
resolved once per association (one lookup at a time, datagrams to a name
still being resolved are dropped, as UDP allows) and cached.

The association ends with its TCP control connection, or when idle.  Every
wait is bounded: a fixed number of datagrams per readiness callback, a
bounded peer table, a bounded name cache.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

from resistance.errors import ProtocolError
from resistance.proto.socks5 import DOMAIN, Address, parse_udp_datagram, udp_header_for_ip

if TYPE_CHECKING:
    from resistance.node.host import Client, SessionHost
    from resistance.node.net import DatagramSocket

log = logging.getLogger("resistance.node")

MAX_DATAGRAM: Final = 65535
BATCH: Final = 64
MAX_PEERS: Final = 1024
MAX_NAMES: Final = 64


class UdpAssociation:
    __slots__ = (
        "bytes_down",
        "bytes_up",
        "client_addr",
        "client_ip",
        "client_port",
        "closed",
        "host",
        "idle",
        "names",
        "out4",
        "out6",
        "peers",
        "relay_sock",
        "resolving",
        "session",
    )

    def __init__(
        self, host: SessionHost, session: Client, client_ip: str, client_port: int, bind_ip: str
    ) -> None:
        self.host = host
        self.session = session
        self.client_ip = _plain_ip(client_ip)
        self.client_port = client_port
        self.client_addr: Any = None
        self.closed = False
        self.idle = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.peers: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.names: OrderedDict[str, str] = OrderedDict()
        self.resolving: asyncio.Task[None] | None = None
        self.out4: DatagramSocket | None = None
        self.out6: DatagramSocket | None = None
        family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
        sock = host.net.open_datagram(family, (bind_ip, 0))
        self.relay_sock = sock
        host.net.watch_readable(sock, self._on_client_readable)
        host.metrics.udp_associations.inc()
        host.udp_associations.add(self)

    def bound_address(self) -> Address:
        host, port = self.relay_sock.getsockname()[:2]
        return Address.from_ip(host, port)

    # -- client to destination -----------------------------------------------

    def _on_client_readable(self) -> None:
        sock = self.relay_sock
        counter = self.host.metrics.udp_datagrams
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except OSError:  # EAGAIN included: nothing more to read now
                return
            if not self._from_client(addr):
                counter.labels("up", "foreign-source").inc()
                continue
            self.idle = 0
            try:
                dgram = parse_udp_datagram(data)
            except ProtocolError:
                counter.labels("up", "malformed").inc()
                continue
            if dgram.fragment:
                counter.labels("up", "fragment").inc()
                continue
            address = dgram.address
            if address.type is DOMAIN:
                ip = self.names.get(address.host)
                if ip is None:
                    self._resolve(address.host)
                    counter.labels("up", "resolving").inc()
                    continue
            else:
                ip = address.host
            self._send_out(ip, address.port, dgram.payload)
            if self.closed:
                return

    def _from_client(self, addr: Any) -> bool:
        if _plain_ip(addr[0]) != self.client_ip:
            return False
        if self.client_addr is None:
            if self.client_port and addr[1] != self.client_port:
                return False
            self.client_addr = addr
            return True
        return bool(addr[1] == self.client_addr[1])

    def _send_out(self, ip: str, port: int, payload: bytes) -> None:
        counter = self.host.metrics.udp_datagrams
        verdict = self.host.policy.check(ip, port)
        if not verdict.allowed:
            counter.labels("up", "refused").inc()
            self.host.metrics.policy_refusals.labels(verdict.reason).inc()
            return
        ip = _plain_ip(ip)
        try:
            out = self._out_socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
            out.sendto(payload, (ip, port))
        except OSError:
            counter.labels("up", "send-error").inc()
            return
        key = (ip, port)
        peers = self.peers
        if key in peers:
            peers.move_to_end(key)
        else:
            peers[key] = None
            if len(peers) > MAX_PEERS:
                peers.popitem(last=False)
        self.bytes_up += len(payload)
        counter.labels("up", "relayed").inc()

    def _out_socket(self, family: int) -> DatagramSocket:
        sock = self.out6 if family == socket.AF_INET6 else self.out4
        if sock is None:
            net = self.host.net
            sock = net.open_datagram(family, ("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            if family == socket.AF_INET6:
                self.out6 = sock
            else:
                self.out4 = sock
            net.watch_readable(sock, self._on_remote_readable, sock)
        return sock

    def _resolve(self, name: str) -> None:
        if self.resolving is not None:
            return
        self.resolving = self.host.loop.create_task(
            self._lookup(name), name=f"udp-resolve-{id(self):x}"
        )

    async def _lookup(self, name: str) -> None:
        try:
            infos = await asyncio.wait_for(
                self.host.net.resolve(name, None, datagram=True), self.host.limits.dns_timeout
            )
        except (OSError, TimeoutError, UnicodeError):
            infos = []
        finally:
            self.resolving = None
        for family, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                self.names[name] = str(sockaddr[0])
                if len(self.names) > MAX_NAMES:
                    self.names.popitem(last=False)
                break

    # -- destination to client ---------------------------------------------------

    def _on_remote_readable(self, sock: DatagramSocket) -> None:
        counter = self.host.metrics.udp_datagrams
        client = self.client_addr
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except OSError:  # EAGAIN included: nothing more to read now
                return
            host = _plain_ip(addr[0])
            if client is None or (host, addr[1]) not in self.peers:
                counter.labels("down", "unsolicited").inc()
                continue
            self.idle = 0
            try:
                self.relay_sock.sendto(udp_header_for_ip(host, addr[1]) + data, client)
            except OSError:
                counter.labels("down", "send-error").inc()
                continue
            self.bytes_down += len(data)
            counter.labels("down", "relayed").inc()

    # -- teardown ------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        net = self.host.net
        if self.resolving is not None:
            self.resolving.cancel()
            self.resolving = None
        for sock in (self.relay_sock, self.out4, self.out6):
            if sock is not None:
                net.unwatch(sock)
                sock.close()
        self.host.metrics.udp_associations.dec()
        self.host.metrics.add_bytes(self.session.user, self.bytes_up, self.bytes_down)
        self.host.udp_associations.discard(self)


def _plain_ip(host: str) -> str:
    """An address as text without scope, with IPv4-mapped IPv6 shown as IPv4."""
    host = host.partition("%")[0]
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host
