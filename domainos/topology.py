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
        power_budget_kw: 40          # optional: the region's GPU power budget (0 = no cap)
    links:                           # optional: inter-region links, for the cross-region loss model
      - between: [east, west]
        bandwidth_gbps: 100
        distance_km: 1200
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from domainos import config as _config
from domainos.errors import ConfigError
from domainos.resources import parse_memory

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DEFAULT_MAX_NODES = 10_000


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
    gpu_memory: str = "80Gi"
    nvlink: bool = True
    labels: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.cpus < 1 or self.cpus > 4096:
            raise ConfigError(f"must be between 1 and 4096, got {self.cpus}", field="inventory.cpus")
        parse_memory(self.memory, "inventory.memory")
        if self.gpus < 0 or self.gpus > 64:
            raise ConfigError(f"must be between 0 and 64, got {self.gpus}", field="inventory.gpus")
        if self.gpus and not self.gpu_model:
            raise ConfigError("is required when gpus > 0", field="inventory.gpu_model")
        parse_memory(self.gpu_memory, "inventory.gpu_memory")

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def gpu_memory_bytes(self) -> int:
        return parse_memory(self.gpu_memory)


@dataclass(frozen=True)
class AgentGroup:
    count: int = 1
    simulated: bool = False
    inventory: SimInventory | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.count < 0 or self.count > 10_000:
            raise ConfigError(f"must be between 0 and 10000, got {self.count}", field="agents.count")
        if self.inventory is not None and not self.simulated:
            raise ConfigError("an inventory is only declared for simulated agents", field="agents.inventory")


@dataclass(frozen=True)
class SubDomainSpec:
    id: str
    max_nodes: int = DEFAULT_MAX_NODES
    agents: list[AgentGroup] = field(default_factory=list)

    def validate(self) -> None:
        check_name(self.id, "subdomains.id")
        if self.max_nodes < 1:
            raise ConfigError(f"must be at least 1, got {self.max_nodes}", field="max_nodes")


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


@dataclass(frozen=True)
class Topology:
    version: int = 1
    name: str = "local"
    regions: list[Region] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)

    def validate(self) -> None:
        if self.version != 1:
            raise ConfigError(f"unsupported version {self.version}; supported: 1", field="version")
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
            for group in sd.agents:
                for _ in range(group.count):
                    n += 1
                    out.append(
                        AgentPlan(
                            node_id=f"{sd.id}-n{n}",
                            subdomain=sd.id,
                            region=region.name,
                            simulated=group.simulated,
                            inventory=group.inventory,
                            labels=dict(group.labels),
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
