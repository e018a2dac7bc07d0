"""Placement under a task's full request: GPU model exclusion, node selector, NVLink domains, GPU
shares, dataset locality (with its wait), pipeline groups on one block, and the summary's topology."""

from __future__ import annotations

from typing import Any

import pytest
from subdomain_helpers import GI, inventory

from domainos.model import PlacementConstraints, TaskRef, TaskSpec, TaskState
from domainos.resources import Resources
from master_domain._summary import Summary as MasterSummary
from sub_domain._placement import Placement
from sub_domain._registry import NodeRegistry
from sub_domain._tasks import Forward, TaskTable


def reg() -> NodeRegistry:
    return NodeRegistry("sd-1", max_nodes=10_000, silent_after_s=15.0, dead_after_s=5.0)


def add(r: NodeRegistry, node_id: str, **kw: Any) -> None:
    r.register(inventory(node_id, **kw), "i", 0.0, conn_token=len(r.nodes) + 1)


def pc(**kw: Any) -> PlacementConstraints:
    return PlacementConstraints(**kw)


def share(pct: int, mem_gi: float = 0, cpus: float = 1, model: str = "") -> Resources:
    return Resources(int(cpus * 1000), GI, 0, model, pct, int(mem_gi * GI))


def placed(r: NodeRegistry, key: str, request: Resources, c: PlacementConstraints | None = None) -> Placement:
    p = r.place(request, c or pc())
    assert isinstance(p, Placement), p
    r.allocate(p.node_id, TaskRef(key, 0, 0), request, p.gpu_indexes)
    r.validate()
    return p


# -- GPU model exclusion and node selector ----------------------------------------------------------


def test_excluded_gpu_model_is_never_used() -> None:
    r = reg()
    add(r, "t4", gpus=1, model="T4", cpus=4)
    add(r, "h100", gpus=8, model="H100")
    p = r.place(Resources(1000, GI, 1), pc(exclude_gpu_models=("T4",)))
    assert isinstance(p, Placement) and p.node_id == "h100"  # best fit alone would take the T4 node
    why = r.place(Resources(1000, GI, 1), pc(exclude_gpu_models=("T4", "H100")))
    assert why == (
        "no ready node has cpus=1 memory=1Gi gpus=1 free; no ready node with any GPUs (excluding H100, T4) (2 ready)"
    )
    # a CPU-only task takes no GPU: exclusion does not keep it off a GPU node
    p = r.place(Resources(1000, GI), pc(exclude_gpu_models=("T4", "H100")))
    assert isinstance(p, Placement)


def test_node_selector_needs_every_label() -> None:
    r = reg()
    add(r, "a", labels={"zone": "a", "disk": "ssd"}, cpus=4)
    add(r, "b", labels={"zone": "b", "disk": "ssd"}, cpus=2)
    add(r, "c", cpus=1)
    p = r.place(Resources(1000, GI), pc(node_selector={"disk": "ssd", "zone": "a"}))
    assert isinstance(p, Placement) and p.node_id == "a"
    p = r.place(Resources(1000, GI), pc(node_selector={"disk": "ssd"}))
    assert isinstance(p, Placement) and p.node_id == "b"  # best fit among the matching ones
    assert r.place(Resources(1000, GI), pc(node_selector={"zone": "c"})) == (
        "no ready node with labels zone=c (3 placeable nodes, none carries them all)"
    )
    why = r.place(Resources(3000, GI), pc(node_selector={"zone": "b"}))
    assert why == (
        "no ready node has cpus=3 memory=1Gi free; largest free: cpus=4 memory=32Gi "
        "among nodes with labels zone=b (1 match)"
    )


def test_selector_over_many_nodes_walks_the_index() -> None:
    r = reg()
    for i in range(1100):  # above EXACT_SCAN_MAX: the filtered index walk
        add(r, f"n{i:04d}", cpus=2 + i % 3, labels={"pool": "big"} if i % 2 else {"pool": "small"})
    p = r.place(Resources(2000, GI), pc(node_selector={"pool": "big"}))
    assert isinstance(p, Placement)
    node = r.get(p.node_id)
    assert node is not None and node.inventory.labels["pool"] == "big" and node.allocatable.cpu_millis == 2000


# -- NVLink domains -----------------------------------------------------------------------------------


