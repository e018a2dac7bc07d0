"""Helpers of the mutual-TLS tests: a cluster PKI in a temporary directory, configs of every tier
with TLS, polling, and a master running in its own thread (for the blocking DSDK and CLI)."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from domainos.config import TLSConfig
from domainos.security import CertFiles, Identity, files_for, init_ca, issue_files
from domainos.topology import SimInventory
from master_domain import MasterConfig, MasterDomain
from node_agent import AgentConfig
from sub_domain import SubDomainConfig


class Pki:
    """A cluster CA in ``directory``; certificates are issued on demand (``files(role, id)``)."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.dir = directory
        init_ca(directory)

    def files(self, role: str, ident: str, **kw: Any) -> CertFiles:
        """Issue (or re-issue: rotate) ``role/ident``; kw as :func:`issue_files` (days, not_before)."""
        return issue_files(self.dir, Identity(role, ident), **kw)

    def existing(self, role: str, ident: str) -> CertFiles:
        return files_for(self.dir, Identity(role, ident))

    def short_lived(self, role: str, ident: str, seconds: float) -> tuple[CertFiles, float]:
        """A certificate that expires ``seconds`` from now; returns it and its expiry (time.time())."""
        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        files = self.files(role, ident, not_before=start, days=(300 + seconds) / 86400)
        return files, start.timestamp() + 300 + seconds

    def expired(self, role: str, ident: str) -> CertFiles:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
        return self.files(role, ident, not_before=past, days=1)


def tls(files: CertFiles) -> TLSConfig:
    return TLSConfig(ca=files.ca, cert=files.cert, key=files.key)


def master_config(pki: Pki, tmp: pathlib.Path, **kw: Any) -> MasterConfig:
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "",
        "store": "memory://",
        "tls": tls(pki.files("master", "master-1")),
        "bootstrap_token_file": str(tmp / "admin.token"),
    }
    base.update(kw)
    return MasterConfig(**base)


def subdomain_config(
    pki: Pki | None, master: str, sd_id: str = "sd-1", files: CertFiles | None = None, **kw: Any
) -> SubDomainConfig:
    """A sub-domain config; with ``pki``: TLS with ``files`` (default: a fresh subdomain/<id> pair)."""
    base: dict[str, Any] = {
        "id": sd_id,
        "region": "east",
        "listen": "127.0.0.1:0",
        "master": master,
        "metrics_listen": "",
        "summary_interval_s": 0.1,
        "dead_after_s": 1.0,
    }
    if pki is not None:
        base["tls"] = tls(files or pki.files("subdomain", sd_id))
    base.update(kw)
    return SubDomainConfig(**base)


def agent_config(
    pki: Pki | None,
    tmp: pathlib.Path,
    node_id: str,
    subdomain: str,
    files: CertFiles | None = None,
    **kw: Any,
) -> AgentConfig:
    """An agent config; with ``pki``: TLS with ``files`` (default: a fresh agent/<node_id> pair)."""
    base: dict[str, Any] = {
        "node_id": node_id,
        "subdomains": [subdomain],
        "state_dir": str(tmp / node_id),
        "metrics_listen": "",
        "simulated": True,
        "inventory": SimInventory(cpus=4, memory="8Gi"),
        "report_interval_s": 0.1,
    }
    if pki is not None:
        base["tls"] = tls(files or pki.files("agent", node_id))
    base.update(kw)
    return AgentConfig(**base)


async def until(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll a condition (sync or async) until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def fast_sleep(seconds: float) -> None:
    """Reconnect backoff for agents under test: at most 0.1 s."""
    await asyncio.sleep(min(seconds, 0.1))


@contextmanager
def master_in_thread(config: MasterConfig) -> Iterator[MasterDomain]:
    """A master on its own event loop in a thread, so blocking clients (DSDK, CLI) can call it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-master", daemon=True)
    thread.start()
    master = MasterDomain(config)
    try:
        asyncio.run_coroutine_threadsafe(master.start(), loop).result(timeout=30)
        yield master
    finally:
        asyncio.run_coroutine_threadsafe(master.shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
