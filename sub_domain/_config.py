"""Sub-domain manager configuration: one frozen dataclass, loaded once from YAML plus flags."""

from __future__ import annotations

import math
from dataclasses import dataclass

from domainos.config import TLSConfig, check_address, check_transport
from domainos.errors import ConfigError
from domainos.ratelimit import check_rate
from domainos.topology import check_name

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")


@dataclass(frozen=True)
class SubDomainConfig:
    """Everything a sub-domain manager needs; see ``docs/protocol.md`` for the intervals."""

    #: Sub-domain id (a name: lower-case letters, digits and '-').
    id: str
    #: Region the sub-domain belongs to.
    region: str
    #: gRPC listen address for agents (``host:port``, port 0 picks one).
    listen: str = "127.0.0.1:7100"
    #: Address told to the master in ``Hello``; empty = the bound listen address.
    advertise: str = ""
    #: Master address ``host:port``; empty = run standalone (no upstream stream).
    master: str = ""
    #: Store URL for durable transitions (``memory://``, ``sqlite:///abs/path.db``, ``etcd://h:p``).
    store: str = "memory://"
    #: Prometheus ``/metrics`` listen address; empty disables it.
    metrics_listen: str = "127.0.0.1:0"
    #: Most nodes that may be registered (ready or suspect) at once.
    max_nodes: int = 10_000
    #: Told to agents: send a usage delta at most this often.
    report_interval_s: float = 1.0
    #: Told to agents: send a full report at least this often (it repairs a view a lost delta
    #: left wrong; liveness does not depend on it).
    full_sync_interval_s: float = 30.0
    #: Told to agents: send something (an empty delta when nothing else is due) at least this often.
    heartbeat_interval_s: float = 2.0
    #: A ready node heard nothing from for this long becomes suspect and is probed on its stream.
    silent_after_s: float = 3.0
    #: A probed node that does not answer (with anything) within this long is dead.
    probe_timeout_s: float = 1.0
    #: A node whose stream ended and that has not registered again within this long is dead.
    dead_after_s: float = 3.0
    #: Send a changed summary to the master at most this often.
    summary_interval_s: float = 1.0
    #: Messages per second each agent stream may send (0 = unlimited), with bursts of ...
    agent_message_rate_per_s: float = 200.0
    agent_message_burst: int = 1_000
    #: Registrations per second per node id (reconnect storms), with bursts of ...
    register_rate_per_s: float = 2.0
    register_burst: int = 10
    #: The health policy (``sub_domain._health``): cordon and drain nodes on their signals.
    health_auto: bool = True
    #: Risk score (0..1) at which a node is drained before it fails.
    health_risk_threshold: float = 0.7
    #: How long a sign (an ECC rise, a warning Xid, a task failure) counts towards the risk.
    health_window_s: float = 600.0
    #: SIGTERM -> SIGKILL grace of each task a drain stops (time to save a checkpoint).
    drain_grace_s: float = 30.0
    #: A graceful drain (a node at risk) lets tasks that cannot checkpoint finish this long.
    drain_timeout_s: float = 600.0
    log_level: str = "info"
    log_format: str = "json"
    #: Mutual TLS (the cluster CA, this sub-domain's certificate and key); required unless ``insecure``.
    tls: TLSConfig | None = None
    #: Run without TLS (plaintext, unauthenticated); only for local tests. Logged at every start.
    insecure: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field on any bad value."""
        check_name(self.id, "id")
        check_name(self.region, "region")
        check_address(self.listen, "listen")
        check_address(self.advertise, "advertise", allow_empty=True)
        # One master, or every replica of an HA master: "host:port,host:port,..." (the sub-domain
        # follows the leader's address the followers give).
        for i, address in enumerate(a.strip() for a in self.master.split(",")) if self.master else ():
            check_address(address, "master" if "," not in self.master else f"master[{i}]")
        check_address(self.metrics_listen, "metrics_listen", allow_empty=True)
        if not self.store:
            raise ConfigError(
                "a store URL is required (e.g. memory:// or sqlite:///abs/path.db)", field="store"
            )
        if not 1 <= self.max_nodes <= 100_000:
            raise ConfigError(f"must be between 1 and 100000, got {self.max_nodes}", field="max_nodes")
        for name in (
            "report_interval_s",
            "full_sync_interval_s",
            "heartbeat_interval_s",
            "silent_after_s",
            "probe_timeout_s",
            "dead_after_s",
            "summary_interval_s",
            "health_window_s",
            "drain_timeout_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"must be a positive number of seconds, got {value!r}", field=name)
        check_rate(
            self.agent_message_rate_per_s,
            self.agent_message_burst,
            "agent_message_rate_per_s",
            "agent_message_burst",
        )
        if not 0 < self.health_risk_threshold <= 1:
            raise ConfigError(
                f"must be in (0, 1], got {self.health_risk_threshold!r}", field="health_risk_threshold"
            )
        if not 0 <= self.drain_grace_s <= 3600:
            raise ConfigError(
                f"must be between 0 and 3600 seconds, got {self.drain_grace_s!r}", field="drain_grace_s"
            )
        check_rate(self.register_rate_per_s, self.register_burst, "register_rate_per_s", "register_burst")
        if self.silent_after_s <= self.heartbeat_interval_s:
            raise ConfigError(
                f"must be greater than heartbeat_interval_s ({self.heartbeat_interval_s}), got "
                f"{self.silent_after_s}: every healthy node would be suspected (and probed) between "
                "two heartbeats",
                field="silent_after_s",
            )
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(
                f"expected one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}", field="log_level"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"expected one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}", field="log_format"
            )
        check_transport(self.tls, self.insecure)
