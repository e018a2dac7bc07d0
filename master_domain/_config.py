"""The master's configuration: one frozen dataclass, loaded once from YAML plus flags."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from domainos.config import TLSConfig, check_address, check_transport
from domainos.errors import ConfigError
from domainos.ratelimit import check_rate
from domainos.topology import Topology, load_topology

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_STORE_SCHEMES = ("sqlite:///", "memory://", "etcd://")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("json", "text")


@dataclass(frozen=True)
class MasterConfig:
    """Settings of one master domain process (``python -m master_domain --config FILE``)."""

    #: Name of this master; sent to sub-domains in ``Welcome`` and shown by ``GetClusterInfo``.
    id: str = "master-1"
    #: ``host:port`` the gRPC server listens on (port 0 picks a free port).
    listen: str = "127.0.0.1:7070"
    #: Address given to tasks as ``DOMAINOS_MASTER``; empty = the bound listen address.
    advertise: str = ""
    #: Store URL: ``sqlite:///abs/path.db``, ``memory://`` or ``etcd://host:port``.
    store: str = "memory://"
    #: ``host:port`` of the Prometheus endpoint; empty disables it.
    metrics_listen: str = "127.0.0.1:0"
    #: ``host:port`` of the web console (``docs/console.md``): HTTPS with this master's server
    #: certificate when ``tls`` is set, plain HTTP otherwise; empty (the default) turns it off.
    console_listen: str = ""
    log_level: str = "info"
    log_format: str = "json"
    #: How often sub-domains may send summaries (told to them in ``Welcome``).
    summary_interval_s: float = 1.0
    #: A placement not confirmed (ASSIGNED) by its sub-domain within this time is re-placed -- if
    #: the sub-domain's stream is still up. Longer than a dead stream takes to notice (keepalive:
    #: 5 s + 5 s), so a placement whose confirmation a partition held is not placed twice.
    place_timeout_s: float = 15.0
    #: A disconnected sub-domain's tasks are kept this long; after it they become LOST and are
    #: retried by policy (no mass eviction on a short partition).
    subdomain_lost_grace_s: float = 30.0
    #: Largest page ``ListJobs`` returns (and its default).
    max_jobs_listed: int = 500
    #: When set and the store holds no usable admin token, the master mints one at start and
    #: writes it (``dos_...``) to this file with mode 0600; the secret is never logged.
    bootstrap_token_file: str = ""
    #: The audit log keeps about this many newest entries (pruned in batches).
    audit_max_entries: int = 100_000
    #: Requests per second each principal may make to DomainControl (0 = unlimited) ...
    rate_limit_per_s: float = 200.0
    #: ... with bursts of up to this many.
    rate_limit_burst: int = 400
    #: Messages per second each sub-domain stream may send (0 = unlimited), with bursts of ...
    subdomain_message_rate_per_s: float = 5_000.0
    subdomain_message_burst: int = 20_000
    #: Mutual TLS (the cluster CA, this master's certificate and key); required unless ``insecure``.
    tls: TLSConfig | None = None
    #: Run without TLS (plaintext, unauthenticated); only for local tests. Logged at every start.
    insecure: bool = False
    #: Path of the federation's topology file (regions' power budgets, inter-region links); empty =
    #: none (no power caps, no link data). Loaded and validated when the config is.
    topology: str = ""
    #: Client addresses of every master replica of this federation (HA): given to tasks as
    #: ``DOMAINOS_MASTER`` (a comma-separated list) so they find whichever leads. Empty = this
    #: master's ``advertise`` only.
    cluster: list[str] = field(default_factory=list)
    #: The leader's lease (seconds): a dead leader is replaced within about this long.
    leader_lease_s: int = 3
    #: At start, wait this long to win the election before serving as a follower.
    leader_wait_s: float = 2.0

    def load_topology(self) -> Topology | None:
        """The topology file named by ``topology`` (None when unset); ConfigError naming the field."""
        if not self.topology:
            return None
        try:
            return load_topology(self.topology)
        except ConfigError as exc:
            raise ConfigError(str(exc), field="topology") from None

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        if not _ID_RE.match(self.id):
            raise ConfigError(
                f"{self.id!r} is not a valid id: 1-63 letters, digits, '-', '_' or '.'", field="id"
            )
        check_address(self.listen, "listen")
        check_address(self.advertise, "advertise", allow_empty=True)
        for i, address in enumerate(self.cluster):
            check_address(address, f"cluster[{i}]")
        if not 1 <= self.leader_lease_s <= 60:
            raise ConfigError(
                f"must be between 1 and 60 seconds, got {self.leader_lease_s}", field="leader_lease_s"
            )
        if not 0 <= self.leader_wait_s <= 60:
            raise ConfigError(
                f"must be between 0 and 60 seconds, got {self.leader_wait_s}", field="leader_wait_s"
            )
        check_address(self.metrics_listen, "metrics_listen", allow_empty=True)
        check_address(self.console_listen, "console_listen", allow_empty=True)
        if not self.store.startswith(_STORE_SCHEMES):
            raise ConfigError(
                f"unsupported store URL {self.store!r}; allowed: sqlite:///ABS/PATH.db, memory://, "
                "etcd://HOST:PORT",
                field="store",
            )
        if self.log_level.lower() not in _LOG_LEVELS:
            raise ConfigError(
                f"unknown level {self.log_level!r}; allowed: {', '.join(_LOG_LEVELS)}", field="log_level"
            )
        if self.log_format not in _LOG_FORMATS:
            raise ConfigError(
                f"unknown format {self.log_format!r}; allowed: {', '.join(_LOG_FORMATS)}",
                field="log_format",
            )
        for name in ("summary_interval_s", "place_timeout_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise ConfigError(f"must be greater than 0 and at most 3600, got {value}", field=name)
        if not 0 <= self.subdomain_lost_grace_s <= 86400:
            raise ConfigError(
                f"must be between 0 and 86400, got {self.subdomain_lost_grace_s}",
                field="subdomain_lost_grace_s",
            )
        if not 1 <= self.max_jobs_listed <= 100_000:
            raise ConfigError(
                f"must be between 1 and 100000, got {self.max_jobs_listed}", field="max_jobs_listed"
            )
        if not 1 <= self.audit_max_entries <= 100_000_000:
            raise ConfigError(
                f"must be between 1 and 100000000, got {self.audit_max_entries}", field="audit_max_entries"
            )
        check_rate(self.rate_limit_per_s, self.rate_limit_burst, "rate_limit_per_s", "rate_limit_burst")
        check_rate(
            self.subdomain_message_rate_per_s,
            self.subdomain_message_burst,
            "subdomain_message_rate_per_s",
            "subdomain_message_burst",
        )
        check_transport(self.tls, self.insecure)
        self.load_topology()
