"""The agent's configuration: a frozen dataclass loaded once from YAML plus flags."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

from domainos.config import TLSConfig, check_address, check_transport
from domainos.errors import ConfigError, InvalidArgument
from domainos.model import check_node_id
from domainos.topology import SimInventory, check_block, check_datasets
from node_agent._docker import default_docker_host
from node_agent._runner import DEFAULT_TASK_USER, TaskUsers

_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,252}$")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")
SIMULATED_LABEL = "domainos.io/simulated"


_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


def default_advertise_host(subdomains: list[str]) -> str:
    """127.0.0.1 when every sub-domain is on loopback (all on one machine), else the host name."""
    if subdomains and all(a.startswith(_LOOPBACK) for a in subdomains):
        return "127.0.0.1"
    return socket.gethostname() or "127.0.0.1"


@dataclass(frozen=True)
class AgentConfig:
    """Configuration of one node agent.

    Empty ``node_id`` and ``state_dir`` are filled in on construction (host name, and
    ``~/.domainos/agent/<node_id>``); a simulated agent without an ``inventory`` gets the
    default :class:`~domainos.topology.SimInventory`.
    """

    #: Unique name of this node inside its sub-domain (default: the host name).
    node_id: str = ""
    #: Sub-domain addresses (``HOST:PORT``), tried in order; at least one.
    subdomains: list[str] = field(default_factory=list)
    #: Where task directories (logs, ``status.json``) live.
    state_dir: str = ""
    #: Prometheus endpoint (``HOST:PORT``, port 0 picks one); empty string disables it.
    metrics_listen: str = "127.0.0.1:0"
    #: Declare the inventory instead of discovering it (labelled simulated everywhere).
    simulated: bool = False
    #: The declared inventory; only for simulated agents.
    inventory: SimInventory | None = None
    #: Extra node labels.
    labels: dict[str, str] = field(default_factory=dict)
    #: The block (switch tier) the node sits under; "" = none declared.
    block: str = ""
    #: Dataset shards this node declares it holds (``{corpus: [0, 1]}``), besides the ones found
    #: under ``<data_dir>/datasets/<name>/<shard>/``.
    datasets: dict[str, list[int]] = field(default_factory=dict)
    #: Where local dataset shards live (``datasets/<name>/<shard>/``); default ``<state_dir>/data``.
    #: Rescanned at every full-report interval: a shard that appears is reported within one.
    data_dir: str = ""
    #: Where tasks keep checkpoints (``dsdk.checkpoint``; DOMAINOS_CHECKPOINT_DIR); default
    #: ``<data_dir>/checkpoints``. Point every node at shared storage (the same path everywhere)
    #: for a task rescheduled on another node to resume from its last checkpoint.
    checkpoint_dir: str = ""
    log_level: str = "info"
    #: ``json`` or ``text``.
    log_format: str = "json"
    #: Usage deltas at most this often; the sub-domain's ``Registered`` overrides it.
    report_interval_s: float = 1.0
    #: A full report at least this often; the sub-domain's ``Registered`` overrides it.
    full_sync_interval_s: float = 5.0
    #: SIGTERM -> SIGKILL grace for a ``StopTask`` without its own and for shutdown.
    stop_grace_s: float = 5.0
    #: On graceful shutdown, stop every running task (so nothing outlives the agent). False: they
    #: keep running and the next agent on this state directory re-adopts them.
    stop_tasks_on_shutdown: bool = True
    #: Informational: the region this node is in (also a node label).
    region: str = ""
    #: When the agent runs as root, tasks run as this unprivileged user (name or uid), never as
    #: root; ignored when the agent is not root (tasks then run as the agent's own user).
    task_user: str = DEFAULT_TASK_USER
    #: Tenant -> user (name or uid) its tasks run as instead of ``task_user``, to separate tenants.
    tenant_users: dict[str, str] = field(default_factory=dict)
    #: Run tasks as the agent's own user, even root (``task_user`` is then ignored). Only for a
    #: one-user federation on a developer's machine (``domainctl up`` sets it when the task user
    #: could not run the agent's Python); never on nodes shared by tenants.
    tasks_as_agent_user: bool = False
    #: A client certificate (role ``client``) copied into each task's directory for tasks that call
    #: the master (``DOMAINOS_TLS_CA/CERT/KEY``); never the agent's own certificate.
    task_client_tls: TLSConfig | None = None
    #: Mutual TLS (the cluster CA, this agent's certificate and key); required unless ``insecure``.
    tls: TLSConfig | None = None
    #: Run without TLS (plaintext, unauthenticated); only for local tests. Logged at every start.
    insecure: bool = False
    #: The host (name or IP) this node's task processes serve on and publish to their peers (DSDK
    #: workers, collectives), given to tasks as ``DOMAINOS_NODE_HOST``. Default: 127.0.0.1 when
    #: every sub-domain address is on loopback (a one-machine federation), else this host's name.
    advertise_host: str = ""
    #: Run ``runtime: docker`` tasks as containers on the Docker engine at ``docker_host`` when one
    #: answers there (the node is then labelled ``domainos.io/docker=true``, and
    #: ``domainos.io/docker-gpus=true`` when the engine has the nvidia runtime). False: never.
    docker_runtime: bool = True
    #: The Docker engine (``unix:///path`` or ``tcp://host:port``); default ``DOCKER_HOST``, else
    #: ``unix:///var/run/docker.sock``.
    docker_host: str = ""

    def __post_init__(self) -> None:
        # Defaults that depend on the machine or on other fields (frozen: set through object).
        if not self.node_id:
            object.__setattr__(self, "node_id", socket.gethostname() or "localhost")
        if not self.state_dir:
            path = os.path.join("~", ".domainos", "agent", self.node_id)
            object.__setattr__(self, "state_dir", os.path.expanduser(path))
        if not self.data_dir:
            object.__setattr__(self, "data_dir", os.path.join(self.state_dir, "data"))
        if not self.checkpoint_dir:
            object.__setattr__(self, "checkpoint_dir", os.path.join(self.data_dir, "checkpoints"))
        if self.simulated and self.inventory is None:
            object.__setattr__(self, "inventory", SimInventory())
        if not self.advertise_host:
            object.__setattr__(self, "advertise_host", default_advertise_host(self.subdomains))
        if not self.docker_host:
            object.__setattr__(self, "docker_host", default_docker_host())

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field for anything a daemon cannot run with."""
        try:
            check_node_id(self.node_id, "node_id")
        except InvalidArgument as exc:
            raise ConfigError(exc.message, field=exc.field) from None
        if not self.subdomains:
            raise ConfigError("at least one sub-domain address (HOST:PORT) is required", field="subdomains")
        for i, address in enumerate(self.subdomains):
            check_address(address, f"subdomains[{i}]")
            if address.rpartition(":")[2] == "0":
                raise ConfigError(f"port 0 cannot be dialled, got {address!r}", field=f"subdomains[{i}]")
        check_address(self.metrics_listen, "metrics_listen", allow_empty=True)
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(
                f"expected one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}", field="log_level"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"expected one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}", field="log_format"
            )
        for name in ("report_interval_s", "full_sync_interval_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise ConfigError(f"must be greater than 0 and at most 3600, got {value}", field=name)
        if not 0 <= self.stop_grace_s <= 3600:
            raise ConfigError(f"must be between 0 and 3600, got {self.stop_grace_s}", field="stop_grace_s")
        if self.inventory is not None:
            if not self.simulated:
                raise ConfigError(
                    "an inventory is only declared for simulated agents (set simulated: true)",
                    field="inventory",
                )
            self.inventory.validate()
        for key in self.labels:
            if not _LABEL_KEY_RE.match(key):
                raise ConfigError(f"{key!r} is not a valid label key", field="labels")
        if self.block:
            check_block(self.block, "block")
        check_datasets(self.datasets, "datasets")
        if not self.docker_host.startswith(
            ("unix://", "tcp://", "npipe://", "ssh://", "http://", "https://")
        ):
            raise ConfigError(
                f"expected unix:///path/docker.sock or tcp://host:port, got {self.docker_host!r}",
                field="docker_host",
            )
        self._validate_task_isolation()
        check_transport(self.tls, self.insecure)

    def _validate_task_isolation(self) -> None:
        """``task_user``, ``tenant_users`` and ``task_client_tls``."""
        if self.tasks_as_agent_user and self.tenant_users:
            raise ConfigError(
                "tasks_as_agent_user runs every task as the agent's user: tenants cannot be separated",
                field="tenant_users",
            )
        for name, user in (("task_user", self.task_user), *self._tenant_fields()):
            if user.strip() in ("root", "0"):
                raise ConfigError(
                    f"tasks never run as root; name an unprivileged user, e.g. {DEFAULT_TASK_USER}",
                    field=name,
                )
        if os.geteuid() == 0:  # only a root agent switches users: look them up where they are used
            TaskUsers.resolve(self.task_user, self.tenant_users)
        if self.task_client_tls is None:
            return
        self.task_client_tls.check("task_client_tls")
        if self.tls is not None:
            for name in ("cert", "key"):
                mine = os.path.realpath(os.path.expanduser(getattr(self.tls, name)))
                if os.path.realpath(os.path.expanduser(getattr(self.task_client_tls, name))) == mine:
                    raise ConfigError(
                        f"is the agent's own {name} (tls.{name}); tasks get a client certificate of "
                        "their own (role client)",
                        field=f"task_client_tls.{name}",
                    )

    def _tenant_fields(self) -> list[tuple[str, str]]:
        return [(f"tenant_users.{tenant}", user) for tenant, user in self.tenant_users.items()]
