"""Prometheus metrics of a node: counts and bytes, never addresses.

Each node builds its own registry (tests run several nodes in one process).
The relay's hot path does not touch these objects: connections count bytes
in plain integers and the node adds them here when a connection ends and on
every sweep.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Counter(
            "resist_node_connections", "Client connections accepted", registry=r
        )
        self.active = Gauge("resist_node_connections_active", "Client connections open", registry=r)
        self.rejected = Counter(
            "resist_node_connections_rejected",
            "Client connections closed at once by a limit",
            ["reason"],
            registry=r,
        )
        self.handshake_failures = Counter(
            "resist_node_handshake_failures",
            "SOCKS handshakes that failed before a request",
            ["reason"],
            registry=r,
        )
        self.auth_failures = Counter(
            "resist_node_auth_failures", "Failed RFC 1929 authentications", ["reason"], registry=r
        )
        self.requests = Counter(
            "resist_node_requests", "SOCKS requests by command", ["command"], registry=r
        )
        self.replies = Counter(
            "resist_node_replies", "SOCKS request replies by code", ["reply"], registry=r
        )
        self.policy_refusals = Counter(
            "resist_node_policy_refusals",
            "Destinations refused by the egress policy",
            ["reason"],
            registry=r,
        )
        self.bytes = Counter(
            "resist_node_bytes",
            "Bytes relayed (up: client to destination, down: back)",
            ["direction"],
            registry=r,
        )
        self.user_bytes = Counter(
            "resist_node_user_bytes", "Bytes relayed per user", ["user", "direction"], registry=r
        )
        self.udp_datagrams = Counter(
            "resist_node_udp_datagrams",
            "UDP datagrams relayed or dropped",
            ["direction", "outcome"],
            registry=r,
        )
        self.udp_associations = Gauge(
            "resist_node_udp_associations", "UDP associations open", registry=r
        )
        self._bytes_up = self.bytes.labels("up")
        self._bytes_down = self.bytes.labels("down")

    def add_bytes(self, user: str | None, up: int, down: int) -> None:
        if up:
            self._bytes_up.inc(up)
        if down:
            self._bytes_down.inc(down)
        if user is not None:
            if up:
                self.user_bytes.labels(user, "up").inc(up)
            if down:
                self.user_bytes.labels(user, "down").inc(down)
