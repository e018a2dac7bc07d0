"""A sub-domain's shape-aware summary as a domain type (protobuf stops at the boundary).

Its size depends on the number of node shapes, never on the number of nodes.
"""

from __future__ import annotations

import itertools
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


#: Bounds of the summary's topology parts (the sub-domain caps them lower; these refuse garbage).
MAX_BLOCKS = 4096
MAX_SHAPES = 100_000
MAX_LABEL_PAIRS = 256
MAX_DATASETS = 256
MAX_SHARDS = 4096
MAX_SHARE_SLOTS = 100_000


@dataclass(frozen=True, slots=True)
class Shape:
    """Ready nodes of one shape: how many, and the free resources of the roomiest one.

    ``free_nvlink_gpus``: most free GPUs inside one NVLink domain of that node; left out (-1) it
    is ``free_gpus`` (what a sender that predates NVLink domains means).
    """

    gpu_model: str
    free_gpus: int
    count: int
    best: Resources
    free_nvlink_gpus: int = -1

    def __post_init__(self) -> None:
        if self.free_nvlink_gpus < 0:
            object.__setattr__(self, "free_nvlink_gpus", self.free_gpus)

    def to_proto(self) -> common_pb2.NodeShape:
        return common_pb2.NodeShape(
            gpu_model=self.gpu_model,
            free_gpus=self.free_gpus,
            count=self.count,
            best=self.best.to_proto(),
            free_nvlink_gpus=self.free_nvlink_gpus,
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.NodeShape, path: str) -> Shape:
        _count(msg.count, f"{path}.count", MAX_NODES)
        _count(msg.free_gpus, f"{path}.free_gpus", MAX_COUNT)
        _count(msg.free_nvlink_gpus, f"{path}.free_nvlink_gpus", msg.free_gpus)
        # 0 with free GPUs: a sender without NVLink domains (a node with a free GPU has >= 1).
        nvl = msg.free_nvlink_gpus if msg.free_nvlink_gpus or not msg.free_gpus else -1
        return cls(msg.gpu_model, msg.free_gpus, msg.count, _resources(msg.best, f"{path}.best"), nvl)


@dataclass(frozen=True, slots=True)
class BlockShapes:
    """The placeable nodes under one block (switch tier), by shape."""

    block: str
    shapes: tuple[Shape, ...]


@dataclass(frozen=True, slots=True)
class ShareSlot:
    """``count`` partly used cards of ``gpu_model``, each with at least ``free_percent`` (10% steps,
    rounded down) compute and ``free_memory_bytes`` memory left."""

    gpu_model: str
    free_percent: int
    free_memory_bytes: int
    count: int


def _blocks(msg: common_pb2.SubDomainSummary, path: str) -> tuple[BlockShapes, ...]:
    _count(len(msg.blocks), f"{path}.blocks (length)", MAX_BLOCKS)
    out: list[BlockShapes] = []
    seen: set[str] = set()
    total = 0
    for i, b in enumerate(msg.blocks):
        where = f"{path}.blocks[{i}]"
        if not b.block or b.block in seen:
            raise InvalidArgument(f"block names must be non-empty and distinct, got {b.block!r}", field=where)
        seen.add(b.block)
        total += len(b.shapes)
        _count(total, f"{path}.blocks (shapes in all)", MAX_SHAPES)
        out.append(
            BlockShapes(
                b.block, tuple(Shape.from_proto(s, f"{where}.shapes[{j}]") for j, s in enumerate(b.shapes))
            )
        )
    return tuple(out)


