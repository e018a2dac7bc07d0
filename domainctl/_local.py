"""The local federation: ``domainctl up``/``down``/``status`` (``demo`` builds on it in ``_demo``).

``up`` starts the master, the sub-domains and the agents of a topology as processes on this
machine (loopback addresses, port 0, the embedded SQLite store unless an etcd URL is given), each
in its own session with its log under ``<home>/local/logs/``, and records them in
``<home>/local/cluster.json`` -- the file :mod:`dsdk` reads to find the master without flags.

Daemons are started only as subprocesses (``python -m master_domain`` etc.); nothing here imports
a server package. Each gets a small YAML config under ``<home>/local/config/`` and
``--ready-file``: the launcher reads the bound addresses from the ready files.

Every connection is mutual TLS unless ``--insecure``: ``up`` keeps a cluster CA in ``<home>/local/pki``
(created once), issues a fresh certificate for the master, each sub-domain, each agent and a client
at every start, writes ``tls:`` into every daemon config, and records the client's files in
``cluster.json`` (``"tls"``) so later commands use them without flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from domainos.config import INSECURE_WARNING
from domainos.errors import DomainOSError, FailedPrecondition, InvalidArgument
from domainos.topology import AgentPlan, SubDomainSpec, Topology, load_topology

from . import _render
from ._procs import is_alive, log_tail, process_start_time, stop_components

if TYPE_CHECKING:
    from domainos.security import CertFiles

KINDS = ("master", "subdomain", "agent")
MODULES = {"master": "master_domain", "subdomain": "sub_domain", "agent": "node_agent"}
#: Each agent is a process; past this a topology belongs on real machines (or in the benchmarks).
MAX_LOCAL_AGENTS = 256
LOOPBACK_ANY_PORT = "127.0.0.1:0"
#: The web console of the local federation's (first) master (docs/console.md); when the port is
#: taken, any free port (the URL is printed and kept in cluster.json).
CONSOLE_PORT = 7090
_POLL_S = 0.05


class StartupFailed(DomainOSError):
    """A component did not come up; ``component`` names it, ``log_tail`` is the end of its log."""

    code = "UNAVAILABLE"
    exit_code = 1

    def __init__(self, message: str, *, component: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.component = component
        self.log_tail = log_tail


# -- paths and configs (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Where a local federation keeps its files, under ``<home>/local``."""

    home: pathlib.Path

    @property
    def local(self) -> pathlib.Path:
        return self.home / "local"

    @property
    def state(self) -> pathlib.Path:
        return self.local / "cluster.json"

    @property
    def logs(self) -> pathlib.Path:
        return self.local / "logs"

    @property
    def run(self) -> pathlib.Path:
        return self.local / "run"

    @property
    def config(self) -> pathlib.Path:
        return self.local / "config"

    @property
    def agents(self) -> pathlib.Path:
        return self.local / "agents"

    @property
    def pki(self) -> pathlib.Path:
        return self.local / "pki"

    @property
    def admin_token(self) -> pathlib.Path:
        """The bootstrap admin token the master writes (mode 0600) on its first start."""
        return self.local / "admin.token"

    def log(self, name: str) -> pathlib.Path:
        return self.logs / f"{name}.log"

    def ready(self, name: str) -> pathlib.Path:
        return self.run / f"{name}.json"

    def config_file(self, name: str) -> pathlib.Path:
        return self.config / f"{name}.yaml"

    def store_url(self, name: str, store: str | None) -> str:
        """The given etcd URL, or a SQLite file of this component's own."""
        return store or f"sqlite://{(self.local / f'{name}.db').resolve()}"


MASTER_ID = "master-1"


def transport_config(tls: CertFiles | None) -> dict[str, Any]:
    """The daemon config entries for mutual TLS with ``tls``, or ``insecure: true`` when None."""
    if tls is None:
        return {"insecure": True}
    return {"tls": {"ca": tls.ca, "cert": tls.cert, "key": tls.key}}


