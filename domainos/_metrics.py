"""The Prometheus HTTP endpoint every daemon serves (only ``_metrics`` modules import prometheus_client)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server


def start_metrics_server(address: str, registry: CollectorRegistry = REGISTRY) -> tuple[object, int]:
    """Serve ``/metrics`` on ``host:port`` (port 0 picks one). Returns (server, bound port)."""
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host, registry=registry)
    return server, int(server.server_port)


def stop_metrics_server(server: object) -> None:
    shutdown = getattr(server, "shutdown", None)
    if callable(shutdown):
        shutdown()
    close = getattr(server, "server_close", None)
    if callable(close):
        close()
