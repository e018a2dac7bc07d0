"""The chaos harness: a real multi-process federation on a 3-member etcd, a job workload, one fault.

Used by ``bench/chaos.py`` (``python -m bench --only chaos``) and ``tests/chaos/``.

The federation (every daemon its own process, insecure loopback, one shared etcd cluster):

* a 3-member etcd (:class:`bench._etcd_cluster.EtcdCluster`), store URL ``etcd://a,b,c``;
* 3 master replicas (``python -m master_domain``) campaigning for the leader's seat;
* one TCP proxy per master replica (:class:`PartitionProxy`, a thread of this process). Every
  master *advertises* its proxy's address, so sub-domains and clients (which follow the
  leader's advertised address) reach the masters only through the proxies, which can cut one
  sub-domain off (its connections are found by the peer process's pid) and heal it again;
* ``subdomains`` sub-domain managers (``python -m sub_domain``) on fixed ports (a restarted one
  comes back where its agents look for it), given the proxies as their master list;
* ``agents_per_subdomain`` real node agents each (``python -m node_agent``), simulated inventory
  (8 CPUs, 16 GiB: they do not depend on this machine), running real task processes.

A *supervisor* thread restarts a master that exited (a deposed leader exits 75 for its supervisor)
and records every exit nobody asked for.

The workload: ``jobs`` one-task jobs submitted open-loop at ``jobs_per_s`` through the DSDK (each
submit retried with its request id until accepted), each a short ``python3 -c`` that sleeps
0.2-2 s and appends ``"<job_id> <task> <attempt> <pid> done <unix time>"`` to a completion log in
a shared directory: two lines for one (job, task) mean its work ran to completion twice.

One fault per run (:data:`FAULTS`), injected once ``fault_after`` of the jobs were submitted.
Probes record what the control plane does meanwhile: who leads (``GetClusterInfo`` every
0.25 s), which sub-domains are connected (``ListDomains``), the state of every node (``ListNodes``
fanned out by the master, as ``domainctl nodes``), and every submit's latency. The sub-domains'
logs (node suspect/dead transitions) are read at the end.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
import yaml

from bench._etcd_cluster import EtcdCluster
from domainctl._local import free_loopback_ports
from domainctl._procs import log_tail

ROOT = Path(__file__).resolve().parents[1]

#: Fault kinds, one per run. ``none`` is the baseline (no fault).
FAULTS = (
    "none",
    "master-leader",  # (a) SIGKILL the leading master (restarted later as a follower)
    "subdomain",  # (b) SIGKILL a sub-domain manager, restarted on the same address
    "agents",  # (c) SIGKILL agents and their tasks (a machine failure), restarted
    "agents-crash",  # (c') SIGKILL agents only (their tasks keep running), restarted
    "etcd-leader",  # (d) SIGKILL the etcd leader, moved first off the member the daemons use
    "etcd-connected",  # (d') SIGKILL the member every daemon uses (the first), made etcd leader first
    "partition",  # (e) a sub-domain cut off from the masters (blackhole), healed after a while
)

#: The task: sleep, then append one completion line (O_APPEND: lines never interleave).
TASK_SCRIPT = (
    "import os, sys, time\n"
    "time.sleep(float(sys.argv[1]))\n"
    "e = os.environ\n"
    "line = '%s %s %s %d done %.3f\\n' % (e['DOMAINOS_JOB_ID'], e['DOMAINOS_TASK_INDEX'], "
    "e['DOMAINOS_TASK_ATTEMPT'], os.getpid(), time.time())\n"
    "fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)\n"
    "os.write(fd, line.encode())\n"
    "os.close(fd)\n"
)


@dataclass(frozen=True)
class Scenario:
    """One chaos run: the federation, the workload and the fault."""

    fault: str = "none"
    jobs: int = 100
    jobs_per_s: float = 10.0
    task_min_s: float = 0.2
    task_max_s: float = 2.0
    task_cpus: float = 0.25
    subdomains: int = 2
    agents_per_subdomain: int = 2
    #: The fault is injected once this share of the jobs was submitted.
    fault_after: float = 0.3
    #: How long a killed component stays down before it is started again (master, sub-domain,
    #: agents, etcd member); and how long a partition lasts.
    down_s: float = 1.0
    partition_s: float = 8.0
    #: ``blackhole``: the cut connections stall (bytes held, nothing closed: a real partition);
    #: ``reset``: they are closed and new ones refused at once.
    partition_mode: str = "blackhole"
    #: Agents killed by the ``agents``/``agents-crash`` faults.
    agents_killed: int = 2
    #: The masters' ``subdomain_lost_grace_s`` (their default is 30 s).
    subdomain_lost_grace_s: float = 30.0
    #: After the last submit, how long jobs may take to finish before the rest count as lost.
    drain_timeout_s: float = 120.0
    seed: int = 7

    def check(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; known: {', '.join(FAULTS)}")
        if self.partition_mode not in ("blackhole", "reset"):
            raise ValueError("partition_mode must be blackhole or reset")
        if self.subdomains < 2 and self.fault == "partition":
            raise ValueError("a partition needs a second sub-domain to keep the jobs going")


# -- processes ----------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in parts:
        parts.insert(0, str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DOMAINOS_MASTER", None)
    return env


class Daemon:
    """One DomainOS daemon process (``python -m MODULE --config FILE --ready-file FILE``)."""

    def __init__(self, name: str, module: str, config: dict[str, Any], workdir: Path) -> None:
        self.name = name
        self.module = module
        self.config = config
        self.config_path = workdir / "config" / f"{name}.yaml"
        self.ready_path = workdir / "run" / f"{name}.json"
        self.log_path = workdir / "logs" / f"{name}.log"
        for p in (self.config_path, self.ready_path, self.log_path):
            p.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: Set while the harness keeps it down on purpose (the supervisor leaves it alone).
        self.held_down = False
        self.listen = ""

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.ready_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", self.module, "--config", str(self.config_path)]
        argv += ["--ready-file", str(self.ready_path), "--log-format", "json"]
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start #{self.starts + 1}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_child_env(),
                cwd=str(self.config_path.parent),
            )
        self.starts += 1
        self.held_down = False

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = json.loads(self.ready_path.read_text())
                if int(info.get("pid") or 0) == self.pid:
                    self.listen = str(info.get("listen") or "")
                    return dict(info)
            except (OSError, ValueError):
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); log:\n{self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout:g}s; log:\n{self.tail()}")

    def kill(self, *, with_children: bool = False) -> int:
        """SIGKILL it (and, ``with_children``, every process below it: a machine failure); returns
        how many processes were killed."""
        self.held_down = True
        if not self.alive():
            return 0
        assert self.proc is not None
        victims = []
        if with_children:
            with contextlib.suppress(psutil.Error):
                victims = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.kill()
        for p in victims:
            with contextlib.suppress(psutil.Error, OSError):
                p.kill()
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)  # a task's own children (its session)
        self.proc.wait()
        return 1 + len(victims)

    def stop(self, timeout: float = 10.0) -> None:
        self.held_down = True
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 25) -> str:
        return log_tail(self.log_path, lines)

    def log_records(self) -> Iterator[dict[str, Any]]:
        """Every JSON log line it wrote (every start)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    yield json.loads(line)