def test_one_nvlink_domain_keeps_a_tp_group_together() -> None:
    r = reg()
    add(r, "split", gpus=8, domain_size=4)  # two domains of 4
    add(r, "whole", gpus=8, domain_size=8, cpus=64)  # one domain of 8
    p = r.place(Resources(1000, GI, 8), pc(one_nvlink_domain=True))
    assert isinstance(p, Placement) and p.node_id == "whole"
    p = r.place(Resources(1000, GI, 4), pc(one_nvlink_domain=True))
    assert isinstance(p, Placement) and p.node_id == "split"  # least CPU left over, and 4 fit one domain
    assert p.gpu_indexes in ((0, 1, 2, 3), (4, 5, 6, 7))
    r.allocate("split", TaskRef("x", 0, 0), Resources(1000, GI, 2), (0, 4))  # 3 free in each domain
    r.allocate("whole", TaskRef("y", 0, 0), Resources(1000, GI, 1), (0,))
    r.validate()
    why = r.place(Resources(1000, GI, 8), pc(one_nvlink_domain=True))
    assert why == "no ready node with 8 free H100 GPUs in one NVLink domain: best has 7 (whole)" or why == (
        "no ready node with 8 free any GPUs in one NVLink domain: best has 7 (whole)"
    )
    p = r.place(Resources(1000, GI, 4), pc(one_nvlink_domain=True))
    assert isinstance(p, Placement) and p.node_id == "whole"  # split has 6 free but only 3 per domain
    # without the constraint the 6 free GPUs of "split" do
    p = r.place(Resources(1000, GI, 6))
    assert isinstance(p, Placement) and p.node_id == "split"


def test_best_nvlink_reason_names_the_model() -> None:
    r = reg()
    add(r, "n1", gpus=8, domain_size=4, model="H100")
    why = r.place(Resources(1000, GI, 8, "H100"), pc(one_nvlink_domain=True))
    assert why == "no ready node with 8 free H100 GPUs in one NVLink domain: best has 4 (n1)"


# -- GPU shares ---------------------------------------------------------------------------------------


def test_shares_fill_the_fullest_card_first_then_a_whole_one() -> None:
    r = reg()
    add(r, "n1", gpus=2, gpu_memory_gi=80)
    p1 = placed(r, "a", share(50))
    assert p1 == Placement("n1", (0,))
    node = r.get("n1")
    assert node is not None and node.free.gpus == 1  # the shared card is not free as a whole
    p2 = placed(r, "b", share(30))
    assert p2.gpu_indexes == (0,)  # on the partly used card, not a fresh one
    p3 = placed(r, "c", share(30))
    assert p3.gpu_indexes == (1,)  # 20% left on card 0: a whole card is taken
    p4 = placed(r, "d", share(20))
    assert p4.gpu_indexes == (0,)  # fullest card it fits: 20% left on card 0, 70% on card 1
    assert node.shares[0].percent == 100 and node.shares[1].percent == 30
    assert node.free.gpus == 0
    why = r.place(Resources(1000, GI, 1))
    assert isinstance(why, str) and why.startswith("no ready node has cpus=1 memory=1Gi gpus=1 free")
    # the last share leaving makes the card whole again
    for key in ("a", "b", "d"):
        r.release("n1", TaskRef(key, 0, 0))
    assert node.free.gpus == 1 and 0 not in node.shares
    r.validate()


def test_a_share_takes_a_card_from_the_most_used_nvlink_domain() -> None:
    r = reg()
    add(r, "n1", gpus=8, domain_size=4, gpu_memory_gi=80)
    r.allocate("n1", TaskRef("tp", 0, 0), Resources(1000, GI, 3), (0, 1, 2))
    p = placed(r, "s", share(25))
    assert p.gpu_indexes == (3,)  # domain 4-7 stays whole for a TP group of 4
    q = r.place(Resources(1000, GI, 4), pc(one_nvlink_domain=True))
    assert isinstance(q, Placement) and q.gpu_indexes == (4, 5, 6, 7)


def test_share_memory_is_accounted() -> None:
    r = reg()
    add(r, "n1", gpus=1, gpu_memory_gi=80)
    placed(r, "a", share(20, mem_gi=60))
    why = r.place(share(20, mem_gi=30))
    assert isinstance(why, str)
    assert "roomiest partly used card: 80% and 21474836480 bytes left (node n1 GPU 0)" in why
    assert "no whole free any card" in why
    p = placed(r, "b", share(20, mem_gi=20))
    assert p.gpu_indexes == (0,)
    # no memory asked: the same fraction of the card (20% of 80 GiB = 16 GiB), none left
    assert isinstance(r.place(share(10)), str)
    node = r.get("n1")
    assert node is not None and node.shares[0].memory == 80 * GI


def test_share_memory_on_a_card_of_unknown_memory_is_refused() -> None:
    r = reg()
    add(r, "n1", gpus=1)  # GPU memory unknown
    assert isinstance(r.place(share(20, mem_gi=10)), str)
    p = placed(r, "a", share(20))  # percent only: fine
    assert p.gpu_indexes == (0,)