def master_config(
    paths: Paths,
    store: str | None,
    *,
    tls: CertFiles | None = None,
    topology_file: str | None = None,
    ident: str = MASTER_ID,
    listen: str = LOOPBACK_ANY_PORT,
    cluster: Sequence[str] = (),
    console: str = "",
) -> dict[str, Any]:
    # The master reads the topology's scheduling data (power budgets, links) itself.
    topology = {"topology": str(pathlib.Path(topology_file).resolve())} if topology_file else {}
    replicas = {"cluster": list(cluster)} if len(cluster) > 1 else {}
    return {
        "id": ident,
        "listen": listen,
        **replicas,
        "store": paths.store_url("master", store),
        "metrics_listen": LOOPBACK_ANY_PORT,
        **({"console_listen": console} if console else {}),
        "log_format": "json",
        "bootstrap_token_file": str(paths.admin_token.resolve()),
        **topology,
        **transport_config(tls),
    }


def subdomain_config(
    paths: Paths,
    region: str,
    sd: SubDomainSpec,
    master: str,
    store: str | None,
    *,
    tls: CertFiles | None = None,
) -> dict[str, Any]:
    return {
        "id": sd.id,
        "region": region,
        "listen": LOOPBACK_ANY_PORT,
        "master": master,
        "store": paths.store_url(f"subdomain-{sd.id}", store),
        "max_nodes": sd.max_nodes,
        "metrics_listen": LOOPBACK_ANY_PORT,
        "log_format": "json",
        **transport_config(tls),
    }


def unreadable_for_others(paths: Sequence[str]) -> str:
    """The first of ``paths`` (or a directory above it) that users other than its owner cannot
    read or traverse ("" when they all can): can an unprivileged task user run this Python?"""
    for path in paths:
        real = pathlib.Path(os.path.realpath(path))
        for part in [*reversed(real.parents), real]:
            try:
                mode = part.stat().st_mode
            except OSError:
                return str(part)
            need = stat.S_IXOTH if part.is_dir() else stat.S_IROTH
            if not mode & need:
                return str(part)
    return ""


def python_for_tasks_problem() -> str:
    """Why tasks run as another user could not run this interpreter with DomainOS ("" = they can)."""
    import domainos

    blocked = unreadable_for_others([sys.executable, os.path.dirname(os.path.abspath(domainos.__file__))])
    return f"{blocked} is not readable by other users" if blocked else ""


def agent_config(
    paths: Paths,
    plan: AgentPlan,
    subdomain_address: str,
    *,
    tls: CertFiles | None = None,
    task_tls: CertFiles | None = None,
    tasks_as_agent_user: bool = False,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "node_id": plan.node_id,
        "subdomains": [subdomain_address],
        "state_dir": str((paths.agents / plan.node_id).resolve()),
        # One directory for every local node: it stands for the shared storage a real cluster
        # mounts, so a task rescheduled on another node resumes from its last checkpoint.
        "checkpoint_dir": str((paths.agents.parent / "checkpoints").resolve()),
        "metrics_listen": LOOPBACK_ANY_PORT,
        "simulated": plan.simulated,
        "log_format": "json",
        **transport_config(tls),
        # The inventory, labels, block and dataset shards the topology declares.
        **plan.agent_fields(),
    }
    if tasks_as_agent_user:
        cfg["tasks_as_agent_user"] = True
    if task_tls is not None:
        # Tasks (DSDK workers, collectives) call the master with a client certificate of their own.
        cfg["task_client_tls"] = {"ca": task_tls.ca, "cert": task_tls.cert, "key": task_tls.key}
    return cfg


def component_name(kind: str, ident: str = "") -> str:
    if kind == "master":  # the first master is "master"; replicas "master-2", "master-3", ...
        return "master" if ident in ("", "1", MASTER_ID) else f"master-{ident}"
    return f"{kind}-{ident}"


def free_loopback_ports(n: int) -> list[int]:
    """``n`` ports free right now on 127.0.0.1 (master replicas must know each other's address
    before they start)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def console_listen() -> str:
    """The console's listen address: :data:`CONSOLE_PORT` on loopback, or any port when it is taken."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", CONSOLE_PORT))
        except OSError:
            return LOOPBACK_ANY_PORT
    return f"127.0.0.1:{CONSOLE_PORT}"


