"""Pure tests of the node registry: no event loop, no sockets, explicit ``now``."""

from __future__ import annotations

import time
from typing import Any

import pytest
from subdomain_helpers import GI, inventory

from domainos.errors import AlreadyExists, ResourceExhausted
from domainos.model import HealthStatus, NodeHealth, TaskRef
from domainos.resources import Resources
from sub_domain._registry import NodeDead, NodeForgotten, NodeReady, NodeRegistry, NodeSuspect, bucket


def reg(max_nodes: int = 100, **kw: Any) -> NodeRegistry:
    return NodeRegistry("sd-1", max_nodes=max_nodes, silent_after_s=15.0, dead_after_s=5.0, **kw)


def test_register_counts_and_ready_event() -> None:
    r = reg()
    events = r.register(inventory("n1"), "i1", 0.0, conn_token=1)
    r.validate()
    assert events == [NodeReady("n1", "i1", joined=True)]
    assert r.count("ready") == 1 and r.live_count == 1
    assert r.get("n1") is not None and r.get("n1").state == "ready"  # type: ignore[union-attr]


def test_cap_refusal_names_the_cap_and_the_id() -> None:
    r = reg(max_nodes=2)
    r.register(inventory("n1"), "i", 0.0, conn_token=1)
    r.register(inventory("n2"), "i", 0.0, conn_token=2)
    with pytest.raises(ResourceExhausted) as exc:
        r.register(inventory("n3"), "i", 0.0, conn_token=3)
    assert str(exc.value) == (
        "sub-domain sd-1 is full: max_nodes=2 nodes are registered; try another sub-domain"
    )
    assert exc.value.code == "RESOURCE_EXHAUSTED"
    r.validate()
    assert r.get("n3") is None


def test_reregister_does_not_count_twice() -> None:
    r = reg(max_nodes=2)
    r.register(inventory("n1"), "i1", 0.0, conn_token=1)
    r.register(inventory("n2"), "i1", 0.0, conn_token=2)
    r.disconnect("n1", 1, 1.0)
    r.validate()
    events = r.register(inventory("n1"), "i2", 2.0, conn_token=3)  # at the cap, but n1 is known
    r.validate()
    assert events == [NodeReady("n1", "i2", joined=False)]
    assert r.live_count == 2
    # the same connection registering again is fine too
    r.register(inventory("n1"), "i2", 2.5, conn_token=3)
    r.validate()


def test_second_live_connection_is_already_exists() -> None:
    r = reg()
    r.register(inventory("n1"), "i1", 0.0, conn_token=1)
    with pytest.raises(AlreadyExists, match="node n1 is already connected"):
        r.register(inventory("n1"), "i2", 1.0, conn_token=2)
    r.validate()
    assert r.get("n1").conn_token == 1  # type: ignore[union-attr]


def test_dead_nodes_leave_the_count() -> None:
    r = reg(max_nodes=1)
    r.register(inventory("n1"), "i", 0.0, conn_token=1)
    r.disconnect("n1", 1, 1.0)
    assert r.tick(6.1) == [NodeDead("n1", "its stream ended, then nothing for 5.1s")]
    r.validate()
    assert r.live_count == 0 and r.count("dead") == 1
    r.register(inventory("n2"), "i", 7.0, conn_token=2)  # the dead node's place is free
    r.validate()
    with pytest.raises(ResourceExhausted):
        r.register(inventory("n1"), "i", 8.0, conn_token=3)  # a dead node coming back counts again


def test_silent_node_suspect_then_dead_with_explicit_now() -> None:
    r = reg()
    r.register(inventory("n1"), "i", 0.0, conn_token=1)
    r.report("n1", 10.0, conn_token=1)
    assert r.tick(24.9) == []  # last report at 10 + 15 = 25
    r.validate()
    assert r.tick(25.0) == [NodeSuspect("n1", "nothing heard for 15.0s, probed", probe=True)]
    r.validate()
    assert r.tick(25.9) == []  # the probe has probe_timeout_s (1 s) to be answered
    events = r.tick(26.0)
    assert events == [
        NodeDead("n1", "nothing heard for 15.0s, probed, then nothing for 1.0s", had_connection=True)
    ]
    node = r.get("n1")
    assert node is not None and node.state == "dead" and node.conn_token is None
    r.validate()
    assert r.tick(1000.0) == []