def test_share_honours_model_and_exclusion() -> None:
    r = reg()
    add(r, "t4", gpus=1, model="T4", gpu_memory_gi=16)
    add(r, "a100", gpus=1, model="A100", gpu_memory_gi=80, cpus=16)
    assert placed(r, "a", share(50, model="A100")).node_id == "a100"
    p = r.place(share(25), pc(exclude_gpu_models=("A100",)))
    assert isinstance(p, Placement) and p.node_id == "t4"


def test_share_requests_that_make_no_sense_are_rejected() -> None:
    r, t = reg(), None
    t = TaskTable("sd-1", r)
    add(r, "n1", gpus=1)
    bad = TaskSpec(TaskRef("j", 0, 0), ("true",), resources=Resources(1000, GI, 1, "", 50))
    (fwd,) = [e for e in t.place(bad, 0.0) if isinstance(e, Forward)]
    assert fwd.status.state == TaskState.REJECTED
    assert fwd.status.message == "asks for 1 whole GPUs and a 50% share at once; ask for one or the other"


def test_whole_gpu_request_never_takes_a_shared_card() -> None:
    r = reg()
    add(r, "n1", gpus=2, gpu_memory_gi=80)
    placed(r, "s", share(10))
    p = placed(r, "w", Resources(1000, GI, 1))
    assert p.gpu_indexes == (1,)
    assert isinstance(r.place(Resources(1000, GI, 1)), str)
    with pytest.raises(Exception, match="does not fit"):
        r.allocate("n1", TaskRef("z", 0, 0), Resources(1000, GI, 1), (0,))


# -- locality -------------------------------------------------------------------------------------------


def test_locality_waits_for_a_holder_then_takes_any_node() -> None:
    r = reg()
    add(r, "holder", cpus=2, datasets={"corpus": [3]})
    add(r, "other", cpus=16, datasets={"corpus": [4]})
    c = pc(dataset="corpus", shard=3, locality_wait_s=30.0, submitted_at=1000.0)
    p = r.place(Resources(1000, GI), c, now=1001.0)
    assert isinstance(p, Placement) and p.node_id == "holder" and p.note == ""
    r.allocate("holder", TaskRef("a", 0, 0), Resources(2000, GI), ())
    why = r.place(Resources(1000, GI), c, now=1010.0)
    assert (
        why
        == "waiting for a node holding corpus shard 3 (20 s left); nodes holding it: 1, none with room for cpus=1 memory=1Gi"
    )
    p = r.place(Resources(1000, GI), c, now=1031.0)
    assert isinstance(p, Placement) and p.node_id == "other"
    assert p.note == (
        "locality wait for corpus shard 3 is over and none of the 1 nodes holding it had room: "
        "placed on node other without it"
    )
    # no holder at all: still waits until the deadline
    c2 = pc(dataset="corpus", shard=9, locality_wait_s=5.0, submitted_at=1000.0)
    assert r.place(Resources(1000, GI), c2, now=1001.0) == (
        "waiting for a node holding corpus shard 9 (4 s left); nodes holding it: 0, none with room for cpus=1 memory=1Gi"
    )


def test_locality_prefers_holders_over_a_better_fit() -> None:
    r = reg()
    add(r, "tight", cpus=1)
    add(r, "holder", cpus=32, datasets={"ds": [0]})
    p = r.place(Resources(1000, GI), pc(dataset="ds", shard=0), now=0.0)  # no wait at all
    assert isinstance(p, Placement) and p.node_id == "holder"


def test_locality_through_the_task_table_with_a_fake_clock() -> None:
    r = reg()
    t = TaskTable("sd-1", r)
    add(r, "n1", cpus=4)
    spec = TaskSpec(
        TaskRef("j", 0, 0),
        ("true",),
        resources=Resources(1000, GI),
        placement=pc(dataset="ds", shard=1, locality_wait_s=10.0, submitted_at=100.0),
    )
    (fwd,) = [e for e in t.place(spec, 105.0) if isinstance(e, Forward)]
    assert fwd.status.state == TaskState.REJECTED and fwd.status.message.startswith(
        "waiting for a node holding ds shard 1"
    )
    (fwd,) = [e for e in t.place(spec, 111.0) if isinstance(e, Forward)]
    assert (
        fwd.status.state == TaskState.ASSIGNED
        and "locality wait for ds shard 1 is over" in fwd.status.message
    )
    t.validate()


# -- pipeline groups and blocks -----------------------------------------------------------------------


