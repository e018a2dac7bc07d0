"""The power-spill walk-through of docs/scheduling.md: its files load, and its numbers are the code's.

The walk-through runs `examples/power-spill/train.yaml` on `examples/power-spill/topology.yaml`
and explains the outcome with numbers (16 GPUs of power headroom in east, a 2 + 2 DP split, 1.1%
loss on the 3.2 Tbit/s link, 8.4% on 400 Gbit/s). These tests feed the same files to the same pure
code the master uses (the power book, the gang planner, the loss model), so a change that moves
those numbers shows up here and the page can be corrected. The real-process version of the story
is tests/e2e/test_e2e_gang.py.
"""

from __future__ import annotations

import pathlib

import pytest

from domainos.jobspec import JobSpec, parse_spec_yaml
from domainos.resources import Resources
from domainos.topology import Topology, load_topology
from master_domain._sched._gang import GangPlan, plan_gang
from master_domain._sched._loss import Link, LinkTable, estimate_cross_loss
from master_domain._sched._power import PowerBook, RegionPower
from master_domain._sched._topology import GpuLimit, SubDomainView, Unplaceable
from master_domain._summary import Shape
from node_agent._hardware import SimulatedHardware

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "power-spill"
DOC = ROOT / "docs" / "scheduling.md"


def _topology() -> Topology:
    topo = load_topology(str(EXAMPLE / "topology.yaml"))
    topo.validate()
    return topo


def _job() -> JobSpec:
    return parse_spec_yaml((EXAMPLE / "train.yaml").read_text(), "train.yaml")


def _links(topo: Topology) -> LinkTable:
    return LinkTable(
        {(ln.between[0], ln.between[1]): Link(ln.bandwidth_gbps, ln.distance_km) for ln in topo.links}
    )


def _views(topo: Topology) -> list[SubDomainView]:
    """Each sub-domain as the master sees it on an idle federation: one shape of empty nodes."""
    views = []
    for region, sd in topo.subdomains():
        shapes = []
        for group in sd.agents:
            inv = group.inventory
            assert inv is not None
            best = Resources(inv.cpus * 1000, inv.memory_bytes, inv.gpus, inv.gpu_model)
            shapes.append(Shape(inv.gpu_model, inv.gpus, group.count, best, inv.domain_size))
        views.append(SubDomainView(sd.id, region.name, tuple(shapes)))
    return views


def _idle_power(topo: Topology) -> PowerBook:
    """The power book after the first summaries: every simulated GPU idle."""
    book = PowerBook([RegionPower.from_topology(r) for r in topo.regions])
    for region, sd in topo.subdomains():
        if region.name not in book.regions():
            continue
        gpus = sum(g.count * (g.inventory.gpus if g.inventory else 0) for g in sd.agents)
        book.observe(region.name, sd.id, gpus * SimulatedHardware.IDLE_POWER_W)
    return book


def test_the_topology_is_two_regions_with_a_budget_and_a_fast_link() -> None:
    topo = _topology()
    assert [r.name for r in topo.regions] == ["east", "west"]
    assert topo.power_budgets_kw() == {"east": 14.0}
    assert [(a.node_id, a.block) for a in topo.agents()] == [
        ("east-1-n1", "h100-b1"),
        ("east-1-n2", "h100-b1"),
        ("east-1-n3", "h100-b2"),
        ("east-1-n4", "h100-b2"),
        ("west-1-n1", ""),
        ("west-1-n2", ""),
    ]
    assert all(a.simulated and a.inventory is not None and a.inventory.gpus == 8 for a in topo.agents())
    assert _links(topo).link("west", "east") == Link(3200, 50)