def test_silent_suspect_comes_back_on_report() -> None:
    r = reg()
    r.register(inventory("n1"), "i", 0.0, conn_token=1)
    r.tick(15.0)
    assert r.get("n1").state == "suspect"  # type: ignore[union-attr]
    assert r.report("n1", 16.0, conn_token=1) == [NodeReady("n1", "i", joined=False)]
    r.validate()
    assert r.tick(20.5) == []  # the old dead deadline is stale
    assert r.get("n1").state == "ready"  # type: ignore[union-attr]
    assert r.tick(31.0) == [NodeSuspect("n1", "nothing heard for 15.0s, probed", probe=True)]


def test_stream_drop_then_reconnect_in_time() -> None:
    r = reg()
    r.register(inventory("n1"), "i1", 0.0, conn_token=1)
    assert r.disconnect("n1", 1, 3.0) == [NodeSuspect("n1", "its stream ended")]
    assert r.disconnect("n1", 1, 3.0) == []  # idempotent
    r.validate()
    r.register(inventory("n1"), "i1", 7.0, conn_token=2)
    r.validate()
    assert r.tick(8.5) == []
    assert r.get("n1").state == "ready"  # type: ignore[union-attr]
    # a report on the old connection is ignored
    assert r.report("n1", 9.0, conn_token=1) == []
    assert r.get("n1").last_report == 7.0  # type: ignore[union-attr]


def test_tick_does_not_scan_nodes() -> None:
    r = reg(max_nodes=10_000)
    for i in range(10_000):
        r.register(inventory(f"n{i}"), "i", 0.0, conn_token=i + 1)
    r.validate()

    class NoScan(dict[str, Any]):
        def __iter__(self) -> Any:
            raise AssertionError("tick scanned every node")

        def values(self) -> Any:
            raise AssertionError("tick scanned every node")

        def items(self) -> Any:
            raise AssertionError("tick scanned every node")

    r._nodes = NoScan(r._nodes)
    t0 = time.perf_counter()
    for k in range(10_000):
        assert r.tick(1.0 + k * 0.001) == []
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"10,000 idle ticks over 10,000 nodes took {elapsed:.3f}s"


def test_reports_do_not_grow_the_heap() -> None:
    r = reg()
    for i in range(50):
        r.register(inventory(f"n{i}"), "i", 0.0, conn_token=i + 1)
    for t in range(1, 200):
        for i in range(50):
            r.report(f"n{i}", float(t), conn_token=i + 1)
        r.tick(float(t))
    assert len(r._heap) <= 4 * 50 + 64
    assert r.count("ready") == 50
    r.validate()


def test_allocation_and_free() -> None:
    r = reg()
    r.register(inventory("g1", gpus=4), "i", 0.0, conn_token=1)
    key = TaskRef("j", 0, 0)
    r.allocate("g1", key, Resources(2000, 4 * GI, 2), (0, 1))
    r.validate()
    node = r.get("g1")
    assert node is not None
    assert node.free == Resources(6000, 28 * GI, 2, "H100")
    assert node.free_gpu_indexes == [2, 3]
    with pytest.raises(Exception, match="not free"):
        r.allocate("g1", TaskRef("j", 1, 0), Resources(0, 0, 1), (1,))
    with pytest.raises(Exception, match="does not fit"):
        r.allocate("g1", TaskRef("j", 2, 0), Resources(7000, 0, 0), ())
    r.validate()
    assert r.release("g1", key)
    assert not r.release("g1", key)
    r.validate()
    assert node.free == node.allocatable


def test_summary_shapes_counts_and_dirty_flag() -> None:
    r = reg(max_nodes=10)
    for i in range(3):
        r.register(inventory(f"g{i}", gpus=8, cpus=64, memory_gi=512), "i", 0.0, conn_token=i + 1)
    r.register(inventory("c0", cpus=8), "i", 0.0, conn_token=10)
    r.allocate("g0", TaskRef("j", 0, 0), Resources(1000, GI, 2), (0, 1))
    s = r.summary()
    r.validate()
    assert not r.dirty
    assert (s.nodes_total, s.nodes_ready, s.nodes_suspect, s.nodes_dead) == (4, 4, 0, 0)
    assert s.nodes_simulated == 4 and s.max_nodes == 10
    assert s.capacity == Resources(200_000, (3 * 512 + 32) * GI, 24)
    assert s.free == Resources(199_000, (3 * 512 + 32 - 1) * GI, 22)
    assert s.gpus_by_model == {"H100": 24} and s.free_gpus_by_model == {"H100": 22}
    assert s.largest_node == Resources(64_000, 512 * GI, 8, "H100")
    assert s.running_tasks == 1
    shapes = {(sh.gpu_model, sh.free_gpus): (sh.count, sh.best) for sh in s.shapes}
    assert shapes[("H100", 8)] == (2, Resources(64_000, 512 * GI, 8, "H100"))
    assert shapes[("H100", 6)] == (1, Resources(63_000, 511 * GI, 6, "H100"))
    assert shapes[("", 0)] == (1, Resources(8000, 32 * GI, 0, ""))
    assert r.summary() is s  # nothing changed: cached, not recomputed
    r.disconnect("c0", 10, 1.0)
    assert r.dirty
    s2 = r.summary()
    assert s2.nodes_ready == 3 and s2.nodes_suspect == 1
    assert len(s2.to_proto().shapes) == 2


