"""The master's web console: a static page and a JSON API over the same gate as gRPC (docs/console.md)."""

from master_domain.console._server import ConsoleServer

__all__ = ["ConsoleServer"]
