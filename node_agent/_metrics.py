"""Prometheus metrics of the node agent: one collector that reads the agent at scrape time.

The only module of the package that imports ``prometheus_client``. Each agent gets its own
``CollectorRegistry`` (several agents may share one process under test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from domainos._metrics import start_metrics_server, stop_metrics_server


@dataclass(frozen=True)
class MetricsSnapshot:
    """What the collector reports; built by the agent (cheap reads only, any thread)."""

    connected: bool = False
    tasks_by_state: Mapping[str, int] = field(default_factory=dict)
    tasks_started_total: int = 0
    reports_sent_total: int = 0
    reconnects_total: int = 0


class AgentCollector:
    """Reads a :class:`MetricsSnapshot` on every scrape; nothing is updated on hot paths."""

    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        # Names only: registration must not call into an agent that has not started yet.
        return self._families(MetricsSnapshot())

    def collect(self) -> Iterable[Metric]:
        return self._families(self._snapshot())

    @staticmethod
    def _families(s: MetricsSnapshot) -> list[Metric]:
        connected = GaugeMetricFamily(
            "domainos_agent_connected", "1 while registered with a sub-domain, else 0", value=int(s.connected)
        )
        tasks = GaugeMetricFamily(
            "domainos_agent_tasks", "Tasks this agent holds, by state", labels=["state"]
        )
        for state, n in sorted(s.tasks_by_state.items()):
            tasks.add_metric([state], n)
        started = CounterMetricFamily(
            "domainos_agent_tasks_started", "Task processes started", value=s.tasks_started_total
        )
        reports = CounterMetricFamily(
            "domainos_agent_reports_sent", "AgentReport messages sent", value=s.reports_sent_total
        )
        reconnects = CounterMetricFamily(
            "domainos_agent_reconnects", "Connection attempts after the first", value=s.reconnects_total
        )
        return [connected, tasks, started, reports, reconnects]


def serve_metrics(address: str, snapshot: Callable[[], MetricsSnapshot]) -> tuple[object, int]:
    """Serve ``/metrics`` for one agent on ``address``; returns (server, bound port)."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(snapshot))
    return start_metrics_server(address, registry)


def stop_metrics(server: object) -> None:
    """Stop a server from :func:`serve_metrics` (blocks up to half a second)."""
    stop_metrics_server(server)
