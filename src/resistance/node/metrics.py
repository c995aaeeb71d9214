"""Prometheus metrics of a node: counts and bytes, never addresses.

The event loop counts in plain integers (no lock, no hashing of label values
on the handshake path); a custom collector turns them into Prometheus
metric families only when someone scrapes.  Each node builds its own
registry, so tests can run several nodes in one process.  The relay's hot
path does not count per chunk at all: connections keep byte totals in their
pumps and the node adds them here when a connection ends and on every sweep.

prometheus_client loads only when a registry is asked for (``--metrics``, or a
supervisor adding up its workers): importing it costs a node's start ~15 ms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from resistance.proto.socks5 import Command, Reply

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector


class Count:
    """One number of a metric family."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        self.value -= amount


class Family:
    """A metric family: its numbers keyed by label values."""

    __slots__ = ("children", "help", "kind", "label_names", "name")

    def __init__(
        self, name: str, help: str, label_names: tuple[str, ...] = (), *, kind: str
    ) -> None:
        self.name = name
        self.help = help
        self.label_names = label_names
        self.kind = kind
        self.children: dict[tuple[str, ...], Count] = {}
        if not label_names:
            self.children[()] = Count()

    def labels(self, *values: str) -> Count:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = Count()
        return child

    def inc(self, amount: int = 1) -> None:
        self.children[()].value += amount

    def dec(self, amount: int = 1) -> None:
        self.children[()].value -= amount

    def collect(self) -> Metric:
        return self.metric((values, child.value) for values, child in list(self.children.items()))

    def metric(self, rows: Iterable[tuple[tuple[str, ...], int]]) -> Metric:
        """This family's Prometheus form, with these (label values, value) rows."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        family: CounterMetricFamily | GaugeMetricFamily
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.help, labels=self.label_names)
        else:
            family = GaugeMetricFamily(self.name, self.help, labels=self.label_names)
        for values, value in rows:
            family.add_metric(list(values), value)
        return family


class Collected:
    """A Prometheus collector (``collect()`` yields metric families) whose registry
    is made on first use."""

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError

    @cached_property
    def registry(self) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(cast("Collector", self))
        return registry


class NodeMetrics(Collected):
    def __init__(self) -> None:
        self.families: list[Family] = []
        counter, gauge = self._counter, self._gauge
        self.connections = counter("resist_node_connections", "Client connections accepted")
        self.active = gauge("resist_node_connections_active", "Client connections open")
        self.rejected = counter(
            "resist_node_connections_rejected",
            "Client connections closed at once by a limit",
            "reason",
        )
        self.handshake_failures = counter(
            "resist_node_handshake_failures",
            "SOCKS handshakes that failed before a request",
            "reason",
        )
        self.auth_failures = counter(
            "resist_node_auth_failures", "Failed RFC 1929 authentications", "reason"
        )
        self.requests = counter("resist_node_requests", "SOCKS requests by command", "command")
        self.replies = counter("resist_node_replies", "SOCKS request replies by code", "reply")
        self.policy_refusals = counter(
            "resist_node_policy_refusals", "Destinations refused by the egress policy", "reason"
        )
        self.bytes = counter(
            "resist_node_bytes",
            "Bytes relayed (up: client to destination, down: back)",
            "direction",
        )
        self.user_bytes = counter(
            "resist_node_user_bytes", "Bytes relayed per user", "user", "direction"
        )
        self.udp_datagrams = counter(
            "resist_node_udp_datagrams", "UDP datagrams relayed or dropped", "direction", "outcome"
        )
        self.udp_associations = gauge("resist_node_udp_associations", "UDP associations open")
        self._bytes_up = self.bytes.labels("up")
        self._bytes_down = self.bytes.labels("down")
        self.request_by_command = {c: self.requests.labels(c.name.lower()) for c in Command}
        self.reply_by_code = {r: self.replies.labels(r.name.lower()) for r in Reply}

    def _counter(self, name: str, help: str, *labels: str) -> Family:
        family = Family(name, help, labels, kind="counter")
        self.families.append(family)
        return family

    def _gauge(self, name: str, help: str, *labels: str) -> Family:
        family = Family(name, help, labels, kind="gauge")
        self.families.append(family)
        return family

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """Every family's numbers, JSON-ready (label values, then the value), for a
        supervisor to add up over its workers."""
        return {
            family.name: [[*labels, child.value] for labels, child in family.children.items()]
            for family in self.families
        }

    def add_bytes(self, user: str | None, up: int, down: int) -> None:
        self._bytes_up.value += up
        self._bytes_down.value += down
        if user is not None and (up or down):
            self.user_bytes.labels(user, "up").value += up
            self.user_bytes.labels(user, "down").value += down


class SummedMetrics(Collected):
    """The node's metric families with the numbers of several snapshots added up:
    what ``--workers`` serves on ``--metrics``, one snapshot per worker per scrape."""

    def __init__(self, fetch: Callable[[], list[dict[str, list[list[Any]]]]]) -> None:
        self.template = NodeMetrics()  # names, help texts, kinds and label names
        self.fetch = fetch

    def collect(self) -> Iterator[Metric]:
        # Every number starts at the template's zeros, so an unlabelled counter is
        # reported even before any worker has answered.
        totals = {
            family.name: {values: child.value for values, child in family.children.items()}
            for family in self.template.families
        }
        for snapshot in self.fetch():
            for name, rows in snapshot.items():
                family_totals = totals.get(name)
                if family_totals is None:
                    continue
                for row in rows:
                    labels, value = tuple(str(v) for v in row[:-1]), row[-1]
                    if isinstance(value, int) and not isinstance(value, bool):
                        family_totals[labels] = family_totals.get(labels, 0) + value
        for family in self.template.families:
            summed = totals[family.name].items()
            yield family.metric(r for r in summed if len(r[0]) == len(family.label_names))