def issue_local_pki(paths: Paths, topology: Topology) -> dict[str, CertFiles]:
    """The local federation's certificates: component name (and ``client``) -> its TLS files.

    The CA in ``<home>/local/pki`` is created once and kept; every certificate is issued afresh
    (loopback names only), so an old or expired one never survives a restart of the federation.
    """
    from domainos.security import Identity, init_ca, issue_files
    from dsdk._address import default_client_id

    init_ca(paths.pki)
    wanted = {
        component_name("master"): Identity("master", MASTER_ID),
        **{
            component_name("master", str(i)): Identity("master", f"master-{i}")
            for i in range(2, topology.masters + 1)
        },
        **{
            component_name("subdomain", sd.id): Identity("subdomain", sd.id)
            for _, sd in topology.subdomains()
        },
        **{component_name("agent", a.node_id): Identity("agent", a.node_id) for a in topology.agents()},
        # The client certificate each agent copies into its tasks (never the agent's own).
        **{
            component_name("tasks", a.node_id): Identity("client", f"tasks-{a.node_id}")
            for a in topology.agents()
        },
        "client": Identity("client", default_client_id()),
    }
    return {name: issue_files(paths.pki, who) for name, who in wanted.items()}


def expected_agents(topology: Topology) -> dict[str, int]:
    """Sub-domain id -> number of agents the topology puts there."""
    out = {sd.id: 0 for _, sd in topology.subdomains()}
    for plan in topology.agents():
        out[plan.subdomain] += 1
    return out


def check_store(store: str | None) -> str | None:
    """``--store``: an ``etcd://HOST:PORT`` URL (the default is one SQLite file per component)."""
    if not store:
        return None
    rest = store.removeprefix("etcd://")
    host, sep, port = rest.rpartition(":")
    if rest == store or not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidArgument(f"expected etcd://HOST:PORT, got {store!r}", field="--store")
    return store


def topology_summary(topology: Topology, source: str | None) -> dict[str, Any]:
    return {
        "name": topology.name,
        "file": source or "",
        "regions": {r.name: [sd.id for sd in r.subdomains] for r in topology.regions},
        "agents": len(topology.agents()),
    }


def read_state(paths: Paths) -> dict[str, Any] | None:
    try:
        data = json.loads(paths.state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"components": [], "corrupt": True}
    return data if isinstance(data, dict) else {"components": [], "corrupt": True}