# -- the partition proxy ------------------------------------------------------------------------


@dataclass(eq=False)
class _Conn:
    peer_port: int
    listen_port: int
    client_w: asyncio.StreamWriter
    upstream_w: asyncio.StreamWriter | None = None
    pid: int = 0
    open: asyncio.Event = field(default_factory=asyncio.Event)


class PartitionProxy:
    """TCP proxies ``listen port -> target`` on one asyncio thread, able to cut one process off.

    :meth:`partition` cuts every connection whose peer is one of ``pids`` (the owner of the
    connecting socket, looked up as root through ``/proc``): ``blackhole`` stops forwarding in both
    directions and holds new connections unanswered (the bytes wait in the kernel buffers, as in
    a network partition: whatever end gives up, gives up by its own timeouts); ``reset`` closes
    them and refuses new ones. :meth:`heal` resumes forwarding (blackhole) or lets new connections
    through again (reset).
    """

    def __init__(self, routes: list[tuple[int, str]]) -> None:
        self.routes = routes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)
        self._conns: set[_Conn] = set()
        self._cut: set[int] = set()
        self._mode = "blackhole"
        self._servers: list[asyncio.AbstractServer] = []
        self._healed: asyncio.Event | None = None
        #: What the last partition did: connections cut, held, refused.
        self.stats: Counter[str] = Counter()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._healed = asyncio.Event()
        self._healed.set()
        for port, target in self.routes:
            host, _, tport = target.rpartition(":")

            async def handle(
                r: asyncio.StreamReader,
                w: asyncio.StreamWriter,
                port: int = port,
                th: str = host,
                tp: int = int(tport),
            ) -> None:
                await self._handle(r, w, port, th, tp)

            self._servers.append(await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def _stop() -> None:
            for s in self._servers:
                s.close()
            for c in list(self._conns):
                self._abort(c)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @staticmethod
    def _abort(c: _Conn) -> None:
        for w in (c.client_w, c.upstream_w):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()

    def _pids_by_port(self) -> dict[int, int]:
        """Peer port -> pid of every TCP connection to one of our listen ports."""
        ports = {p for p, _ in self.routes}
        out: dict[int, int] = {}
        for c in psutil.net_connections(kind="tcp"):  # gRPC dials IPv4-mapped IPv6 sockets
            if c.raddr and c.raddr.port in ports and c.laddr and c.pid:
                out[c.laddr.port] = c.pid
        return out

    async def _handle(
        self, r: asyncio.StreamReader, w: asyncio.StreamWriter, port: int, th: str, tp: int
    ) -> None:
        peer = w.get_extra_info("peername")
        conn = _Conn(int(peer[1]), port, w)
        conn.open.set()
        self._conns.add(conn)
        try:
            if self._cut:
                pids = await asyncio.get_running_loop().run_in_executor(None, self._pids_by_port)
                conn.pid = pids.get(conn.peer_port, 0)
                if conn.pid in self._cut:
                    if self._mode == "reset":
                        self.stats["refused"] += 1
                        self._abort(conn)
                        return
                    self.stats["held_new"] += 1
                    conn.open.clear()
                    assert self._healed is not None
                    await self._healed.wait()
            try:
                ur, uw = await asyncio.open_connection(th, tp)
            except OSError:
                self._abort(conn)
                return
            conn.upstream_w = uw
            await asyncio.gather(self._pump(r, uw, conn), self._pump(ur, w, conn), return_exceptions=True)
        finally:
            self._conns.discard(conn)
            self._abort(conn)

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, conn: _Conn) -> None:
        try:
            while True:
                await conn.open.wait()
                data = await r.read(65536)
                if not data:
                    break
                await conn.open.wait()  # cut meanwhile: hold what was read until healed
                w.write(data)
                await w.drain()
        finally:
            with contextlib.suppress(Exception):
                w.transport.abort()

    def partition(self, pids: set[int], mode: str = "blackhole") -> None:
        asyncio.run_coroutine_threadsafe(self._partition(pids, mode), self._loop).result(30)

    async def _partition(self, pids: set[int], mode: str) -> None:
        assert self._healed is not None
        self.stats.clear()
        self._mode = mode
        self._cut = set(pids)
        self._healed.clear()
        by_port = await asyncio.get_running_loop().run_in_executor(None, self._pids_by_port)
        for c in list(self._conns):
            c.pid = by_port.get(c.peer_port, c.pid)
            if c.pid in self._cut:
                if mode == "reset":
                    self.stats["reset"] += 1
                    self._abort(c)
                else:
                    self.stats["held"] += 1
                    c.open.clear()

    def heal(self) -> None:
        asyncio.run_coroutine_threadsafe(self._heal(), self._loop).result(30)

    async def _heal(self) -> None:
        assert self._healed is not None
        self._cut = set()
        for c in list(self._conns):
            c.open.set()
        self._healed.set()


