"""The topology file: which regions, sub-domains and agents make up a federation.

Read by ``domainctl up`` (local processes) and by ``deploy/`` (docker-compose) alike::

    version: 1
    name: local
    regions:
      - name: east
        subdomains:
          - id: east-1
            max_nodes: 10000
            agents:
              - count: 2                 # real hardware discovery
      - name: west
        subdomains:
          - id: west-1
            agents:
              - count: 2
                simulated: true          # declared inventory, labelled simulated everywhere
                inventory: {cpus: 16, memory: 64Gi, gpus: 8, gpu_model: H100-SXM-80GB}
              - name: l40s               # optional group name (default <sub-domain>-g<j>)
                count: 4
                simulated: true
                inventory:
                  cpus: 32
                  memory: 256Gi
                  gpus: 8
                  gpu_model: L40S
                  gpu_memory: 48Gi       # per GPU
                  nvlink_domain_size: 1  # GPUs per NVLink domain (default: all; 1 = no NVLink)
                  gpu_tdp_w: 350         # per GPU (default: by model, else 300)
                labels: {zone: a}        # extra node labels
                blocks: 2                # over blocks l40s-b1, l40s-b2 (or block: NAME for one)
                datasets: {corpus: [0, 1]}   # shards every agent of the group declares
        power_budget_kw: 40          # optional: the region's GPU power budget (0 = no cap)
    links:                           # optional: inter-region links, for the cross-region loss model
      - between: [east, west]
        bandwidth_gbps: 100
        distance_km: 1200
    masters: 3                       # optional: master replicas (HA; default 1)
    compose:                         # optional: only `domainctl compose` reads it
      etcd_members: 3                # 1, 3 or 5; first ports: see ComposeSpec
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from domainos import config as _config
from domainos.errors import ConfigError, InvalidArgument
from domainos.model import MAX_GPU_TDP_W, MAX_NODE_DATASET_SHARDS, DatasetShard, NodeInventory
from domainos.resources import parse_memory

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DEFAULT_MAX_NODES = 10_000
#: Board power (W) of a declared GPU by model, when ``gpu_tdp_w`` is not given: the first key
#: found in the upper-cased model name wins.
GPU_TDP_W = {"H100": 700, "H200": 700, "MI300X": 750, "A100": 400, "L40S": 350, "T4": 70}
DEFAULT_GPU_TDP_W = 300


def default_tdp_w(model: str) -> int:
    """The board power of a GPU model from :data:`GPU_TDP_W` (300 W for a model not in it)."""
    upper = model.upper()
    return next((w for key, w in GPU_TDP_W.items() if key in upper), DEFAULT_GPU_TDP_W)


def check_name(value: str, field_path: str) -> None:
    if not _NAME_RE.match(value):
        raise ConfigError(
            f"{value!r} is not a valid name: use 1-63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
            field=field_path,
        )


@dataclass(frozen=True)
class SimInventory:
    """A declared node inventory (for simulated agents)."""

    cpus: int = 8
    memory: str = "32Gi"
    gpus: int = 0
    gpu_model: str = ""
    #: Memory of each GPU.
    gpu_memory: str = "80Gi"
    #: ``false``: no NVLink at all (the same as ``nvlink_domain_size: 1``).
    nvlink: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    #: GPUs per NVLink domain: 0 (default) = every GPU of the node in one; 1 = no NVLink. Must
    #: divide ``gpus``; domain k holds GPUs k*size .. (k+1)*size-1.
    nvlink_domain_size: int = 0
    #: Board power of each GPU (W); 0 (default) = by model (:data:`GPU_TDP_W`, else 300).
    gpu_tdp_w: int = 0

    def validate(self) -> None:
        if self.cpus < 1 or self.cpus > 4096:
            raise ConfigError(f"must be between 1 and 4096, got {self.cpus}", field="inventory.cpus")
        parse_memory(self.memory, "inventory.memory")
        if self.gpus < 0 or self.gpus > 64:
            raise ConfigError(f"must be between 0 and 64, got {self.gpus}", field="inventory.gpus")
        if self.gpus and not self.gpu_model:
            raise ConfigError("is required when gpus > 0", field="inventory.gpu_model")
        parse_memory(self.gpu_memory, "inventory.gpu_memory")
        size = self.nvlink_domain_size
        if size < 0 or size > max(self.gpus, 1) or (size and self.gpus % size):
            raise ConfigError(
                f"must be 0 (all {self.gpus} GPUs in one domain) or a divisor of gpus={self.gpus} "
                f"(1 = no NVLink), got {size}",
                field="inventory.nvlink_domain_size",
            )
        if not self.nvlink and size > 1:
            raise ConfigError(
                f"nvlink: false means no NVLink, but nvlink_domain_size={size}; drop one of them",
                field="inventory.nvlink_domain_size",
            )
        if not 0 <= self.gpu_tdp_w <= MAX_GPU_TDP_W:
            raise ConfigError(
                f"must be between 0 (by model) and {MAX_GPU_TDP_W} W, got {self.gpu_tdp_w}",
                field="inventory.gpu_tdp_w",
            )

    @property
    def domain_size(self) -> int:
        """GPUs per NVLink domain (1 = none), resolved from ``nvlink`` and ``nvlink_domain_size``."""
        if not self.nvlink or self.gpus == 0:
            return 1
        return self.nvlink_domain_size or self.gpus

    @property
    def tdp_w(self) -> int:
        """Board power of each GPU (W): declared, else by model."""
        return self.gpu_tdp_w or (default_tdp_w(self.gpu_model) if self.gpus else 0)

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def gpu_memory_bytes(self) -> int:
        return parse_memory(self.gpu_memory)


def check_block(value: str, field_path: str) -> None:
    """A block (switch tier) name, as :class:`~domainos.model.NodeInventory` accepts it."""
    try:
        NodeInventory("n", block=value).validate()
    except InvalidArgument as exc:
        raise ConfigError(exc.message, field=field_path) from None


def check_datasets(datasets: dict[str, list[int]], field_path: str) -> None:
    """Declared dataset shards: valid names, distinct shards >= 0, at most the per-node cap."""
    total = 0
    for name, shards in datasets.items():
        where = f"{field_path}.{name}"
        if not shards:
            raise ConfigError("list at least one shard, e.g. [0, 1]", field=where)
        if any(s < 0 for s in shards) or len(set(shards)) != len(shards):
            raise ConfigError(f"shards must be distinct integers >= 0, got {shards}", field=where)
        total += len(shards)
        try:
            NodeInventory("n", datasets=(DatasetShard(name, 0),)).validate()
        except InvalidArgument as exc:
            raise ConfigError(exc.message, field=where) from None
    if total > MAX_NODE_DATASET_SHARDS:
        raise ConfigError(f"at most {MAX_NODE_DATASET_SHARDS} shards per node, got {total}", field=field_path)


@dataclass(frozen=True)
class AgentGroup:
    count: int = 1
    simulated: bool = False
    inventory: SimInventory | None = None
    labels: dict[str, str] = field(default_factory=dict)
    #: Names the group's blocks (``<name>-b<i>``); default ``<sub-domain id>-g<j>`` (j from 1).
    name: str = ""
    #: The block (switch tier) every agent of the group sits under; "" = none.
    block: str = ""
    #: Spread the group's agents over this many blocks ``<name>-b1..bN``, in contiguous runs.
    blocks: int = 0
    #: Dataset shards every agent of the group declares (``{corpus: [0, 1]}``).
    datasets: dict[str, list[int]] = field(default_factory=dict)

    def validate(self) -> None:
        if self.count < 0 or self.count > 10_000:
            raise ConfigError(f"must be between 0 and 10000, got {self.count}", field="agents.count")
        if self.inventory is not None and not self.simulated:
            raise ConfigError("an inventory is only declared for simulated agents", field="agents.inventory")
        if self.name:
            check_name(self.name, "agents.name")
        if self.block:
            check_block(self.block, "agents.block")
        if self.blocks and self.block:
            raise ConfigError(
                f"set either block (one name) or blocks (a count), not both; got block={self.block!r} "
                f"blocks={self.blocks}",
                field="agents.blocks",
            )
        if self.blocks < 0 or (self.count and self.blocks > self.count):
            raise ConfigError(
                f"must be between 0 and count={self.count} (each block holds at least one agent), "
                f"got {self.blocks}",
                field="agents.blocks",
            )
        check_datasets(self.datasets, "agents.datasets")

    def block_of(self, group_name: str, k: int) -> str:
        """The block of the group's agent ``k`` (0-based): contiguous runs over ``blocks``."""
        if self.block:
            return self.block
        if self.blocks:
            return f"{group_name}-b{k * self.blocks // self.count + 1}"
        return ""