def write_json_atomic(path: pathlib.Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def live_components(state: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    comps = state.get("components") or []
    return [
        c
        for c in comps
        if isinstance(c, Mapping) and is_alive(int(c.get("pid") or 0), float(c.get("create_time") or 0))
    ]


def clear_state(paths: Paths) -> None:
    for p in [paths.state, *(paths.run.glob("*.json") if paths.run.is_dir() else [])]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        parts.insert(0, root)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DOMAINOS_MASTER", None)  # the daemons are told their peers explicitly
    return env


@dataclass
class Component:
    """One daemon process of the local federation."""

    name: str
    kind: str
    pid: int
    log: str
    ready_file: str
    config: str
    create_time: float = 0.0
    subdomain: str = ""
    listen: str = ""
    metrics: str = ""
    #: The web console's URL (masters only).
    console: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "pid": self.pid,
            "create_time": self.create_time,
            "log": self.log,
            "metrics": self.metrics,
            **({"console": self.console} if self.console else {}),
            "listen": self.listen,
            "config": self.config,
            **({"subdomain": self.subdomain} if self.subdomain else {}),
        }

    def exit_code(self) -> int | None:
        if self.proc is not None:
            return self.proc.poll()
        return None if is_alive(self.pid, self.create_time) else -1


class Launcher:
    """Starts a topology's daemons in order, waits until the master sees every agent ready."""

    def __init__(
        self,
        paths: Paths,
        topology: Topology,
        *,
        store: str | None = None,
        topology_file: str | None = None,
        timeout: float = 60.0,
        python: str = sys.executable,
        say: Callable[[str], None] | None = None,
        insecure: bool = False,
    ) -> None:
        self.paths = paths
        #: The admin token of this federation (from the master's bootstrap file).
        self.token: str | None = None
        #: Plaintext everywhere (``up --insecure``); otherwise mutual TLS with ``self.pki``.
        self.insecure = insecure
        self.pki: dict[str, CertFiles] = {}
        self.topology = topology
        self.store = store
        self.topology_file = topology_file
        self.timeout = timeout
        self.python = python
        self.say = say or (lambda _m: None)
        self.components: list[Component] = []
        self.master = ""
        self.started_at = 0.0
        self._deadline = 0.0

    # -- checks ---------------------------------------------------------------

    def refuse_if_running(self) -> None:
        """Raise FailedPrecondition when a federation from this home still has live processes."""
        state = read_state(self.paths)
        if state is None:
            return
        alive = live_components(state)
        if alive:
            home = "" if self.paths.home == default_home() else f" --home {self.paths.home}"
            raise FailedPrecondition(
                f"a local federation from {self.paths.home} is already running "
                f"({len(alive)} processes, master at {state.get('master') or 'starting'}); "
                f"stop it first with `domainctl down{home}`"
            )
        clear_state(self.paths)  # stale: every process of it is gone

    # -- start ----------------------------------------------------------------

    def _spawn(self, kind: str, ident: str, cfg: Mapping[str, Any], *, subdomain: str = "") -> Component:
        import yaml

        name = component_name(kind, ident)
        cfg_path = self.paths.config_file(name)
        cfg_path.write_text(
            f"# written by `domainctl up`: {kind} {ident or ''}\n"
            + yaml.safe_dump(dict(cfg), sort_keys=False),
            encoding="utf-8",
        )
        ready = self.paths.ready(name)
        ready.unlink(missing_ok=True)
        log_path = self.paths.log(name)
        argv = [
            self.python, "-m", MODULES[kind],
            "--config", str(cfg_path),
            "--ready-file", str(ready),
            "--log-format", "json",
        ]  # fmt: skip
        with open(log_path, "ab") as logf:
            logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} domainctl up: {' '.join(argv)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_child_env(),
                cwd=str(self.paths.local),
            )
        comp = Component(
            name=name,
            kind=kind,
            pid=proc.pid,
            log=str(log_path),
            ready_file=str(ready),
            config=str(cfg_path),
            create_time=process_start_time(proc.pid),
            subdomain=subdomain,
            proc=proc,
        )
        self.components.append(comp)
        return comp

    def _failed(self, comp: Component, why: str) -> StartupFailed:
        return StartupFailed(
            f"{comp.name} {why}; its log: {comp.log}", component=comp.name, log_tail=log_tail(comp.log)
        )

    def _check_running(self, comps: Iterable[Component]) -> None:
        for comp in comps:
            code = comp.exit_code()
            if code is not None:
                raise self._failed(comp, f"exited during startup (exit status {code})")

    def _wait_ready(self, comps: Sequence[Component]) -> None:
        pending = list(comps)
        while pending:
            for comp in list(pending):
                info = _read_ready(comp.ready_file, comp.pid)
                if info is not None:
                    comp.listen = str(info.get("listen") or "")
                    comp.metrics = str(info.get("metrics") or "")
                    comp.console = str(info.get("console") or "")
                    pending.remove(comp)
            self._check_running(pending)
            if not pending:
                break
            if time.monotonic() > self._deadline:
                raise self._failed(pending[0], f"did not become ready within {self.timeout:g}s")
            time.sleep(_POLL_S)

    def _wait_federation(self) -> None:
        from dsdk._retry import NO_RETRY

        want = expected_agents(self.topology)
        last_problem = "the master did not answer"
        seen: dict[str, Any] = {}
        with self.client(timeout=2.0, retry=NO_RETRY) as client:
            while True:
                self._check_running(self.components)
                try:
                    seen = {sd.subdomain_id: sd for r in client.domains() for sd in r.subdomains}
                    missing = [
                        sid for sid, n in want.items()
                        if sid not in seen or not seen[sid].connected or seen[sid].nodes_ready < n
                    ]  # fmt: skip
                    if not missing:
                        return
                    last_problem = ""
                except DomainOSError as exc:
                    missing = list(want)
                    last_problem = str(exc)
                if time.monotonic() > self._deadline:
                    raise self._not_ready(client, missing, seen if not last_problem else {}, last_problem)
                time.sleep(0.2)

    def _not_ready(
        self, client: Any, missing: list[str], seen: Mapping[str, Any], problem: str
    ) -> StartupFailed:
        by_name = {c.name: c for c in self.components}
        if problem:
            return self._failed(by_name["master"], f"did not answer ListDomains ({problem})")
        sid = missing[0]
        sd = seen.get(sid)
        if sd is None or not sd.connected:
            return self._failed(by_name[component_name("subdomain", sid)], "is not connected to the master")
        want = [p.node_id for p in self.topology.agents() if p.subdomain == sid]
        try:
            ready = {n.node_id for n in client.nodes(sid) if n.state == "ready"}
        except DomainOSError:
            ready = set()
        late = [n for n in want if n not in ready] or want
        comp = by_name[component_name("agent", late[0])]
        others = f" (and {len(late) - 1} more agents)" if len(late) > 1 else ""
        return self._failed(
            comp,
            f"is not ready in sub-domain {sid} after {self.timeout:g}s: "
            f"{sd.nodes_ready}/{len(want)} agents ready{others}",
        )

    def start(self) -> dict[str, Any]:
        """Start everything; returns the state written to ``cluster.json``. Raises StartupFailed."""
        n_agents = len(self.topology.agents())
        if n_agents > MAX_LOCAL_AGENTS:
            raise InvalidArgument(
                f"{n_agents} agents is too many processes for one machine; at most {MAX_LOCAL_AGENTS}",
                field="topology",
            )
        for d in (self.paths.local, self.paths.logs, self.paths.run, self.paths.config, self.paths.agents):
            d.mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        self._deadline = time.monotonic() + self.timeout
        if not self.insecure:
            self.say(f"issuing certificates (mutual TLS) in {self.paths.pki}")
            self.pki = issue_local_pki(self.paths, self.topology)

        replicas = self.topology.masters
        self.say(
            "starting the master" if replicas == 1 else f"starting {replicas} master replicas (one leads)"
        )
        listens = (
            [LOOPBACK_ANY_PORT]
            if replicas == 1
            else [f"127.0.0.1:{p}" for p in free_loopback_ports(replicas)]
        )
        cluster = listens if replicas > 1 else []
        masters = []
        for i, listen in enumerate(listens, start=1):
            ident = "" if i == 1 else str(i)
            masters.append(
                self._spawn(
                    "master",
                    ident,
                    master_config(
                        self.paths,
                        self.store,
                        tls=self._tls("master", ident),
                        topology_file=self.topology_file,
                        ident=MASTER_ID if i == 1 else f"master-{i}",
                        listen=listen,
                        cluster=cluster,
                        console=console_listen() if i == 1 else LOOPBACK_ANY_PORT,
                    ),
                )
            )
            self.save("starting")
            self._wait_ready([masters[-1]])  # the first one leads (it mints the admin token)
        master = masters[0]
        self.master = ",".join(m.listen for m in masters)
        if not master.listen:
            raise self._failed(master, "wrote a ready file without a 'listen' address")
        self._keep_admin_token()
        self.save("starting")

        subs: dict[str, Component] = {}
        for region, sd in self.topology.subdomains():
            cfg = subdomain_config(
                self.paths, region.name, sd, self.master, self.store, tls=self._tls("subdomain", sd.id)
            )
            subs[sd.id] = self._spawn("subdomain", sd.id, cfg, subdomain=sd.id)
        self.say(f"starting {_plural(len(subs), 'sub-domain')}")
        self.save("starting")
        self._wait_ready(list(subs.values()))

        agents = []
        # Agents run as root run tasks as an unprivileged user; that user must be able to run
        # this Python (DSDK workers do). When it cannot (a root-only interpreter, e.g. under
        # /root), this one-user federation runs tasks as the user who started it, and says so.
        as_me = False
        if os.geteuid() == 0:
            problem = python_for_tasks_problem()
            if problem:
                as_me = True
                self.say(
                    f"tasks run as root: the unprivileged task user cannot run this Python ({problem}); "
                    "install DomainOS where other users can read it to keep tasks unprivileged"
                )
        for plan in self.topology.agents():
            cfg = agent_config(
                self.paths,
                plan,
                subs[plan.subdomain].listen,
                tls=self._tls("agent", plan.node_id),
                task_tls=self._tls("tasks", plan.node_id),
                tasks_as_agent_user=as_me,
            )
            agents.append(self._spawn("agent", plan.node_id, cfg, subdomain=plan.subdomain))
        self.say(f"starting {_plural(len(agents), 'agent')}")
        self.save("starting")
        self._wait_ready(agents)

        self.say("waiting for every agent to be ready")
        self._wait_federation()
        return self.save("running")

    def _tls(self, kind: str, ident: str = "") -> CertFiles | None:
        return None if self.insecure else self.pki[component_name(kind, ident)]

    def _keep_admin_token(self) -> None:
        """Make the master's admin token this home's credential for its address, so later
        commands (and the README's two) need no `domainctl login`."""
        from dsdk._credentials import check_token_text, save_token, token_for

        try:
            text = self.paths.admin_token.read_text(encoding="utf-8")
        except FileNotFoundError:  # the store already had an admin: keep what is saved
            self.token = token_for(self.master, home=self.paths.home, env={})
            return
        self.token = check_token_text(text)
        save_token(self.master, self.token, default=False, home=self.paths.home, env={})

    @property
    def client_tls(self) -> CertFiles | None:
        """The client certificate recorded in ``cluster.json`` (None when insecure)."""
        return None if self.insecure else self.pki.get("client")

    def client(self, **kw: Any) -> Any:
        """A :class:`dsdk.Client` for this federation's master, with its client certificate."""
        from dsdk import Client

        return Client(self.master, tls=self.client_tls, insecure=self.insecure, token=self.token, **kw)

    def state(self, status: str) -> dict[str, Any]:
        tls = self.client_tls
        return {
            "status": status,
            "master": self.master,
            **({"insecure": True} if self.insecure else {}),
            **({"tls": {"ca": tls.ca, "cert": tls.cert, "key": tls.key}} if tls is not None else {}),
            "home": str(self.paths.home),
            "started_at": self.started_at,
            "launcher_pid": os.getpid(),
            "components": [c.record() for c in self.components],
            "topology": topology_summary(self.topology, self.topology_file),
        }

    def save(self, status: str) -> dict[str, Any]:
        state = self.state(status)
        write_json_atomic(self.paths.state, state)
        return state

    # -- stop -----------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> tuple[int, int]:
        """Stop every component this launcher started and forget the federation."""
        result = stop_components([c.record() for c in self.components], timeout, say=self.say)
        for c in self.components:
            if c.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=1)
        clear_state(self.paths)
        return result

    def foreground(self, out: TextIO, err: TextIO) -> int:
        """Stay up until SIGINT/SIGTERM (or until every component has exited), then stop."""
        stop = threading.Event()
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            # ValueError off the main thread: then only the child check ends the loop.
            with contextlib.suppress(ValueError):
                previous[sig] = signal.signal(sig, lambda _s, _f: stop.set())
        reported: set[str] = set()
        try:
            print("running in the foreground: Ctrl-C stops the federation", file=out, flush=True)
            while not stop.wait(0.5):
                exited = [c for c in self.components if c.exit_code() is not None]
                for c in exited:
                    if c.name not in reported:
                        reported.add(c.name)
                        if c.exit_code() == 0:
                            continue  # a graceful stop (e.g. `domainctl down` from another terminal)
                        print(f"warning: {c.name} exited (status {c.exit_code()}); log: {c.log}", file=err)
                        tail = log_tail(c.log, 10)
                        if tail:
                            print(indent(tail), file=err, flush=True)
                if len(exited) == len(self.components):
                    if not self.paths.state.exists():  # `domainctl down` from elsewhere
                        print("the local federation was stopped (domainctl down)", file=out)
                        return 0
                    print("every component has exited", file=err)
                    clear_state(self.paths)
                    return 1
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        print("stopping the local federation", file=out, flush=True)
        stopped, killed = self.stop()
        print(f"stopped {stopped} components" + (f" ({killed} killed)" if killed else ""), file=out)
        return 0


