"""Prometheus metrics of the VPN, by peer name only.

Labels are the names the operator gave peers; public keys and tunnel
addresses are never exported.  The ``serve`` loop refreshes a snapshot each
round and a scrape reads the snapshot, so a scrape never runs ``wg``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from resistance.vpn.server import PeerView


class VpnMetrics(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: list[PeerView] = []
        self._taken = 0.0
        self._enforced = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def update(self, views: Sequence[PeerView], *, disabled_now: int = 0) -> None:
        with self._lock:
            self._views = list(views)
            self._taken = time.time()
            self._enforced += disabled_now

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            views, taken, enforced = self._views, self._taken, self._enforced
        traffic = CounterMetricFamily(
            "resist_vpn_peer_bytes",
            "Bytes through the tunnel per peer (up: from the peer, down: to it), all time",
            labels=["peer", "direction"],
        )
        age = GaugeMetricFamily(
            "resist_vpn_peer_handshake_age_seconds",
            "Seconds since the peer's last handshake (absent: never or not connected)",
            labels=["peer"],
        )
        enabled = GaugeMetricFamily(
            "resist_vpn_peer_enabled", "1 if the peer may connect, 0 if disabled", labels=["peer"]
        )
        quota = GaugeMetricFamily(
            "resist_vpn_peer_quota_bytes", "The peer's data quota", labels=["peer"]
        )
        for view in views:
            peer = view.peer
            traffic.add_metric([peer.name, "up"], peer.counted_rx)
            traffic.add_metric([peer.name, "down"], peer.counted_tx)
            enabled.add_metric([peer.name], 1 if peer.enabled else 0)
            if peer.quota_bytes is not None:
                quota.add_metric([peer.name], peer.quota_bytes)
            if view.live is not None and view.live.latest_handshake:
                age.add_metric([peer.name], max(0.0, taken - view.live.latest_handshake))
        peers = GaugeMetricFamily("resist_vpn_peers", "Peers in the database")
        peers.add_metric([], len(views))
        disabled = CounterMetricFamily(
            "resist_vpn_limit_disabled", "Peers disabled by expiry or quota by this process"
        )
        disabled.add_metric([], enforced)
        yield from (traffic, age, enabled, quota, peers, disabled)
