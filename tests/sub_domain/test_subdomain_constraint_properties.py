"""Property test: random nodes (models, NVLink domains, GPU memory, labels, blocks, shards) and random
requests (whole GPUs, shares, CPU only; exclusions, selectors, NVLink, locality) never over-commit a
node or a card, and every placement satisfies every constraint of its request."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from subdomain_helpers import GI, inventory

from domainos.model import PlacementConstraints, TaskRef
from domainos.resources import Resources
from sub_domain._placement import Placement
from sub_domain._registry import NodeRegistry

MODELS = ("H100", "A100", "T4")

nodes_st = st.lists(
    st.fixed_dictionaries(
        {
            "gpus": st.sampled_from([0, 1, 2, 4, 8]),
            "model": st.sampled_from(MODELS),
            "domain_size": st.sampled_from([1, 2, 4, 8]),
            "gpu_memory_gi": st.sampled_from([0, 16, 80]),
            "cpus": st.integers(1, 16),
            "zone": st.sampled_from(["a", "b", ""]),
            "block": st.sampled_from(["", "b0", "b1"]),
            "shards": st.lists(st.integers(0, 3), max_size=2, unique=True),
        }
    ),
    min_size=1,
    max_size=8,
)

request_st = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["whole", "share", "cpu"]),
        "gpus": st.integers(1, 8),
        "share": st.integers(1, 99),
        "share_mem_gi": st.sampled_from([0, 0, 8, 40]),
        "cpus": st.integers(0, 4),
        "model": st.sampled_from(["", *MODELS]),
        "exclude": st.lists(st.sampled_from(MODELS), max_size=2, unique=True),
        "zone": st.sampled_from(["", "a", "b"]),
        "nvlink": st.booleans(),
        "shard": st.sampled_from([None, 0, 1, 2]),
        "waiting": st.booleans(),
        "release": st.integers(0, 9),
    }
)


def build(spec: dict[str, Any], i: int) -> Any:
    return inventory(
        f"n{i}",
        gpus=spec["gpus"],
        model=spec["model"],
        domain_size=spec["domain_size"],
        gpu_memory_gi=spec["gpu_memory_gi"],
        cpus=spec["cpus"],
        labels={"zone": spec["zone"]} if spec["zone"] else {},
        block=spec["block"],
        datasets={"ds": spec["shards"]} if spec["shards"] else {},
    )


def request_of(q: dict[str, Any]) -> tuple[Resources, PlacementConstraints]:
    cpu = q["cpus"] * 500
    if q["kind"] == "whole":
        res = Resources(cpu, GI, q["gpus"], q["model"])
    elif q["kind"] == "share":
        res = Resources(cpu, GI, 0, q["model"], q["share"], q["share_mem_gi"] * GI)
    else:
        res = Resources(cpu, GI)
    c = PlacementConstraints(
        exclude_gpu_models=tuple(q["exclude"]),
        node_selector={"zone": q["zone"]} if q["zone"] else {},
        one_nvlink_domain=q["nvlink"],
        dataset="ds" if q["shard"] is not None else "",
        shard=q["shard"] or 0,
        locality_wait_s=100.0 if q["waiting"] else 0.0,
        submitted_at=0.0,
    )
    return res, c


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes=nodes_st, requests=st.lists(request_st, min_size=1, max_size=25))
def test_placements_never_overcommit_and_honour_every_constraint(
    nodes: list[dict[str, Any]], requests: list[dict[str, Any]]
) -> None:
    reg = NodeRegistry("sd-p", max_nodes=100, silent_after_s=15.0, dead_after_s=5.0)
    for i, spec in enumerate(nodes):
        reg.register(build(spec, i), "i", 0.0, conn_token=i + 1)
    placed: list[tuple[str, TaskRef]] = []
    for k, q in enumerate(requests):
        res, c = request_of(q)
        p = reg.place(res, c, now=50.0)
        if isinstance(p, Placement):
            node = reg.get(p.node_id)
            assert node is not None and node.placeable
            inv = node.inventory
            for label, value in c.node_selector.items():
                assert inv.labels.get(label) == value
            if c.dataset and q["waiting"]:
                assert any(d.dataset == c.dataset and d.shard == c.shard for d in inv.datasets)
            gets_gpu = res.gpus > 0 or res.gpu_share > 0
            if gets_gpu:
                model = inv.allocatable.gpu_model
                assert model not in c.exclude_gpu_models
                assert not res.gpu_model or model == res.gpu_model
                assert set(p.gpu_indexes) <= set(inv.gpu_indexes)
            if res.gpus > 0:
                assert len(p.gpu_indexes) == res.gpus
                if c.one_nvlink_domain:
                    domain = node.domain_of
                    assert len({domain[g] for g in p.gpu_indexes}) == 1, (p, domain)
            elif res.gpu_share:
                assert len(p.gpu_indexes) == 1
            else:
                assert p.gpu_indexes == ()
            key = TaskRef(f"t{k}", 0, 0)
            reg.allocate(p.node_id, key, res, p.gpu_indexes)  # raises on any over-commit
            placed.append((p.node_id, key))
        else:
            assert p  # a reason, never an empty string
            # complete: no placeable node that passes every constraint has room (exact oracle)
            for node in reg:
                if not node.placeable or not PlacementConstraints(node_selector=c.node_selector).selects(
                    node.inventory.labels
                ):
                    continue
                if (
                    c.dataset
                    and q["waiting"]
                    and not any(
                        d.dataset == c.dataset and d.shard == c.shard for d in node.inventory.datasets
                    )
                ):
                    continue
                excluded = set(c.exclude_gpu_models)

                def model_ok(m: str, res: Resources = res, excluded: set[str] = excluded) -> bool:
                    return bool(m) and (not res.gpu_model or m == res.gpu_model) and m not in excluded

                assert reg._node_fit(node, res, c, model_ok) is None, (node.node_id, p)
        reg.validate()  # CPU, memory, whole GPUs, card percent and card memory within bounds
        if placed and q["release"] < 3:
            node_id, key = placed.pop(q["release"] % len(placed))
            assert reg.release(node_id, key)
            reg.validate()
    for node in reg:
        for card, use in node.shares.items():
            assert 0 < use.percent <= 100
            mem = node.card_memory(card)
            assert mem == 0 or use.memory <= mem