# -- the federation -----------------------------------------------------------------------------


class ChaosFederation:
    """A 3-member etcd, 3 masters behind proxies, sub-domains and agents (see the module doc)."""

    def __init__(self, workdir: Path, scenario: Scenario) -> None:
        self.workdir = workdir
        self.sc = scenario
        self.etcd = EtcdCluster(workdir / "etcd")
        self.shared = Path(tempfile.mkdtemp(prefix="domainos-chaos-", dir="/tmp"))
        self.shared.chmod(0o1777)  # tasks may run as another user
        self.completion_log = self.shared / "completions.log"
        n_sd = scenario.subdomains
        ports = free_loopback_ports(3 + 3 + n_sd)
        self.master_ports, self.proxy_ports, self.sd_ports = ports[:3], ports[3:6], ports[6:]
        self.proxy_addrs = [f"127.0.0.1:{p}" for p in self.proxy_ports]
        self.proxy = PartitionProxy(
            [(pp, f"127.0.0.1:{mp}") for pp, mp in zip(self.proxy_ports, self.master_ports, strict=True)]
        )
        self.masters: list[Daemon] = []
        self.subdomains: list[Daemon] = []
        self.agents: list[Daemon] = []
        self.token = ""
        #: (time, component, exit code) of every exit the harness did not cause.
        self.unexpected_exits: list[tuple[float, str, int | None]] = []
        self._supervise = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    # -- configs ---------------------------------------------------------------------------

    def _master(self, i: int) -> Daemon:
        cfg = {
            "id": f"master-{i + 1}",
            "listen": f"127.0.0.1:{self.master_ports[i]}",
            "advertise": self.proxy_addrs[i],
            "cluster": list(self.proxy_addrs),
            "store": self.etcd.url,
            "metrics_listen": "127.0.0.1:0",
            "log_format": "json",
            "log_level": "info",
            "insecure": True,
            "bootstrap_token_file": str(self.workdir / "admin.token"),
            "leader_lease_s": 3,
            "subdomain_lost_grace_s": self.sc.subdomain_lost_grace_s,
        }
        return Daemon(f"master-{i + 1}", "master_domain", cfg, self.workdir)

    def _subdomain(self, k: int) -> Daemon:
        sid = f"sd-{k + 1}"
        cfg = {
            "id": sid,
            "region": "east" if k % 2 == 0 else "west",
            "listen": f"127.0.0.1:{self.sd_ports[k]}",
            "master": ",".join(self.proxy_addrs),
            "store": self.etcd.url,
            "metrics_listen": "127.0.0.1:0",
            "log_format": "json",
            "insecure": True,
        }
        return Daemon(f"subdomain-{sid}", "sub_domain", cfg, self.workdir)

    def _agent(self, k: int, j: int) -> Daemon:
        node = f"sd-{k + 1}-n{j + 1}"
        cfg: dict[str, Any] = {
            "node_id": node,
            "subdomains": [f"127.0.0.1:{self.sd_ports[k]}"],
            "state_dir": str(self.workdir / "agents" / node),
            "metrics_listen": "",
            "simulated": True,
            "inventory": {"cpus": 8, "memory": "16Gi"},
            "log_format": "json",
            "insecure": True,
        }
        if os.geteuid() == 0:
            # As `domainctl up`: tasks run as this user when the unprivileged task user could not
            # run this interpreter (a pyenv under /root). The tasks here only run python3 -c.
            from domainctl._local import python_for_tasks_problem

            if python_for_tasks_problem():
                cfg["tasks_as_agent_user"] = True
        return Daemon(f"agent-{node}", "node_agent", cfg, self.workdir)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> float:
        """Start everything; returns the seconds it took. Raises RuntimeError naming the culprit."""
        t0 = time.monotonic()
        atexit.register(self.stop)  # daemons run in their own sessions: never leave them behind
        self.etcd.start()
        self.proxy.start()
        self.masters = [self._master(i) for i in range(3)]
        self.masters[0].start()
        self.masters[0].wait_ready(timeout)  # the first one leads and mints the admin token
        for m in self.masters[1:]:
            m.start()
        for m in self.masters[1:]:
            m.wait_ready(timeout)
        self.token = (self.workdir / "admin.token").read_text().strip()
        self.subdomains = [self._subdomain(k) for k in range(self.sc.subdomains)]
        for sd in self.subdomains:
            sd.start()
        for sd in self.subdomains:
            sd.wait_ready(timeout)
        self.agents = [
            self._agent(k, j) for k in range(self.sc.subdomains) for j in range(self.sc.agents_per_subdomain)
        ]
        for a in self.agents:
            a.start()
        for a in self.agents:
            a.wait_ready(timeout)
        self.wait_serving(timeout - (time.monotonic() - t0))
        self._supervisor = threading.Thread(target=self._supervise_loop, name="chaos-supervisor", daemon=True)
        self._supervisor.start()
        return time.monotonic() - t0

    def client(self, timeout: float = 5.0, attempts: int = 3) -> Any:
        from dsdk import Client
        from dsdk._retry import Retry

        return Client(
            ",".join(self.proxy_addrs),
            insecure=True,
            token=self.token,
            timeout=timeout,
            retry=Retry(attempts=attempts, backoff=0.1, max_backoff=0.5),
        )

    def node_ids(self) -> list[str]:
        return [str(a.config["node_id"]) for a in self.agents]

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Until every sub-domain is connected and every agent ready, as the master sees them."""
        deadline = time.monotonic() + max(timeout, 5.0)
        want = {str(sd.config["id"]): self.sc.agents_per_subdomain for sd in self.subdomains}
        last = ""
        with self.client(timeout=2.0, attempts=1) as c:
            while time.monotonic() < deadline:
                try:
                    seen = {s.subdomain_id: s for r in c.domains() for s in r.subdomains}
                    missing = [
                        k
                        for k, n in want.items()
                        if k not in seen or not seen[k].connected or seen[k].nodes_ready < n
                    ]
                    if not missing:
                        return
                    last = f"not ready: {missing}"
                except Exception as exc:
                    last = str(exc)
                time.sleep(0.2)
        raise RuntimeError(f"federation not serving within {timeout:.0f}s ({last})")

    def _supervise_loop(self) -> None:
        while not self._supervise.wait(0.3):
            for d in [*self.masters, *self.subdomains, *self.agents]:
                with self._lock:
                    if d.held_down or d.proc is None or d.proc.poll() is None:
                        continue
                    self.unexpected_exits.append((time.time(), d.name, d.proc.returncode))
                    d.start()  # as a supervisor (systemd, Kubernetes) would

    def kill(self, d: Daemon, *, with_children: bool = False) -> int:
        with self._lock:
            return d.kill(with_children=with_children)

    def restart(self, d: Daemon) -> None:
        with self._lock:
            if d.alive():
                d.kill()
            d.start()

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self._stopped:
            return
        self._stopped = True
        self._supervise.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        for group in (self.agents, self.subdomains, self.masters):
            for d in group:
                d.held_down = True
                if d.alive():
                    assert d.proc is not None
                    d.proc.terminate()
            for d in group:
                d.stop(timeout=10)
        self.proxy.stop()
        self.etcd.stop()
        shutil.rmtree(self.shared, ignore_errors=True)


# -- the run ------------------------------------------------------------------------------------


@dataclass
class _Submit:
    job_id: str
    index: int
    sleep_s: float
    started: float  # unix time the first SubmitJob try left
    accepted: float  # unix time it returned the job
    tries: int


class Probes:
    """Background threads recording the control plane's view while the workload runs."""

    def __init__(self, fed: ChaosFederation) -> None:
        self.fed = fed
        self._stop = threading.Event()
        #: (unix time, master id or None)
        self.leader: list[tuple[float, str | None]] = []
        #: (unix time, {sub-domain id: connected}) and (unix time, {sub-domain id: last_seen_at}):
        #: the master's view of each sub-domain.
        self.connected: list[tuple[float, dict[str, bool]]] = []
        self.last_seen: list[tuple[float, dict[str, float]]] = []
        #: (unix time, {node id: state}) -- ``domainctl nodes``
        self.nodes: list[tuple[float, dict[str, str]]] = []
        self._threads = [
            threading.Thread(target=self._leader_loop, name="probe-leader", daemon=True),
            threading.Thread(target=self._domains_loop, name="probe-domains", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _leader_loop(self) -> None:
        with self.fed.client(timeout=1.0, attempts=1) as c:
            while not self._stop.wait(0.25):
                try:
                    who: str | None = c.info().master_id
                except Exception:
                    who = None
                self.leader.append((time.time(), who))

    def _domains_loop(self) -> None:
        with self.fed.client(timeout=2.0, attempts=1) as c:
            while not self._stop.wait(0.5):
                now = time.time()
                with contextlib.suppress(Exception):
                    sds = [s for r in c.domains() for s in r.subdomains]
                    self.connected.append((now, {s.subdomain_id: s.connected for s in sds}))
                    self.last_seen.append((now, {s.subdomain_id: s.last_seen_at for s in sds}))
                with contextlib.suppress(Exception):
                    self.nodes.append((now, {n.node_id: n.state for n in c.nodes()}))


class Run:
    """One scenario from start to report (:meth:`execute`)."""

    def __init__(self, scenario: Scenario, workdir: Path, say: Callable[[str], None] = print) -> None:
        scenario.check()
        self.sc = scenario
        self.workdir = workdir
        self.say = say
        self.fed = ChaosFederation(workdir, scenario)
        self.submits: dict[str, _Submit] = {}
        self.submit_failures: list[str] = []
        self.finals: dict[str, Any] = {}
        self.fault: dict[str, Any] = {"kind": scenario.fault}
        self._fault_done = threading.Event()
        self._lock = threading.Lock()

    # -- workload ----------------------------------------------------------------------------

    def _spec(self, i: int, sleep_s: float) -> dict[str, Any]:
        return {
            "name": f"chaos-{i}",
            "command": [
                "python3",
                "-I",
                "-S",
                "-c",
                TASK_SCRIPT,
                f"{sleep_s:.3f}",
                str(self.fed.completion_log),
            ],
            "resources": {"cpus": self.sc.task_cpus, "memory": "64Mi"},
        }

    def _submitter(self, on_progress: Callable[[int], None]) -> None:
        from domainos.ids import new_request_id
        from dsdk import DomainOSError

        rng = random.Random(self.sc.seed)
        period = 1.0 / self.sc.jobs_per_s
        due = time.monotonic()
        with self.fed.client(timeout=5.0, attempts=1) as c:
            for i in range(self.sc.jobs):
                sleep_s = round(rng.uniform(self.sc.task_min_s, self.sc.task_max_s), 3)
                rid = new_request_id()
                started = time.time()
                tries = 0
                give_up = time.monotonic() + 120.0
                while True:
                    tries += 1
                    try:
                        job = c.submit(self._spec(i, sleep_s), request_id=rid)
                        break
                    except DomainOSError as exc:
                        if time.monotonic() > give_up or exc.code not in (
                            "UNAVAILABLE",
                            "DEADLINE_EXCEEDED",
                            "RESOURCE_EXHAUSTED",
                        ):
                            self.submit_failures.append(f"job {i}: {exc}")
                            job = None
                            break
                        time.sleep(0.2)
                if job is not None:
                    with self._lock:
                        self.submits[job.job_id] = _Submit(
                            job.job_id, i, sleep_s, started, time.time(), tries
                        )
                on_progress(i + 1)
                due += period
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    due = time.monotonic()  # behind (a stall): no burst to catch up

    def _track(self, stop: threading.Event) -> None:
        """Find jobs that left the active list; read each one's final record once."""
        from dsdk import JobState

        active_states = [JobState.PENDING, JobState.SCHEDULED, JobState.RUNNING]
        with self.fed.client(timeout=5.0, attempts=2) as c:
            while True:
                last = stop.is_set()
                t_list = time.time()
                try:
                    active = {j.job_id for j in c.jobs(states=active_states)}
                except Exception:
                    if last:
                        return
                    stop.wait(1.0)
                    continue
                with self._lock:
                    todo = [
                        s.job_id
                        for s in self.submits.values()
                        if s.job_id not in self.finals and s.accepted < t_list
                    ]
                for job_id in todo:
                    if job_id in active:
                        continue
                    with contextlib.suppress(Exception):
                        job = c.job(job_id)
                        if job.terminal:
                            self.finals[job_id] = job
                if last:
                    return
                stop.wait(1.0)

    def _all_final(self) -> bool:
        with self._lock:
            return len(self.finals) >= len(self.submits)

    # -- faults ------------------------------------------------------------------------------

    def _inject(self) -> None:
        kind = self.sc.fault
        f = self.fault
        f["at"] = time.time()
        fed = self.fed
        try:
            if kind == "master-leader":
                with fed.client(timeout=2.0) as c:
                    leader = c.info().master_id
                victim = next(m for m in fed.masters if m.config["id"] == leader)
                f["at"] = time.time()
                f["killed"] = victim.name
                f["killed_pid"] = victim.pid
                fed.kill(victim)
                time.sleep(max(self.sc.down_s, 5.0))  # comes back later, as a follower
                fed.restart(victim)
                f["restarted_at"] = time.time()
            elif kind == "subdomain":
                victim = fed.subdomains[0]
                f["killed"] = victim.name
                f["killed_pid"] = victim.pid
                fed.kill(victim)
                time.sleep(self.sc.down_s)
                fed.restart(victim)
                f["restarted_at"] = time.time()
                f["new_pid"] = victim.pid
            elif kind in ("agents", "agents-crash"):
                # Spread over the sub-domains: agents 0, n, 1, n+1, ...
                per = self.sc.agents_per_subdomain
                order = [k * per + j for j in range(per) for k in range(self.sc.subdomains)]
                victims = [fed.agents[i] for i in order[: self.sc.agents_killed]]
                f["killed"] = [v.name for v in victims]
                f["nodes"] = [str(v.config["node_id"]) for v in victims]
                f["processes_killed"] = sum(fed.kill(v, with_children=kind == "agents") for v in victims)
                time.sleep(self.sc.down_s)
                for v in victims:
                    fed.restart(v)
                f["restarted_at"] = time.time()
            elif kind in ("etcd-leader", "etcd-connected"):
                # Every daemon's store is connected to the first member (the first endpoint that
                # answers). etcd-leader: a pure leader loss (requests the daemons' member forwarded
                # to the leader are lost with it); etcd-connected: the worst case, the member the
                # daemons use *and* the leader.
                if kind == "etcd-leader":
                    if fed.etcd.leader() == 0:
                        fed.etcd.move_leader(1)
                    idx = fed.etcd.leader()
                else:
                    fed.etcd.move_leader(0)
                    idx = 0
                f["at"] = time.time()
                f["member"] = fed.etcd.names[idx]
                f["member_was_etcd_leader"] = idx == fed.etcd.leader()
                f["at"] = time.time()
                fed.etcd.kill(idx)
                f["new_etcd_leader"] = fed.etcd.names[fed.etcd.leader(timeout=15)]
                time.sleep(max(self.sc.down_s, 10.0))  # runs on two members for a while
                fed.etcd.restart(idx)
                f["restarted_at"] = time.time()
            elif kind == "partition":
                victim = fed.subdomains[0]
                f["subdomain"] = victim.config["id"]
                f["mode"] = self.sc.partition_mode
                f["duration_s"] = self.sc.partition_s
                fed.proxy.partition({victim.pid}, self.sc.partition_mode)
                f["cut"] = dict(fed.proxy.stats)
                time.sleep(self.sc.partition_s)
                fed.proxy.heal()
                f["healed_at"] = time.time()
                f["cut_during"] = dict(fed.proxy.stats)
        except Exception as exc:
            f["error"] = repr(exc)
        finally:
            self._fault_done.set()

    # -- the whole run -----------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        sc = self.sc
        out: dict[str, Any] = {"fault": sc.fault, "scenario": asdict(sc)}
        try:
            out["startup_s"] = round(self.fed.start(), 1)
            return self._run(out)
        finally:
            self.fed.stop()

    def _run(self, out: dict[str, Any]) -> dict[str, Any]:
        sc = self.sc
        probes = Probes(self.fed)
        probes.start()
        stop_tracking = threading.Event()
        tracker = threading.Thread(
            target=self._track, args=(stop_tracking,), name="chaos-tracker", daemon=True
        )
        tracker.start()
        fault_at_job = max(1, int(sc.jobs * sc.fault_after))
        injector: list[threading.Thread] = []

        def on_progress(n: int) -> None:
            if n == fault_at_job and sc.fault != "none" and not injector:
                t = threading.Thread(target=self._inject, name="chaos-fault", daemon=True)
                injector.append(t)
                t.start()

        t0 = time.time()
        self.say(f"[{sc.fault}] {sc.jobs} jobs at {sc.jobs_per_s:g}/s; fault after job {fault_at_job}")
        self._submitter(on_progress)
        t_submitted = time.time()
        if injector:
            injector[0].join(120)
        deadline = time.monotonic() + sc.drain_timeout_s
        while time.monotonic() < deadline and not self._all_final():
            time.sleep(0.5)
        stop_tracking.set()
        tracker.join(60)
        t_end = time.time()
        probes.stop()
        out.update(self._report(probes, t0, t_submitted, t_end))
        return out

    # -- accounting --------------------------------------------------------------------------

    def _completions(self) -> list[tuple[str, int, int, int, float]]:
        lines = []
        try:
            text = self.fed.completion_log.read_text()
        except OSError:
            return []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[4] == "done":
                ts = float(parts[5]) if len(parts) > 5 else 0.0
                lines.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3]), ts))
        return lines

    def _node_events(self) -> list[dict[str, Any]]:
        """Node suspect/dead transitions the sub-domains logged."""
        events = []
        for sd in self.fed.subdomains:
            for rec in sd.log_records():
                msg = str(rec.get("msg", ""))
                if msg.startswith("node ") and (" suspect:" in msg or " dead:" in msg):
                    node, state = msg.split()[1], msg.split()[2].rstrip(":")
                    events.append(
                        {
                            "ts": rec.get("ts"),
                            "subdomain": sd.config["id"],
                            "node": node,
                            "state": state,
                            "why": msg,
                        }
                    )
        return events

    def _report(self, probes: Probes, t0: float, t_submitted: float, t_end: float) -> dict[str, Any]:
        from dsdk import JobState

        sc = self.sc
        finals = dict(self.finals)
        states = Counter(j.state.value for j in finals.values())
        submitted = len(self.submits)
        not_terminal = [j for j in self.submits if j not in finals]
        failed = [j for j, job in finals.items() if job.state != JobState.SUCCEEDED]
        comps = self._completions()
        per_task = Counter((job, task) for job, task, _a, _p, _t in comps)
        twice = {k: n for k, n in per_task.items() if n > 1}
        done_jobs = {job for job, _t, _a, _p, _ts in comps}
        succeeded_without_line = [
            j for j, job in finals.items() if job.state == JobState.SUCCEEDED and j not in done_jobs
        ]
        retried = [
            {
                "job": j,
                "task": t.index,
                "attempt": t.attempt,
                "lost_retries": t.lost_retries,
                "exit_retries": t.exit_retries,
                "node": t.node_id,
                "message": t.message,
            }
            for j, job in finals.items()
            for t in job.tasks
            if t.attempt > 0
        ]
        fault_at = float(self.fault.get("at", 0.0))
        killed_nodes = set(self.fault.get("nodes", []))
        node_events = self._node_events()
        false_dead = sorted(
            {e["node"] for e in node_events if e["state"] == "dead" and e["node"] not in killed_nodes}
        )
        false_suspect = sorted(
            {e["node"] for e in node_events if e["state"] == "suspect" and e["node"] not in killed_nodes}
        )
        # `domainctl nodes` as polled: nodes ever seen in another state than ready.
        polled_down = sorted(
            {
                f"{n}:{st}"
                for _t, view in probes.nodes
                for n, st in view.items()
                if st != "ready" and n not in killed_nodes
            }
        )
        rec = self._recovery(probes, fault_at, comps) if sc.fault != "none" else {}
        last_finish = max((job.finished_at for job in finals.values() if job.finished_at), default=t_end)
        wall = max(last_finish, t_submitted) - t0
        lat = sorted(s.accepted - s.started for s in self.submits.values())
        return {
            "jobs_submitted": submitted,
            "submit_failures": len(self.submit_failures),
            "submit_failure_examples": self.submit_failures[:5],
            "succeeded": states.get("SUCCEEDED", 0),
            "failed": states.get("FAILED", 0),
            "cancelled": states.get("CANCELLED", 0),
            "not_terminal": len(not_terminal),
            "lost": len(not_terminal) + len(failed) + len(self.submit_failures),
            "lost_examples": [
                {
                    "job": j,
                    "state": finals[j].state.value if j in finals else "not terminal",
                    "message": finals[j].message if j in finals else "",
                }
                for j in (not_terminal + failed)[:10]
            ],
            "twice": len(twice),
            # Of those, the ones whose first run had written its line before the fault: work that
            # completed on a machine that died before reporting it (at-least-once, unavoidable).
            "twice_done_before_fault": sum(
                1
                for (j, t) in twice
                if fault_at and min(c[4] for c in comps if c[0] == j and c[1] == t) < fault_at
            ),
            "twice_examples": [
                {"job": j, "task": t, "lines": [c for c in comps if c[0] == j and c[1] == t]}
                for (j, t) in list(twice)[:10]
            ],
            "completion_lines": len(comps),
            "succeeded_without_completion_line": len(succeeded_without_line),
            "tasks_retried": len(retried),
            "tasks_retried_examples": retried[:10],
            "fault": self.fault,
            "recovery": rec,
            "recovery_s": rec.get("recovery_s"),
            "false_node_downs": len(false_dead),
            "false_node_downs_nodes": false_dead,
            "false_node_suspects": false_suspect,
            "nodes_seen_not_ready_by_domainctl_nodes": polled_down,
            "node_events": node_events[:50],
            "unexpected_exits": [
                {"ts": t, "component": name, "code": code} for t, name, code in self.fed.unexpected_exits
            ],
            "submit_latency_s": {
                "p50": round(lat[len(lat) // 2], 3) if lat else None,
                "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3) if lat else None,
                "max": round(lat[-1], 3) if lat else None,
            },
            "submit_s": round(t_submitted - t0, 1),
            "wall_s": round(wall, 1),
            "throughput_jobs_per_s": round(states.get("SUCCEEDED", 0) / wall, 2) if wall > 0 else 0.0,
        }

    def _recovery(
        self, probes: Probes, fault_at: float, comps: list[tuple[str, int, int, int, float]]
    ) -> dict[str, Any]:
        kind = self.sc.fault
        out: dict[str, Any] = {}
        # The front door: the first submit that started after the fault and was accepted.
        after = sorted(s.accepted for s in self.submits.values() if s.started >= fault_at)
        if after:
            out["first_submit_accepted_after_fault_s"] = round(after[0] - fault_at, 2)
        worst = [s for s in self.submits.values() if s.accepted >= fault_at]
        if worst:
            out["max_submit_latency_after_fault_s"] = round(max(s.accepted - s.started for s in worst), 2)
        # End to end: the first completion line of a job submitted after the fault.
        late = {s.job_id for s in self.submits.values() if s.started >= fault_at}
        done_after = sorted(ts for job, _t, _a, _p, ts in comps if job in late)
        if done_after:
            out["first_new_job_completed_after_fault_s"] = round(done_after[0] - fault_at, 2)
        # The longest time without any completion line around the fault (the pipeline stalled).
        stamps = sorted(ts for *_x, ts in comps if ts >= fault_at - 5)
        gaps = [b - a for a, b in itertools.pairwise(stamps) if b >= fault_at]
        if gaps:
            out["longest_completion_gap_s"] = round(max(gaps), 2)
        if kind == "master-leader":
            old = None
            for t, who in probes.leader:
                if t < fault_at and who:
                    old = who
            new = next(((t, w) for t, w in probes.leader if t >= fault_at and w and w != old), None)
            out["old_leader"] = old
            if new is not None:
                out["new_leader"] = new[1]
                out["leader_failover_s"] = round(new[0] - fault_at, 2)
                out["recovery_s"] = out["leader_failover_s"]
            out["what"] = "a new master leads and answers"
        elif kind == "subdomain":
            sid = str(self.fed.subdomains[0].config["id"])
            out.update(self._reconnect(probes, sid, fault_at))
            out["what"] = "the restarted sub-domain is connected to the master again"
        elif kind in ("agents", "agents-crash"):
            nodes = set(self.fault.get("nodes", []))
            ready = next(
                (
                    t
                    for t, view in probes.nodes
                    if t >= float(self.fault.get("restarted_at", fault_at))
                    and nodes
                    and all(view.get(n) == "ready" for n in nodes)
                ),
                None,
            )
            if ready is not None:
                out["killed_nodes_ready_again_s"] = round(ready - fault_at, 2)
                out["recovery_s"] = out["killed_nodes_ready_again_s"]
            out["what"] = "the killed agents' nodes are ready again (restarted after down_s)"
        elif kind in ("etcd-leader", "etcd-connected"):
            out["recovery_s"] = out.get("first_submit_accepted_after_fault_s")
            out["what"] = "the first job submitted after the member died is accepted (a store write)"
            out["leader_changes"] = sorted({w for t, w in probes.leader if t >= fault_at and w})
        elif kind == "partition":
            sid = str(self.fed.subdomains[0].config["id"])
            healed = float(self.fault.get("healed_at", fault_at))
            seen_down = [
                t for t, view in probes.connected if fault_at <= t <= healed + 1 and not view.get(sid, True)
            ]
            out["master_saw_disconnect"] = bool(seen_down)
            if seen_down:
                out["disconnect_seen_after_s"] = round(seen_down[0] - fault_at, 2)
                back = self._reconnect(probes, sid, fault_at)
                if "reconnected_s" in back:
                    out["reconnected_after_heal_s"] = round(fault_at + back["reconnected_s"] - healed, 2)
            # How stale the master's view of it got, and when it heard from it again after the heal.
            stale = [
                t - view[sid] for t, view in probes.last_seen if fault_at <= t <= healed and view.get(sid)
            ]
            if stale:
                out["master_view_stale_max_s"] = round(max(stale), 2)
            heard = next((t for t, view in probes.last_seen if view.get(sid, 0.0) > healed), None)
            if heard is not None:
                out["heard_again_after_heal_s"] = round(heard - healed, 2)
                out["recovery_s"] = out["heard_again_after_heal_s"]
            out["what"] = "after the heal, the master hears from the sub-domain again (last_seen_at)"
        return out

    @staticmethod
    def _reconnect(probes: Probes, sid: str, fault_at: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        down = next((t for t, view in probes.connected if t >= fault_at and not view.get(sid, True)), None)
        if down is not None:
            out["disconnect_seen_s"] = round(down - fault_at, 2)
            up = next((t for t, view in probes.connected if t > down and view.get(sid)), None)
            if up is not None:
                out["reconnected_s"] = round(up - fault_at, 2)
                out["recovery_s"] = out["reconnected_s"]
        return out


def run_scenario(
    scenario: Scenario, workdir: Path | None = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run one scenario in ``workdir`` (a temporary directory when None); returns its report."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return Run(scenario, workdir, say).execute()
    with tempfile.TemporaryDirectory(prefix="domainos-chaos-run-") as tmp:
        return Run(scenario, Path(tmp), say).execute()


__all__ = ["FAULTS", "ChaosFederation", "PartitionProxy", "Run", "Scenario", "replace", "run_scenario"]