def test_group_stages_prefer_the_block_of_the_first() -> None:
    r = reg()
    t = TaskTable("sd-1", r)
    add(r, "a1", cpus=4, block="A")
    add(r, "a2", cpus=6, block="A")
    add(r, "b1", cpus=5, block="B")

    def spec(i: int) -> TaskSpec:
        return TaskSpec(
            TaskRef("j", i, 0), ("true",), resources=Resources(4000, GI), placement=pc(group="dp0")
        )

    t.place(spec(0), 0.0)
    assert t.node_of(TaskRef("j", 0, 0)) == "a1"
    t.place(spec(1), 0.0)
    assert t.node_of(TaskRef("j", 1, 0)) == "a2"  # b1 is the better fit, but stage 0 is in block A
    t.place(spec(2), 0.0)
    assert t.node_of(TaskRef("j", 2, 0)) == "b1"  # block A is full: any node
    t.validate()


# -- summary ------------------------------------------------------------------------------------------


def test_summary_carries_topology_and_round_trips_through_the_master_mirror() -> None:
    r = reg()
    add(
        r,
        "g1",
        gpus=8,
        domain_size=4,
        block="A",
        labels={"zone": "a"},
        datasets={"ds": [2, 0]},
        gpu_memory_gi=80,
    )
    add(r, "g2", gpus=8, domain_size=8, block="B", labels={"zone": "a", "ib": "yes"}, datasets={"ds": [1]})
    add(r, "c1", cpus=4)
    placed(r, "s1", share(35, model="H100"))
    s = r.summary()
    by_free = {(sh.free_gpus, sh.free_nvlink_gpus) for sh in s.shapes if sh.gpu_model == "H100"}
    assert by_free == {(7, 4), (8, 8)} or by_free == {(8, 4), (7, 7)}
    assert {b.block for b in s.blocks} == {"A", "B"}
    assert s.label_nodes == {"ib=yes": 1, "zone=a": 2}
    assert s.datasets == (("ds", (0, 1, 2)),)
    assert len(s.share_slots) == 1 and s.share_slots[0].free_percent == 60 and s.share_slots[0].count == 1
    m = MasterSummary.from_proto(s.to_proto())
    assert m.datasets == {"ds": (0, 1, 2)} and m.label_nodes == {"ib=yes": 1, "zone=a": 2}
    assert {sh.free_nvlink_gpus for sh in m.shapes} == {sh.free_nvlink_gpus for sh in s.shapes}
    assert [b.block for b in m.blocks] == ["A", "B"]
    assert m.share_slots[0].gpu_model == "H100" and m.share_slots[0].free_percent == 60
    assert MasterSummary.from_proto(m.to_proto()) == m


def test_master_mirror_defaults_nvlink_for_old_senders() -> None:
    from domainos.api.v1 import common_pb2

    msg = common_pb2.SubDomainSummary(
        shapes=[
            common_pb2.NodeShape(
                gpu_model="H100", free_gpus=8, count=2, best=Resources(1000, GI, 8).to_proto()
            )
        ]
    )
    m = MasterSummary.from_proto(msg)
    assert m.shapes[0].free_nvlink_gpus == 8
    bad = common_pb2.SubDomainSummary(
        datasets=[common_pb2.DatasetPresence(dataset="d", shards=[3, 1])],
    )
    with pytest.raises(Exception, match="sorted"):
        MasterSummary.from_proto(bad)


def test_summary_size_does_not_grow_with_nodes() -> None:
    r = reg()
    for i in range(300):
        add(r, f"n{i:03d}", gpus=8, labels={"rack": f"r{i}"}, datasets={f"d{i}": list(range(20))})
    s = r.summary()
    assert len(s.label_nodes) == 256 and len(s.datasets) == 256 and len(s.shapes) == 1


def _spy(r: NodeRegistry) -> list[str]:
    index = r._index
    looked: list[str] = []
    real = index._free

    class Spy(dict[str, Resources]):
        def __getitem__(self, key: str) -> Resources:
            looked.append(key)
            return real[key]

    index._free = Spy(real)
    return looked


def test_nvlink_and_share_placements_do_not_scan_every_node() -> None:
    r = reg()
    for i in range(3000):
        add(r, f"g{i:04d}", gpus=8, domain_size=4, cpus=64, memory_gi=512, gpu_memory_gi=80)
    add(r, "one-domain", gpus=8, domain_size=8, cpus=64, memory_gi=512, gpu_memory_gi=80)
    for i in range(3000):  # a card 90% used on every node
        r.allocate(f"g{i:04d}", TaskRef(f"s{i}", 0, 0), share(90), (0,))
    r.allocate("one-domain", TaskRef("half", 0, 0), share(50), (0,))
    looked = _spy(r)
    p = r.place(Resources(1000, GI, 7), pc(one_nvlink_domain=True))
    assert isinstance(p, Placement) and p.node_id == "one-domain"
    p = r.place(share(40))
    assert isinstance(p, Placement) and p.node_id == "one-domain" and p.gpu_indexes == (0,)
    assert len(looked) <= 4, f"placement looked at {len(looked)} nodes"
