"""Prometheus metrics of the sub-domain, read from its state at scrape time.

The only module of the package that imports ``prometheus_client``. Nothing of it is updated on a hot
path: the collector asks the manager for a :class:`MetricsSnapshot` when ``/metrics`` is scraped.
The one per-report figure, the report lag, goes into a :class:`LagHistogram` (a list of counts,
one bisect per report) that the snapshot copies.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from domainos._metrics import start_metrics_server, stop_metrics_server

#: Upper bounds (s) of the report-lag buckets: 1 ms to 10 s, six per decade, fine enough to read a
#: p50 and a p99 from (``bench/scale.py`` interpolates inside a bucket).
LAG_BUCKETS: tuple[float, ...] = (
    *(round(m * 10.0**e, 6) for e in range(-3, 1) for m in (1.0, 1.5, 2.0, 3.0, 5.0, 7.5)),
    10.0,
)


#: Upper bounds (s) of the node-failure detection buckets: from the last message heard from a node to
#: its death (the design's goal is within 5 s with the default timeouts).
DETECTION_BUCKETS: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)


class LagHistogram:
    """Report lag (receive time minus the agent's ``sent_at``): per-bucket counts and a sum.

    Written by the event loop (one :meth:`observe` per report), read by the metrics thread through
    :meth:`snapshot`; both are plain list/float operations under the GIL.
    """

    def __init__(self, bounds: Sequence[float] = LAG_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one lag; negative ones (clock skew) count as 0."""
        seconds = max(seconds, 0.0)
        self._counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self._sum += seconds

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``(le, count)`` buckets (Prometheus style, ending with ``+Inf``) and the sum."""
        counts, total = list(self._counts), self._sum
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*(f"{b:g}" for b in self.bounds), "+Inf"), counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out, total


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
    #: Probes sent to silent nodes, and the answers that revived them.
    probes_sent: int = 0
    probes_answered: int = 0
    #: Late ticks (the event loop stalled) and their summed lateness; liveness deadlines skip it.
    loop_stalls: int = 0
    loop_stalled_s: float = 0.0
    #: Nodes cordoned now; cordons by cause (critical, risk, admin); tasks moved off drained nodes.
    nodes_cordoned: int = 0
    cordons: dict[str, int] = field(default_factory=dict)
    tasks_drained: int = 0
    #: Report lag: cumulative ``(le, count)`` buckets and the sum (see :class:`LagHistogram`).
    report_lag_buckets: list[tuple[str, float]] = field(default_factory=list)
    report_lag_sum: float = 0.0
    #: Nodes declared dead, and the time from the last message heard from each to its death.
    node_failures: int = 0
    detection_buckets: list[tuple[str, float]] = field(default_factory=list)
    detection_sum: float = 0.0


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
        cordoned = GaugeMetricFamily("domainos_subdomain_nodes_cordoned", "Nodes cordoned now.")
        cordoned.add_metric([], s.nodes_cordoned)
        yield cordoned
        cordons = CounterMetricFamily(
            "domainos_subdomain_cordons",
            "Nodes cordoned, by cause (critical: a critical Xid or ECC error, drained at once; risk: "
            "the health policy's risk score, drained gracefully; admin).",
            labels=["cause"],
        )
        for cause in ("critical", "risk", "admin"):
            cordons.add_metric([cause], s.cordons.get(cause, 0))
        yield cordons
        drained = CounterMetricFamily(
            "domainos_subdomain_tasks_drained", "Tasks told to move off a draining node."
        )
        drained.add_metric([], s.tasks_drained)
        yield drained
        probes = CounterMetricFamily(
            "domainos_subdomain_probes", "Probes sent to nodes silent for silent_after_s."
        )
        probes.add_metric([], s.probes_sent)
        yield probes
        answered = CounterMetricFamily(
            "domainos_subdomain_probes_answered", "Probe answers that made a suspect node ready again."
        )
        answered.add_metric([], s.probes_answered)
        yield answered
        stalls = CounterMetricFamily(
            "domainos_subdomain_loop_stalls",
            "Deadline ticks later than 0.1 s: the event loop was blocked or overloaded.",
        )
        stalls.add_metric([], s.loop_stalls)
        yield stalls
        stalled = CounterMetricFamily(
            "domainos_subdomain_loop_stalled_seconds",
            "Summed lateness of those ticks; node liveness deadlines are extended by it.",
        )
        stalled.add_metric([], s.loop_stalled_s)
        yield stalled
        failures = CounterMetricFamily(
            "domainos_subdomain_node_failures",
            "Nodes declared dead (silent past the probe, or their stream ended and they did not "
            "register again in time).",
        )
        failures.add_metric([], s.node_failures)
        yield failures
        if s.detection_buckets:
            yield HistogramMetricFamily(
                "domainos_subdomain_node_failure_detection_seconds",
                "Per dead node: time from the last message heard from it to its death (the failure "
                "detection latency; stalls of the sub-domain itself included).",
                buckets=s.detection_buckets,
                sum_value=s.detection_sum,
            )
        if s.report_lag_buckets:
            yield HistogramMetricFamily(
                "domainos_subdomain_report_lag_seconds",
                "Receive time minus the agent's sent_at, per report (clamped at 0). Exact on one "
                "machine; across machines it needs their clocks in sync (NTP).",
                buckets=s.report_lag_buckets,
                sum_value=s.report_lag_sum,
            )


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
