"""What every DomainOS daemon shares: structured logging, signals, ready files, metrics endpoint.

A daemon is an object with ``async start() -> dict`` (returns facts such as bound ports, written
to the ready file) and an idempotent ``async shutdown()``. :func:`run` drives it until SIGTERM
or SIGINT and exits 0 after a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar


class Daemon(Protocol):
    async def start(self) -> dict[str, Any]: ...
    async def shutdown(self) -> None: ...


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra=`` fields."""

    _SKIP = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in self._SKIP:
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(component: str, level: str = "info", fmt: str = "json") -> None:
    """Configure the root logger; only entry points call this."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(component))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("grpc").setLevel(logging.WARNING)


def write_ready_file(path: str, info: dict[str, Any]) -> None:
    """Atomically write the daemon's facts (ports, ids, pid) for launchers to read."""
    data = {**info, "pid": os.getpid(), "ready_at": time.time()}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


async def serve(daemon: Daemon, ready_file: str | None = None) -> int:
    """Start ``daemon``, write the ready file, wait for SIGTERM/SIGINT -- or for the daemon to end
    its own run (an ``ended`` event, e.g. a master whose leadership ended) -- and shut down
    gracefully. Returns the exit status (the daemon's ``exit_code`` when it ended itself)."""
    log = logging.getLogger("domainos.daemon")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        info = await daemon.start()
        if ready_file:
            write_ready_file(ready_file, info)
        log.info("ready", extra={k: v for k, v in info.items() if isinstance(v, (str, int))})
        waits = [asyncio.ensure_future(stop.wait())]
        ended = getattr(daemon, "ended", None)
        if isinstance(ended, asyncio.Event):
            waits.append(asyncio.ensure_future(ended.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if stop.is_set():
            log.info("shutting down on signal")
        else:
            code = int(getattr(daemon, "exit_code", 1) or 1)
            log.warning("the daemon ended its run; exiting with status %d", code)
    finally:
        await daemon.shutdown()
        log.info("stopped")
    return code


def run(daemon: Daemon, ready_file: str | None = None) -> int:
    """Entry-point helper: run the daemon in a fresh event loop; returns the exit status."""
    try:
        return asyncio.run(serve(daemon, ready_file))
    except KeyboardInterrupt:
        return 130


C = TypeVar("C")


def main_entry(
    component: str,
    load_config: Callable[[], C],
    make_daemon: Callable[[C], Daemon],
    ready_file: str | None,
) -> int:
    """The tail every daemon's ``main`` shares: load the config (a bad one prints ``error: ...``
    and exits 2), configure logging from it, run the daemon, and turn a DomainOSError at start
    (an expired certificate, a port in use) into ``error: ...`` and its exit code."""
    from domainos.errors import DomainOSError, InvalidArgument

    try:
        cfg = load_config()
    except InvalidArgument as exc:  # ConfigError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(component, getattr(cfg, "log_level", "info"), getattr(cfg, "log_format", "json"))
    try:
        return run(make_daemon(cfg), ready_file)
    except DomainOSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
