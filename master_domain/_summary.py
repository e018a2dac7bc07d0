"""A sub-domain's shape-aware summary as a domain type (protobuf stops at the boundary).

Its size depends on the number of node shapes, never on the number of nodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from domainos.api.v1 import common_pb2
from domainos.errors import InvalidArgument
from domainos.resources import Resources

_NONE = Resources()
#: Bound of a summary's node counts (ten times a sub-domain's largest ``max_nodes``): their sums
#: over every sub-domain are int32 fields of ``ClusterInfo``.
MAX_NODES = 1_000_000
#: Bound of its other counts (tasks, GPUs).
MAX_COUNT = 100_000_000


def _count(value: int, fld: str, most: int) -> None:
    if not 0 <= value <= most:
        raise InvalidArgument(f"must be between 0 and {most}, got {value}", field=fld)


def _resources(msg: common_pb2.Resources, fld: str) -> Resources:
    for name in ("cpu_millis", "memory_bytes", "gpus"):
        if getattr(msg, name) < 0:
            raise InvalidArgument(f"must not be negative, got {getattr(msg, name)}", field=f"{fld}.{name}")
    return Resources.from_proto(msg)


@dataclass(frozen=True, slots=True)
class Shape:
    """Ready nodes of one shape: how many, and the free resources of the roomiest one."""

    gpu_model: str
    free_gpus: int
    count: int
    best: Resources


_res = Resources.from_dict


def _res_dict(r: Resources) -> dict[str, Any]:
    return dict(r.to_dict())


@dataclass(frozen=True, slots=True)
class Summary:
    """What the master knows about a sub-domain's capacity (from ``SubDomainSummary``)."""

    nodes_total: int = 0
    nodes_ready: int = 0
    nodes_suspect: int = 0
    nodes_dead: int = 0
    nodes_simulated: int = 0
    capacity: Resources = _NONE
    free: Resources = _NONE
    shapes: tuple[Shape, ...] = ()
    running_tasks: int = 0
    max_nodes: int = 0
    gpus_by_model: Mapping[str, int] = field(default_factory=dict)
    free_gpus_by_model: Mapping[str, int] = field(default_factory=dict)
    largest_node: Resources = _NONE
    power_draw_w: float = 0.0

    @classmethod
    def from_proto(cls, msg: common_pb2.SubDomainSummary, path: str = "summary") -> Summary:
        """Validated: counts within bounds, no negative resources, a finite power draw.

        A summary feeds the client API's totals (int32 on the wire) and placement; one bad one
        must be refused, not break ``GetClusterInfo`` for every caller (InvalidArgument).
        """
        for name in ("nodes_total", "nodes_ready", "nodes_suspect", "nodes_dead", "nodes_simulated"):
            _count(getattr(msg, name), f"{path}.{name}", MAX_NODES)
        _count(msg.max_nodes, f"{path}.max_nodes", MAX_NODES)
        _count(msg.running_tasks, f"{path}.running_tasks", MAX_COUNT)
        for name in ("gpus_by_model", "free_gpus_by_model"):
            for model, n in getattr(msg, name).items():
                _count(n, f"{path}.{name}[{model!r}]", MAX_COUNT)
        for i, s in enumerate(msg.shapes):
            _count(s.count, f"{path}.shapes[{i}].count", MAX_NODES)
            _count(s.free_gpus, f"{path}.shapes[{i}].free_gpus", MAX_COUNT)
        if not math.isfinite(msg.power_draw_w) or msg.power_draw_w < 0:
            raise InvalidArgument(
                f"must be a finite number >= 0, got {msg.power_draw_w}", field=f"{path}.power_draw_w"
            )
        return cls(
            nodes_total=msg.nodes_total,
            nodes_ready=msg.nodes_ready,
            nodes_suspect=msg.nodes_suspect,
            nodes_dead=msg.nodes_dead,
            nodes_simulated=msg.nodes_simulated,
            capacity=_resources(msg.capacity, f"{path}.capacity"),
            free=_resources(msg.free, f"{path}.free"),
            shapes=tuple(
                Shape(s.gpu_model, s.free_gpus, s.count, _resources(s.best, f"{path}.shapes[{i}].best"))
                for i, s in enumerate(msg.shapes)
            ),
            running_tasks=msg.running_tasks,
            max_nodes=msg.max_nodes,
            gpus_by_model=dict(msg.gpus_by_model),
            free_gpus_by_model=dict(msg.free_gpus_by_model),
            largest_node=_resources(msg.largest_node, f"{path}.largest_node"),
            power_draw_w=msg.power_draw_w,
        )

    def to_proto(self) -> common_pb2.SubDomainSummary:
        return common_pb2.SubDomainSummary(
            nodes_total=self.nodes_total,
            nodes_ready=self.nodes_ready,
            nodes_suspect=self.nodes_suspect,
            nodes_dead=self.nodes_dead,
            nodes_simulated=self.nodes_simulated,
            capacity=self.capacity.to_proto(),
            free=self.free.to_proto(),
            shapes=[
                common_pb2.NodeShape(
                    gpu_model=s.gpu_model, free_gpus=s.free_gpus, count=s.count, best=s.best.to_proto()
                )
                for s in self.shapes
            ],
            running_tasks=self.running_tasks,
            max_nodes=self.max_nodes,
            gpus_by_model=dict(self.gpus_by_model),
            free_gpus_by_model=dict(self.free_gpus_by_model),
            largest_node=self.largest_node.to_proto(),
            power_draw_w=self.power_draw_w,
        )

    def capacity_key(self) -> tuple[Any, ...]:
        """What changes only with capacity (not with free space): a change here is persisted."""
        return (
            self.nodes_total,
            self.nodes_ready,
            self.max_nodes,
            self.capacity,
            self.largest_node,
            tuple(sorted(self.gpus_by_model.items())),
        )

    def totals_dict(self) -> dict[str, Any]:
        """The totals kept in the registry record (no shapes, no free space)."""
        return {
            "nodes_total": self.nodes_total,
            "nodes_ready": self.nodes_ready,
            "nodes_simulated": self.nodes_simulated,
            "max_nodes": self.max_nodes,
            "capacity": _res_dict(self.capacity),
            "largest_node": _res_dict(self.largest_node),
            "gpus_by_model": dict(self.gpus_by_model),
        }

    @classmethod
    def from_totals(cls, data: Mapping[str, Any]) -> Summary:
        return cls(
            nodes_total=int(data.get("nodes_total", 0)),
            nodes_ready=int(data.get("nodes_ready", 0)),
            nodes_simulated=int(data.get("nodes_simulated", 0)),
            max_nodes=int(data.get("max_nodes", 0)),
            capacity=_res(data.get("capacity")),
            largest_node=_res(data.get("largest_node")),
            gpus_by_model={str(k): int(v) for k, v in dict(data.get("gpus_by_model", {})).items()},
        )