def _read_ready(path: str, pid: int) -> dict[str, Any] | None:
    try:
        data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or int(data.get("pid") or 0) != pid:
        return None  # not yet written, or a stale file from an earlier run
    return data


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def default_home() -> pathlib.Path:
    from dsdk._address import domainos_home

    return domainos_home().resolve()


def resolve_paths(home: str | None) -> Paths:
    from dsdk._address import domainos_home

    return Paths(domainos_home(home).resolve())


# -- commands ---------------------------------------------------------------------------------


def summary_text(state: Mapping[str, Any], paths: Paths) -> str:
    comps = state["components"]
    counts = {k: sum(1 for c in comps if c["kind"] == k) for k in KINDS}
    custom = paths.home != default_home()
    env = f"DOMAINOS_HOME={paths.home} " if custom else ""
    lines = [
        f"DomainOS local federation is up (home {paths.home})",
        f"  master:      {state['master']}",
        f"  components:  {len(comps)} ({counts['master']} master, {_plural(counts['subdomain'], 'sub-domain')}, "
        f"{_plural(counts['agent'], 'agent')})",
        f"  logs:        {paths.logs}/",
        *(
            f"  console:     {c['console']}  (log in with the token in {paths.admin_token})"
            for c in comps
            if c["kind"] == "master" and c.get("console")
        ),
        "  metrics:",
        *(
            f"    {c['name']:<{max(len(x['name']) for x in comps)}}  http://{c['metrics']}/metrics"
            for c in comps
            if c.get("metrics")
        ),
        f"next: {env}domainctl domains   |   {env}domainctl run --wait -- python3 -c 'print(42)'   |   "
        f"domainctl down{' --home ' + str(paths.home) if custom else ''}",
    ]
    return "\n".join(lines)