@dataclass(frozen=True)
class SubDomainSpec:
    id: str
    max_nodes: int = DEFAULT_MAX_NODES
    agents: list[AgentGroup] = field(default_factory=list)

    def validate(self) -> None:
        check_name(self.id, "subdomains.id")
        if self.max_nodes < 1:
            raise ConfigError(f"must be at least 1, got {self.max_nodes}", field="max_nodes")
        names = [g.name for g in self.agents if g.name]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(
                    f"duplicate agent group name {name!r} in sub-domain {self.id}",
                    field=f"subdomains[{self.id}].agents.name",
                )

    def group_name(self, j: int) -> str:
        """Name of agent group ``j`` (0-based): its own, else ``<id>-g<j+1>``."""
        return self.agents[j].name or f"{self.id}-g{j + 1}"


@dataclass(frozen=True)
class Region:
    name: str
    subdomains: list[SubDomainSpec] = field(default_factory=list)
    power_budget_kw: float = 0.0

    def validate(self) -> None:
        check_name(self.name, "regions.name")
        if not math.isfinite(self.power_budget_kw) or self.power_budget_kw < 0:
            raise ConfigError(
                f"must be a number >= 0 (0 = no cap), got {self.power_budget_kw}",
                field=f"regions[{self.name}].power_budget_kw",
            )