def test_the_job_is_a_tp4_pp2_dp4_training_gang() -> None:
    spec = _job()
    assert spec.parallelism is not None
    assert (spec.parallelism.tp, spec.parallelism.pp, spec.parallelism.dp) == (4, 2, 4)
    assert spec.replicas == 8 and spec.resources.gpus == 4
    assert spec.resources.gpu_model == "H100-SXM-80GB"
    assert spec.is_gang and spec.gang_min == 8 and spec.gang_timeout_s == 120
    assert spec.model is not None and spec.model.parameters == 7_000_000_000
    assert spec.iteration_time_s == 4.0 and spec.max_cross_domain_loss == 0.02
    assert JobSpec.from_proto(spec.to_proto()) == spec


def test_east_has_power_for_16_more_gpus() -> None:
    book = _idle_power(_topology())
    assert book.measured_w("east") == 2240  # 32 idle GPUs x 70 W
    assert book.headroom_w("east") == 11_760
    assert book.model.tdp("H100-SXM-80GB") == 700
    assert book.headroom_w("east") // 700 == 16  # two DP replicas of 8 GPUs


def test_the_plan_splits_two_replicas_per_region_within_the_loss_budget() -> None:
    topo = _topology()
    spec = _job()
    limit = GpuLimit(int(_idle_power(topo).headroom_w("east") // 700), "power")
    plan = plan_gang(spec, range(8), _views(topo), _links(topo), region_limits=lambda model: {"east": limit})
    assert isinstance(plan, GangPlan), plan
    assert dict(plan.parts) == {"east-1": (0, 1, 2, 3), "west-1": (4, 5, 6, 7)}
    assert plan.loss is not None
    assert plan.loss.loss == pytest.approx(0.0425 / 4.0)
    assert plan.loss.brief() == "1.1% per iteration (t_cross 42.5 ms / t_iter 4.0 s)"


def test_over_a_400_gbit_link_the_job_waits_for_one_domain() -> None:
    topo = _topology()
    limit = GpuLimit(16, "power")
    slow = LinkTable({("east", "west"): Link(400, 50)})
    plan = plan_gang(_job(), range(8), _views(topo), slow, region_limits=lambda model: {"east": limit})
    assert isinstance(plan, Unplaceable) and plan.rule == "loss", plan
    assert "8.4% per iteration (t_cross 336 ms / t_iter 4.0 s)" in plan.reason


def test_the_70b_numbers_of_the_page() -> None:
    est = estimate_cross_loss(
        params=70_000_000_000, bytes_per_param=2, tp=8, pp=4, link=LinkTable().intra_region, t_iter_s=10.0
    )
    assert LinkTable().intra_region == Link(400.0, 0.0)
    assert est.t_cross_s == pytest.approx(3.36)
    assert est.brief() == "33.6% per iteration (t_cross 3.36 s / t_iter 10.0 s)"
    text = DOC.read_text()
    for quoted in ("33.6%", "3.36 s", "1.1%", "8.4%", "11.76 kW", "16 GPUs"):
        assert quoted in text, quoted


def test_the_page_names_the_example_commands() -> None:
    text = DOC.read_text()
    for command in (
        "domainctl up --detach --topology examples/power-spill/topology.yaml",
        "domainctl submit examples/power-spill/train.yaml",
        "domainctl explain ",
        "domainctl job ",
        "domainctl down",
    ):
        assert command in text, command


def _yaml_blocks(text: str) -> list[str]:
    blocks: list[str] = []
    current: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("```yaml"):
            inside, current = True, []
        elif inside and line.startswith("```"):
            inside = False
            blocks.append("\n".join(current) + "\n")
        elif inside:
            current.append(line)
    return blocks


def test_the_yaml_on_the_page_is_valid(tmp_path: pathlib.Path) -> None:
    """The topology and job specs docs/scheduling.md shows load with the real loaders."""
    blocks = _yaml_blocks(DOC.read_text())
    topologies = [b for b in blocks if b.startswith("version: 1")]
    jobs = [b for b in blocks if "command:" in b]
    assert topologies and jobs
    for i, text in enumerate(topologies):
        path = tmp_path / f"topology-{i}.yaml"
        path.write_text(text)
        load_topology(str(path)).validate()
    for text in jobs:
        parse_spec_yaml(text, "docs/scheduling.md")