def start_federation(
    paths: Paths, topology: Topology, ns: argparse.Namespace, *, verbose: bool
) -> tuple[Launcher, dict[str, Any]] | None:
    """Start a federation; on failure print why with the culprit's log tail, stop it, return None."""
    say = (lambda m: print(f"==> {m}", flush=True)) if verbose else None
    insecure = bool(getattr(ns, "insecure", False))
    launcher = Launcher(
        paths,
        topology,
        store=check_store(getattr(ns, "store", None)),
        topology_file=getattr(ns, "topology", None),
        timeout=float(getattr(ns, "timeout", 60.0) or 60.0),
        say=say,
        insecure=insecure,
    )
    if insecure:
        print(f"warning: --insecure: {INSECURE_WARNING}", file=sys.stderr, flush=True)
    launcher.refuse_if_running()
    try:
        return launcher, launcher.start()
    except StartupFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.log_tail:
            print(f"--- last lines of {exc.component}'s log ---\n{exc.log_tail}", file=sys.stderr)
        print("stopping what was started", file=sys.stderr)
        launcher.stop(timeout=5.0)
        return None
    except BaseException:
        launcher.stop(timeout=5.0)
        raise


def cmd_up(ns: argparse.Namespace) -> int:
    paths = resolve_paths(ns.home)
    topology = load_topology(ns.topology)
    started = start_federation(paths, topology, ns, verbose=True)
    if started is None:
        return 1
    launcher, state = started
    print(summary_text(state, paths), flush=True)
    if ns.detach:
        return 0
    return launcher.foreground(sys.stdout, sys.stderr)