@dataclass(frozen=True)
class Link:
    """An inter-region link: its bandwidth (Gbit/s) and distance (km, for the round-trip time)."""

    between: list[str] = field(default_factory=list)
    bandwidth_gbps: float = 0.0
    distance_km: float = 0.0

    def validate(self) -> None:
        if len(self.between) != 2 or self.between[0] == self.between[1]:
            raise ConfigError(
                f"expected two different region names, got {self.between!r}", field="links.between"
            )
        for name, value in (("bandwidth_gbps", self.bandwidth_gbps), ("distance_km", self.distance_km)):
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(
                    f"must be a positive number, got {value}",
                    field=f"links[{self.between[0]}-{self.between[1]}].{name}",
                )

    @property
    def pair(self) -> tuple[str, str]:
        """The two regions, sorted (a link has no direction)."""
        a, b = sorted(self.between)
        return (a, b)


@dataclass(frozen=True)
class AgentPlan:
    """One agent to start: derived from the topology."""

    node_id: str
    subdomain: str
    region: str
    simulated: bool
    inventory: SimInventory | None
    labels: dict[str, str]
    block: str = ""
    datasets: dict[str, list[int]] = field(default_factory=dict)

    def agent_fields(self) -> dict[str, Any]:
        """What the topology says about this agent, as agent-config YAML fields (``simulated``,
        ``inventory``, ``labels``, ``block``, ``datasets``); only the ones that are set."""
        out: dict[str, Any] = {}
        if self.simulated:
            out["simulated"] = True
            if self.inventory is not None:
                out["inventory"] = dataclasses.asdict(self.inventory)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.block:
            out["block"] = self.block
        if self.datasets:
            out["datasets"] = {k: list(v) for k, v in self.datasets.items()}
        return out


#: Port fields of the ``compose:`` section (``domainctl compose``; ``domainctl up`` ignores them).
COMPOSE_PORT_FIELDS = (
    "etcd_client_port",
    "etcd_peer_port",
    "master_port",
    "master_metrics_port",
    "subdomain_port",
    "subdomain_metrics_port",
    "agent_metrics_port",
    "prometheus_port",
    "grafana_port",
)