def test_summary_size_depends_on_shapes_not_nodes() -> None:
    r = reg(max_nodes=2000)
    for i in range(2000):
        r.register(inventory(f"n{i}", gpus=8), "i", 0.0, conn_token=i + 1)
    s = r.summary()
    assert len(s.shapes) == 1 and s.shapes[0].count == 2000


def test_bucket_is_log2_with_four_steps_per_doubling() -> None:
    assert bucket(0) == 0
    assert bucket(1024) - bucket(512) == 4
    assert bucket(1000) != bucket(1200)
    assert bucket(1000) == bucket(1010)


def test_cordoned_node_is_not_placeable() -> None:
    r = reg()
    r.register(inventory("n1"), "i", 0.0, conn_token=1)
    r.report("n1", 1.0, conn_token=1, health=NodeHealth(HealthStatus.UNHEALTHY, ("gpu0: xid 79",)))
    r.validate()
    node = r.get("n1")
    assert node is not None and node.view_state == "cordoned"
    assert isinstance(r.place(Resources(1000, GI)), str)
    r.report("n1", 2.0, conn_token=1, health=NodeHealth(HealthStatus.HEALTHY))
    assert not isinstance(r.place(Resources(1000, GI)), str)
    r.validate()


def test_shrunk_inventory_evicts_what_no_longer_fits() -> None:
    r = reg()
    r.register(inventory("n1", cpus=8), "i1", 0.0, conn_token=1)
    r.allocate("n1", TaskRef("j", 0, 0), Resources(4000, GI), ())
    r.allocate("n1", TaskRef("j", 1, 0), Resources(4000, GI), ())
    r.disconnect("n1", 1, 1.0)
    events = r.register(inventory("n1", cpus=6), "i2", 2.0, conn_token=2)
    r.validate()
    assert events == [
        NodeReady("n1", "i2", joined=False, inventory_changed=True, evicted=(TaskRef("j", 1, 0),))
    ]


def test_old_dead_records_are_forgotten() -> None:
    r = reg(max_nodes=10, dead_retention=1)
    for i in range(3):
        r.register(inventory(f"n{i}"), "i", 0.0, conn_token=i + 1)
        r.disconnect(f"n{i}", i + 1, 0.0)
    events = r.tick(10.0)
    r.validate()
    assert [e for e in events if isinstance(e, NodeForgotten)] == [NodeForgotten("n0"), NodeForgotten("n1")]
    assert r.count("dead") == 1 and set(r.nodes) == {"n2"}


def test_restore_comes_back_suspect_with_a_grace() -> None:
    r = reg()
    r.restore(inventory("n1"), "i1", dead=False, now=100.0)
    r.restore(inventory("n2"), "i1", dead=True, now=100.0)
    r.validate()
    assert r.get("n1").state == "suspect" and r.get("n2").state == "dead"  # type: ignore[union-attr]
    assert r.tick(110.0) == []  # grace is max(silent 15, dead 5)
    r.register(inventory("n1"), "i2", 111.0, conn_token=5)
    r.validate()
    assert r.get("n1").state == "ready"  # type: ignore[union-attr]


def test_page_walks_every_node_in_order() -> None:
    r = reg()
    for i in range(7):
        r.register(inventory(f"n{i}"), "i", 0.0, conn_token=i + 1)
    seen: list[str] = []
    token = ""
    while True:
        page, token = r.page(token, 3)
        seen += [n.node_id for n in page]
        if not token:
            break
    assert seen == [f"n{i}" for i in range(7)]