def cmd_down(ns: argparse.Namespace) -> int:
    paths = resolve_paths(ns.home)
    state = read_state(paths)
    if state is None:
        print(f"no local federation is running (home {paths.home})")
        return 0
    comps = [c for c in state.get("components") or [] if isinstance(c, Mapping)]
    if not live_components(state):
        clear_state(paths)
        print(f"no local federation is running (home {paths.home}); removed its stale state file")
        return 0
    stopped, killed = stop_components(
        comps, ns.timeout, say=lambda m: print(f"warning: {m}", file=sys.stderr)
    )
    clear_state(paths)
    if state.get("master"):  # its port is not used again: drop the saved token for it
        from dsdk._credentials import forget_token

        with contextlib.suppress(DomainOSError, OSError):
            forget_token(str(state["master"]), home=paths.home, env={})
    print(f"stopped the local federation: {stopped} components" + (f" ({killed} killed)" if killed else ""))
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    paths = resolve_paths(ns.home)
    state = read_state(paths)
    comps = [c for c in (state or {}).get("components") or [] if isinstance(c, Mapping)]
    alive = {
        str(c.get("name")): is_alive(int(c.get("pid") or 0), float(c.get("create_time") or 0)) for c in comps
    }
    if ns.output == "json":
        print(_render.to_json({**(state or {}), "alive": alive, "running": any(alive.values())}))
        return 0
    if not comps:
        print(f"no local federation is running (home {paths.home})")
        return 0
    up = sum(alive.values())
    print(
        f"local federation ({state.get('status', '?') if state else '?'}): master {state.get('master') or '-' if state else '-'}; "
        f"{up}/{len(comps)} processes running (home {paths.home})"
    )
    print(_render.render_components(comps, alive))
    return 0


def cmd_compose(ns: argparse.Namespace) -> int:
    """``domainctl compose``: write the docker-compose deployment of a topology (see ``_compose``)."""
    from ._compose import issue_pki, render

    topology = load_topology(ns.topology)
    out = pathlib.Path(ns.out)
    files = render(topology, image=ns.image)
    for rel, text in sorted(files.items()):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path)
    if getattr(ns, "pki", False):
        for path_text in issue_pki(topology, str(out / "pki")):
            print(path_text)
    else:
        print(
            f"note: the daemons run mutual TLS: create {out / 'pki'} with `domainctl compose --pki` "
            f"or `domainctl certs init --dir {out / 'pki'}` and `certs issue` per component",
            file=sys.stderr,
        )
    return 0