@dataclass(frozen=True)
class ComposeSpec:
    """The docker-compose deployment (``domainctl compose``): etcd members and the first port of
    each kind (member/replica/sub-domain/agent ``i`` adds ``i``; etcd members add ``2 * i``).
    ``domainctl up`` ignores this section (it runs one SQLite file per daemon and free ports)."""

    #: etcd members (a quorum needs an odd number: 1, 3 or 5).
    etcd_members: int = 1
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    master_port: int = 7070
    master_metrics_port: int = 9100
    subdomain_port: int = 7101
    subdomain_metrics_port: int = 9111
    agent_metrics_port: int = 9201
    prometheus_port: int = 9090
    grafana_port: int = 3000

    def validate(self) -> None:
        if self.etcd_members not in (1, 3, 5):
            raise ConfigError(
                f"must be 1, 3 or 5 (an odd number keeps a quorum: 3 survive one lost member), "
                f"got {self.etcd_members}",
                field="compose.etcd_members",
            )
        for name in COMPOSE_PORT_FIELDS:
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ConfigError(f"must be a TCP port (1-65535), got {port}", field=f"compose.{name}")


@dataclass(frozen=True)
class Topology:
    version: int = 1
    name: str = "local"
    regions: list[Region] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    #: Master replicas (high availability: one leads, the others take over when it dies).
    masters: int = 1
    #: The docker-compose deployment's etcd members and ports (``domainctl compose`` only).
    compose: ComposeSpec = field(default_factory=ComposeSpec)

    def validate(self) -> None:
        if self.version != 1:
            raise ConfigError(f"unsupported version {self.version}; supported: 1", field="version")
        if not 1 <= self.masters <= 5:
            raise ConfigError(f"must be between 1 and 5, got {self.masters}", field="masters")
        if not self.regions:
            raise ConfigError("at least one region is required", field="regions")
        seen: set[str] = set()
        for region in self.regions:
            if region.name in seen:
                raise ConfigError(f"duplicate name {region.name!r}", field="regions")
            seen.add(region.name)
        ids: set[str] = set()
        for region in self.regions:
            for sd in region.subdomains:
                if sd.id in ids:
                    raise ConfigError(f"duplicate sub-domain id {sd.id!r}", field="subdomains")
                ids.add(sd.id)
        pairs: set[tuple[str, str]] = set()
        for i, link in enumerate(self.links):
            for name in link.between:
                if name not in seen:
                    raise ConfigError(
                        f"unknown region {name!r}; regions: {', '.join(sorted(seen))}",
                        field=f"links[{i}].between",
                    )
            if link.pair in pairs:
                raise ConfigError(
                    f"duplicate link between {link.pair[0]} and {link.pair[1]}", field=f"links[{i}].between"
                )
            pairs.add(link.pair)

    def region(self, name: str) -> Region | None:
        return next((r for r in self.regions if r.name == name), None)

    def power_budgets_kw(self) -> dict[str, float]:
        """Each region's power budget in kW (regions with 0 = no cap are left out)."""
        return {r.name: r.power_budget_kw for r in self.regions if r.power_budget_kw > 0}

    def subdomains(self) -> list[tuple[Region, SubDomainSpec]]:
        return [(r, sd) for r in self.regions for sd in r.subdomains]

    def agents(self) -> list[AgentPlan]:
        out: list[AgentPlan] = []
        for region, sd in self.subdomains():
            n = 0
            for j, group in enumerate(sd.agents):
                name = sd.group_name(j)
                for k in range(group.count):
                    n += 1
                    out.append(
                        AgentPlan(
                            node_id=f"{sd.id}-n{n}",
                            subdomain=sd.id,
                            region=region.name,
                            simulated=group.simulated,
                            inventory=group.inventory,
                            labels=dict(group.labels),
                            block=group.block_of(name, k),
                            datasets={d: list(s) for d, s in group.datasets.items()},
                        )
                    )
        return out


DEFAULT_TOPOLOGY = """\
version: 1
name: local
regions:
  - name: east
    subdomains:
      - id: east-1
        agents:
          - count: 2
  - name: west
    subdomains:
      - id: west-1
        agents:
          - count: 2
"""


def load_topology(path: str | None) -> Topology:
    """Load a topology file, or the built-in default (2 regions x 1 sub-domain x 2 agents)."""
    if path is None:
        data = _config.parse_yaml(DEFAULT_TOPOLOGY, "<default topology>")
        return _config.build(Topology, data)
    data = _config.load_yaml(path)
    try:
        return _config.build(Topology, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
