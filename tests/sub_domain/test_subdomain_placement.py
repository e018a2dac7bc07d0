"""Pure tests of placement: fit, GPU model, best fit, GPU index choice, reason texts."""

from __future__ import annotations

from subdomain_helpers import GI, inventory, nvlink_pairs

from domainos.model import TaskRef
from domainos.resources import Resources
from sub_domain._placement import Placement, PlacementIndex, pick_gpus
from sub_domain._registry import NodeRegistry


def reg() -> NodeRegistry:
    return NodeRegistry("sd-1", max_nodes=1000, silent_after_s=15.0, dead_after_s=5.0)


def test_fit_and_no_fit() -> None:
    r = reg()
    r.register(inventory("n1", cpus=4, memory_gi=8), "i", 0.0, conn_token=1)
    assert r.place(Resources(4000, 8 * GI)) == Placement("n1", ())
    reason = r.place(Resources(5000, GI))
    assert reason == "no ready node has cpus=5 memory=1Gi free; largest free: cpus=4 memory=8Gi"
    reason = r.place(Resources(1000, 9 * GI))
    assert isinstance(reason, str) and reason.startswith("no ready node has cpus=1 memory=9Gi free")
    r.validate()


def test_reason_when_no_node_is_ready() -> None:
    r = reg()
    assert (
        r.place(Resources(4000, GI))
        == "no ready node has cpus=4 memory=1Gi free; no node is ready (0 registered)"
    )
    r.register(inventory("n1"), "i", 0.0, conn_token=1)
    r.disconnect("n1", 1, 1.0)
    assert (
        r.place(Resources(4000, GI))
        == "no ready node has cpus=4 memory=1Gi free; no node is ready (1 registered)"
    )


def test_gpu_model_is_honoured() -> None:
    r = reg()
    r.register(inventory("a100", gpus=8, model="A100"), "i", 0.0, conn_token=1)
    r.register(inventory("h100", gpus=8, model="H100"), "i", 0.0, conn_token=2)
    p = r.place(Resources(1000, GI, 2, "H100"))
    assert isinstance(p, Placement) and p.node_id == "h100"
    p = r.place(Resources(1000, GI, 2, "A100"))
    assert isinstance(p, Placement) and p.node_id == "a100"
    reason = r.place(Resources(1000, GI, 2, "B200"))
    assert (
        reason
        == "no ready node has cpus=1 memory=1Gi gpus=2 (B200) free; no ready node with B200 GPUs (2 ready)"
    )
    assert r.place(Resources(1000, GI, 9, "H100")) == (
        "no ready node has cpus=1 memory=1Gi gpus=9 (H100) free; largest free: cpus=8 memory=32Gi gpus=8 (H100)"
    )


def test_best_fit_keeps_gpu_nodes_for_gpu_work() -> None:
    r = reg()
    r.register(inventory("gpu", gpus=8), "i", 0.0, conn_token=1)
    r.register(inventory("cpu", cpus=8), "i", 0.0, conn_token=2)
    p = r.place(Resources(1000, GI))
    assert isinstance(p, Placement) and p.node_id == "cpu"


def test_best_fit_least_leftover_gpus_then_cpu() -> None:
    r = reg()
    for name in ("eight", "two-big", "two-small"):
        r.register(
            inventory(name, gpus=8, cpus=32 if name != "two-small" else 8), "i", 0.0, conn_token=hash(name)
        )
    r.allocate("two-big", TaskRef("x", 0, 0), Resources(0, 0, 6), (0, 1, 2, 3, 4, 5))
    r.allocate("two-small", TaskRef("x", 1, 0), Resources(0, 0, 6), (0, 1, 2, 3, 4, 5))
    r.validate()
    p = r.place(Resources(2000, GI, 2))
    assert p == Placement("two-small", (6, 7))  # 0 GPUs left over, least CPU left over
    p = r.place(Resources(16_000, GI, 2))
    assert p == Placement("two-big", (6, 7))  # two-small lacks CPU
    p = r.place(Resources(1000, GI, 3))
    assert isinstance(p, Placement) and p.node_id == "eight"


def test_memory_bound_request_walks_the_bucket() -> None:
    r = reg()
    r.register(inventory("small-mem", cpus=8, memory_gi=4), "i", 0.0, conn_token=1)
    r.register(inventory("big-mem", cpus=16, memory_gi=64), "i", 0.0, conn_token=2)
    p = r.place(Resources(2000, 32 * GI))
    assert isinstance(p, Placement) and p.node_id == "big-mem"


def test_gpu_indexes_prefer_nvlink_peers() -> None:
    r = reg()
    r.register(inventory("g", gpus=4, peers=nvlink_pairs(4)), "i", 0.0, conn_token=1)
    r.allocate("g", TaskRef("x", 0, 0), Resources(0, 0, 1), (1,))
    p = r.place(Resources(0, 0, 2))
    assert p == Placement("g", (2, 3))  # 0 is free but its peer (1) is taken
    r.validate()


def test_pick_gpus_directly() -> None:
    pairs = {i: frozenset(p) for i, p in nvlink_pairs(8).items()}
    assert pick_gpus(range(8), pairs, 0) == ()
    assert pick_gpus([0, 2, 3, 5], pairs, 2) == (2, 3)
    assert pick_gpus([0, 2, 4, 6], pairs, 2) == (0, 2)  # no links at all: lowest indexes
    assert pick_gpus([0, 1], pairs, 3) is None
    assert pick_gpus([4, 5, 6, 7], pairs, 4) == (4, 5, 6, 7)


def test_placement_does_not_scan_every_node() -> None:
    r = NodeRegistry("sd-1", max_nodes=10_000, silent_after_s=15.0, dead_after_s=5.0)
    for i in range(5000):
        r.register(inventory(f"g{i:05d}", gpus=8, cpus=64, memory_gi=512), "i", 0.0, conn_token=i + 1)
    r.register(inventory("cpu-only", cpus=8), "i", 0.0, conn_token=99_999)
    index = r._index
    looked: list[str] = []
    real = index._free

    class Spy(dict[str, Resources]):
        def __getitem__(self, key: str) -> Resources:
            looked.append(key)
            return real[key]

    index._free = Spy(real)
    p = r.place(Resources(1000, GI))
    assert isinstance(p, Placement) and p.node_id == "cpu-only"
    p = r.place(Resources(1000, GI, 8))
    assert isinstance(p, Placement)
    assert len(looked) <= 4, f"placement looked at {len(looked)} nodes"


def test_index_moves_and_removes_nodes() -> None:
    idx = PlacementIndex()
    idx.put("a", "H100", Resources(8000, 8 * GI, 8, "H100"))
    idx.put("b", "", Resources(4000, 4 * GI))
    idx.validate()
    idx.put("a", "H100", Resources(7000, 7 * GI, 6, "H100"))
    idx.validate()
    assert idx.choose(Resources(1000, GI, 7)) is None
    assert idx.choose(Resources(1000, GI, 6)) == "a"
    idx.remove("a")
    idx.remove("a")
    idx.validate()
    assert len(idx) == 1 and idx.choose(Resources(1000, GI)) == "b"