def _datasets(msg: common_pb2.SubDomainSummary, path: str) -> dict[str, tuple[int, ...]]:
    _count(len(msg.datasets), f"{path}.datasets (length)", MAX_DATASETS)
    out: dict[str, tuple[int, ...]] = {}
    for i, d in enumerate(msg.datasets):
        where = f"{path}.datasets[{i}]"
        if not d.dataset or d.dataset in out:
            raise InvalidArgument(
                f"dataset names must be non-empty and distinct, got {d.dataset!r}", field=where
            )
        shards = tuple(d.shards)
        _count(len(shards), f"{where}.shards (length)", MAX_SHARDS)
        if any(s < 0 for s in shards) or any(a >= b for a, b in itertools.pairwise(shards)):
            raise InvalidArgument("must be sorted, distinct and >= 0", field=f"{where}.shards")
        out[d.dataset] = shards
    return out


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
    #: Shapes per block; empty when no node declares a block.
    blocks: tuple[BlockShapes, ...] = ()
    #: "key=value" -> ready nodes carrying that label (at most 256 pairs).
    label_nodes: Mapping[str, int] = field(default_factory=dict)
    #: dataset -> sorted distinct shards held by ready nodes.
    datasets: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: Partly used GPU cards, grouped by model and free percent.
    share_slots: tuple[ShareSlot, ...] = ()
    #: Gang reservations held there, not yet committed.
    reservations_held: int = 0

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
        _count(len(msg.shapes), f"{path}.shapes (length)", MAX_SHAPES)
        shapes = tuple(Shape.from_proto(s, f"{path}.shapes[{i}]") for i, s in enumerate(msg.shapes))
        blocks = _blocks(msg, path)
        _count(len(msg.label_nodes), f"{path}.label_nodes (pairs)", MAX_LABEL_PAIRS)
        for pair, n in msg.label_nodes.items():
            if "=" not in pair:
                raise InvalidArgument(f"{pair!r} is not a key=value label", field=f"{path}.label_nodes")
            _count(n, f"{path}.label_nodes[{pair!r}]", MAX_NODES)
        datasets = _datasets(msg, path)
        _count(len(msg.share_slots), f"{path}.share_slots (length)", MAX_SHARE_SLOTS)
        slots: list[ShareSlot] = []
        for i, sl in enumerate(msg.share_slots):
            where = f"{path}.share_slots[{i}]"
            if not 0 <= sl.free_percent <= 90 or sl.free_percent % 10:
                raise InvalidArgument(
                    f"must be a multiple of 10 between 0 and 90, got {sl.free_percent}",
                    field=f"{where}.free_percent",
                )
            if sl.free_memory_bytes < 0:
                raise InvalidArgument(
                    f"must not be negative, got {sl.free_memory_bytes}", field=f"{where}.free_memory_bytes"
                )
            _count(sl.count, f"{where}.count", MAX_COUNT)
            slots.append(ShareSlot(sl.gpu_model, sl.free_percent, sl.free_memory_bytes, sl.count))
        _count(msg.reservations_held, f"{path}.reservations_held", MAX_COUNT)
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
            shapes=shapes,
            running_tasks=msg.running_tasks,
            max_nodes=msg.max_nodes,
            gpus_by_model=dict(msg.gpus_by_model),
            free_gpus_by_model=dict(msg.free_gpus_by_model),
            largest_node=_resources(msg.largest_node, f"{path}.largest_node"),
            power_draw_w=msg.power_draw_w,
            blocks=blocks,
            label_nodes=dict(msg.label_nodes),
            datasets=datasets,
            share_slots=tuple(slots),
            reservations_held=msg.reservations_held,
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
            shapes=[s.to_proto() for s in self.shapes],
            running_tasks=self.running_tasks,
            max_nodes=self.max_nodes,
            gpus_by_model=dict(self.gpus_by_model),
            free_gpus_by_model=dict(self.free_gpus_by_model),
            largest_node=self.largest_node.to_proto(),
            power_draw_w=self.power_draw_w,
            blocks=[
                common_pb2.BlockSummary(block=b.block, shapes=[s.to_proto() for s in b.shapes])
                for b in self.blocks
            ],
            label_nodes=dict(self.label_nodes),
            datasets=[
                common_pb2.DatasetPresence(dataset=d, shards=list(shards))
                for d, shards in self.datasets.items()
            ],
            share_slots=[
                common_pb2.GpuShareSlot(
                    gpu_model=sl.gpu_model,
                    free_percent=sl.free_percent,
                    free_memory_bytes=sl.free_memory_bytes,
                    count=sl.count,
                )
                for sl in self.share_slots
            ],
            reservations_held=self.reservations_held,
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
