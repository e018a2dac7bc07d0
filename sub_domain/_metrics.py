"""Prometheus metrics of the sub-domain, read from its state at scrape time.

The only module of the package that imports ``prometheus_client``. Nothing is updated on a hot
path: the collector asks the manager for a :class:`MetricsSnapshot` when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from domainos._metrics import start_metrics_server, stop_metrics_server


@dataclass(frozen=True)
class MetricsSnapshot:
    """Numbers the collector exposes; built by the manager from plain lookups (thread-safe reads)."""

    subdomain_id: str
    nodes: dict[str, int]
    tasks: dict[str, int]
    registrations: int
    refused: dict[str, int] = field(default_factory=dict)
    placements: int = 0
    placements_rejected: int = 0
    reports_received: int = 0
    master_connected: bool = False
    reservations_held: int = 0
    #: Gang reservation outcomes: accepted, refused, committed, expired.
    reservations: dict[str, int] = field(default_factory=dict)


class SubDomainCollector(Collector):
    """Reads a :class:`MetricsSnapshot` per scrape."""

    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        nodes = GaugeMetricFamily("domainos_subdomain_nodes", "Nodes by state.", labels=["state"])
        for state, n in s.nodes.items():
            nodes.add_metric([state], n)
        yield nodes
        tasks = GaugeMetricFamily("domainos_subdomain_tasks", "Tasks held, by state.", labels=["state"])
        for state, n in s.tasks.items():
            tasks.add_metric([state], n)
        yield tasks
        reg = CounterMetricFamily("domainos_subdomain_registrations", "Agent registrations accepted.")
        reg.add_metric([], s.registrations)
        yield reg
        refused = CounterMetricFamily(
            "domainos_subdomain_registrations_refused",
            "Agent registrations refused, by reason (full, duplicate, invalid).",
            labels=["reason"],
        )
        for reason, n in s.refused.items():
            refused.add_metric([reason], n)
        yield refused
        placed = CounterMetricFamily("domainos_subdomain_placements", "Tasks placed on a node.")
        placed.add_metric([], s.placements)
        yield placed
        rejected = CounterMetricFamily(
            "domainos_subdomain_placements_rejected", "PlaceTask answered REJECTED."
        )
        rejected.add_metric([], s.placements_rejected)
        yield rejected
        reports = CounterMetricFamily("domainos_subdomain_reports_received", "Agent reports received.")
        reports.add_metric([], s.reports_received)
        yield reports
        conn = GaugeMetricFamily(
            "domainos_subdomain_master_connected", "1 while the stream to the master is up."
        )
        conn.add_metric([], 1.0 if s.master_connected else 0.0)
        yield conn
        held = GaugeMetricFamily(
            "domainos_subdomain_reservations_held", "Gang reservations held, not yet committed."
        )
        held.add_metric([], s.reservations_held)
        yield held
        outcomes = CounterMetricFamily(
            "domainos_subdomain_reservations",
            "Gang reservations by outcome (accepted, refused, committed, expired).",
            labels=["outcome"],
        )
        for outcome, n in s.reservations.items():
            outcomes.add_metric([outcome], n)
        yield outcomes


class MetricsServer:
    """A per-instance registry with the collector, served on ``/metrics``."""

    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SubDomainCollector(snapshot))
        self._server: object | None = None

    def start(self, address: str) -> int:
        """Serve on ``host:port``; returns the bound port."""
        self._server, port = start_metrics_server(address, self.registry)
        return port

    def stop(self) -> None:
        if self._server is not None:
            stop_metrics_server(self._server)
            self._server = None
