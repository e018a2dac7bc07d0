"""A sub-domain's shape-aware summary as a domain type (protobuf stops at the boundary).

Its size depends on the number of node shapes, never on the number of nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from domainos.api.v1 import common_pb2
from domainos.resources import Resources

_NONE = Resources()


@dataclass(frozen=True, slots=True)
class Shape:
    """Ready nodes of one shape: how many, and the free resources of the roomiest one."""

    gpu_model: str
    free_gpus: int
    count: int
    best: Resources


def _res(data: Mapping[str, Any] | None) -> Resources:
    if not data:
        return Resources()
    return Resources(
        int(data.get("cpu_millis", 0)),
        int(data.get("memory_bytes", 0)),
        int(data.get("gpus", 0)),
        str(data.get("gpu_model", "")),
    )


def _res_dict(r: Resources) -> dict[str, Any]:
    return {
        "cpu_millis": r.cpu_millis,
        "memory_bytes": r.memory_bytes,
        "gpus": r.gpus,
        "gpu_model": r.gpu_model,
    }


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
    def from_proto(cls, msg: common_pb2.SubDomainSummary) -> Summary:
        return cls(
            nodes_total=msg.nodes_total,
            nodes_ready=msg.nodes_ready,
            nodes_suspect=msg.nodes_suspect,
            nodes_dead=msg.nodes_dead,
            nodes_simulated=msg.nodes_simulated,
            capacity=Resources.from_proto(msg.capacity),
            free=Resources.from_proto(msg.free),
            shapes=tuple(
                Shape(s.gpu_model, s.free_gpus, s.count, Resources.from_proto(s.best)) for s in msg.shapes
            ),
            running_tasks=msg.running_tasks,
            max_nodes=msg.max_nodes,
            gpus_by_model=dict(msg.gpus_by_model),
            free_gpus_by_model=dict(msg.free_gpus_by_model),
            largest_node=Resources.from_proto(msg.largest_node),
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
