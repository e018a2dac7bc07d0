"""The topology file's node facts: NVLink domains, board power, blocks, labels and dataset shards per
agent group; precise errors for each; and the agent configs `domainctl up` / `domainctl compose`
derive from them (which the agent's own validation accepts)."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest
import yaml

from domainctl import _local
from domainctl._compose import render
from domainos import config as dconfig
from domainos import topology as topology_module
from domainos.errors import ConfigError
from domainos.topology import SimInventory, Topology, default_tdp_w, load_topology
from node_agent import AgentConfig
from node_agent._hardware import SimulatedHardware

GIB = 2**30


def topo(*groups: dict[str, Any], region2: list[dict[str, Any]] | None = None) -> Topology:
    regions: list[dict[str, Any]] = [
        {"name": "east", "subdomains": [{"id": "east-1", "agents": list(groups)}]},
    ]
    if region2 is not None:
        regions.append({"name": "west", "subdomains": [{"id": "west-1", "agents": region2}]})
    return dconfig.build(Topology, {"version": 1, "regions": regions})


def sim(**inv: Any) -> dict[str, Any]:
    return {"simulated": True, "inventory": {"cpus": 16, "memory": "64Gi", **inv}}


def test_module_docstring_example_is_a_valid_topology() -> None:
    doc = topology_module.__doc__ or ""
    text = doc.split("::", 1)[1].split('"""')[0]
    data = yaml.safe_load(text)
    t = dconfig.build(Topology, data)
    t.validate()
    plans = t.agents()
    l40s = [p for p in plans if p.inventory is not None and p.inventory.gpu_model == "L40S"]
    assert [p.block for p in l40s] == ["l40s-b1", "l40s-b1", "l40s-b2", "l40s-b2"]
    assert all(p.datasets == {"corpus": [0, 1]} and p.labels == {"zone": "a"} for p in l40s)


def test_groups_declare_blocks_labels_datasets_and_gpu_facts() -> None:
    t = topo(
        {
            "count": 5,
            **sim(gpus=8, gpu_model="H100-SXM-80GB", nvlink_domain_size=4, gpu_tdp_w=600, gpu_memory="94Gi"),
            "labels": {"zone": "a"},
            "blocks": 2,
            "datasets": {"corpus": [0, 1], "wiki": [3]},
        },
        {"name": "cpu", "count": 2, "block": "spine-7"},
        {"name": "t4", "count": 3, **sim(gpus=4, gpu_model="T4", nvlink=False), "blocks": 3},
    )
    plans = t.agents()
    assert [p.node_id for p in plans] == [f"east-1-n{i}" for i in range(1, 11)]
    # blocks: N spreads the group's agents over N blocks in contiguous runs, named <group>-b<i>.
    assert [p.block for p in plans] == [
        *["east-1-g1-b1"] * 3,
        *["east-1-g1-b2"] * 2,
        "spine-7",
        "spine-7",
        "t4-b1",
        "t4-b2",
        "t4-b3",
    ]
    assert plans[0].labels == {"zone": "a"} and plans[0].datasets == {"corpus": [0, 1], "wiki": [3]}
    inv = plans[0].inventory
    assert inv is not None and inv.domain_size == 4 and inv.tdp_w == 600 and inv.gpu_memory_bytes == 94 * GIB
    t4 = plans[-1].inventory
    assert t4 is not None and t4.domain_size == 1 and t4.tdp_w == 70


def test_heterogeneous_federation_across_groups_and_regions() -> None:
    t = topo(
        {"count": 2, **sim(gpus=8, gpu_model="H100-SXM-80GB")},
        {"count": 2, **sim(gpus=8, gpu_model="A100-40GB", gpu_memory="40Gi")},
        region2=[
            {"count": 1, **sim(gpus=8, gpu_model="MI300X", gpu_memory="192Gi")},
            {"count": 1, **sim(gpus=4, gpu_model="L40S", gpu_memory="48Gi", nvlink_domain_size=1)},
        ],
    )
    facts = []
    for plan in t.agents():
        assert plan.inventory is not None
        inv = SimulatedHardware(plan.node_id, plan.inventory, region=plan.region).inventory()
        g = inv.gpus[0]
        facts.append((plan.region, g.model, g.memory_bytes // GIB, g.tdp_w, len(inv.nvlink_domains())))
    assert facts == [
        ("east", "H100-SXM-80GB", 80, 700, 1),
        ("east", "H100-SXM-80GB", 80, 700, 1),
        ("east", "A100-40GB", 40, 400, 1),
        ("east", "A100-40GB", 40, 400, 1),
        ("west", "MI300X", 192, 750, 1),
        ("west", "L40S", 48, 350, 4),
    ]


@pytest.mark.parametrize(
    ("group", "field", "message"),
    [
        (
            sim(gpus=8, gpu_model="H100", nvlink_domain_size=3),
            "inventory.nvlink_domain_size",
            "a divisor of gpus=8",
        ),
        (sim(gpus=8, gpu_model="H100", nvlink_domain_size=16), "inventory.nvlink_domain_size", "got 16"),
        (sim(gpus=8, gpu_model="H100", nvlink_domain_size=-1), "inventory.nvlink_domain_size", "got -1"),
        (
            sim(gpus=8, gpu_model="H100", nvlink=False, nvlink_domain_size=4),
            "inventory.nvlink_domain_size",
            "nvlink: false means no NVLink",
        ),
        (
            sim(gpus=8, gpu_model="H100", gpu_tdp_w=-5),
            "inventory.gpu_tdp_w",
            "between 0 (by model) and 10000 W",
        ),
        (sim(gpus=8, gpu_model="H100", gpu_tdp_w=20000), "inventory.gpu_tdp_w", "got 20000"),
        ({"count": 2, "block": "a", "blocks": 2}, "agents.blocks", "either block (one name) or blocks"),
        ({"count": 2, "blocks": 3}, "agents.blocks", "between 0 and count=2"),
        ({"count": 2, "blocks": -1}, "agents.blocks", "got -1"),
        ({"count": 1, "block": "-bad"}, "agents.block", "not a valid block name"),
        ({"count": 1, "name": "Bad_Name"}, "agents.name", "not a valid name"),
        ({"count": 1, "datasets": {"corpus": []}}, "agents.datasets.corpus", "at least one shard"),
        ({"count": 1, "datasets": {"corpus": [1, 1]}}, "agents.datasets.corpus", "distinct integers >= 0"),
        ({"count": 1, "datasets": {"corpus": [-2]}}, "agents.datasets.corpus", "distinct integers >= 0"),
        ({"count": 1, "datasets": {"bad name": [0]}}, "agents.datasets.bad name", "not a valid dataset name"),
    ],
)
def test_new_fields_are_validated_with_the_field_named(
    group: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        topo({"count": 1, **group})
    assert info.value.field == field


def test_wrong_types_and_unknown_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"datasets\.corpus\[0\].*expected an integer"):
        topo({"count": 1, "datasets": {"corpus": ["zero"]}})
    with pytest.raises(ConfigError, match=r"unknown field .*nvlink_domains.*allowed: .*nvlink_domain_size"):
        topo(sim(gpus=8, gpu_model="H100", nvlink_domains=2))
    with pytest.raises(ConfigError, match=r"unknown field .*block_count.*allowed: block, blocks"):
        topo({"count": 1, "block_count": 2})
    with pytest.raises(ConfigError, match="duplicate agent group name 'gpu' in sub-domain east-1"):
        topo({"name": "gpu", "count": 1}, {"name": "gpu", "count": 1})


def test_default_tdp_table() -> None:
    assert [default_tdp_w(m) for m in ("H100", "h200-nvl", "A100", "L40S", "T4", "MI300X", "X1")] == [
        700,
        700,
        400,
        350,
        70,
        750,
        300,
    ]
    assert SimInventory(gpus=0).tdp_w == 0


def _topology_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "topo.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "regions": [
                    {
                        "name": "east",
                        "subdomains": [
                            {
                                "id": "east-1",
                                "agents": [
                                    {
                                        "count": 2,
                                        **sim(gpus=8, gpu_model="H100", nvlink_domain_size=4, gpu_tdp_w=650),
                                        "labels": {"zone": "a"},
                                        "blocks": 2,
                                        "datasets": {"corpus": [0, 1]},
                                    },
                                    {"count": 1, "block": "cpu-rack"},
                                ],
                            }
                        ],
                    }
                ],
            }
        )
    )
    return path


def test_domainctl_up_agent_configs_carry_the_topology_facts(tmp_path: pathlib.Path) -> None:
    t = load_topology(str(_topology_file(tmp_path)))
    paths = _local.Paths(tmp_path / "home")
    cfgs = [_local.agent_config(paths, plan, "127.0.0.1:7101") for plan in t.agents()]
    assert [c.get("block") for c in cfgs] == ["east-1-g1-b1", "east-1-g1-b2", "cpu-rack"]
    assert cfgs[0]["datasets"] == {"corpus": [0, 1]} and "datasets" not in cfgs[2]
    assert cfgs[0]["inventory"]["nvlink_domain_size"] == 4 and cfgs[0]["inventory"]["gpu_tdp_w"] == 650
    assert cfgs[0]["labels"] == {"zone": "a"}
    # The agent accepts what `domainctl up` writes (the same YAML round trip as the daemon).
    for c in cfgs:
        cfg = dconfig.build(AgentConfig, yaml.safe_load(yaml.safe_dump({**c, "insecure": True})))
        cfg.validate()
    agent = dconfig.build(AgentConfig, yaml.safe_load(yaml.safe_dump({**cfgs[1], "insecure": True})))
    assert agent.block == "east-1-g1-b2" and agent.datasets == {"corpus": [0, 1]}
    assert agent.inventory is not None and agent.inventory.domain_size == 4


def test_domainctl_compose_agent_configs_carry_the_topology_facts(tmp_path: pathlib.Path) -> None:
    files = render(load_topology(str(_topology_file(tmp_path))))
    agents = {rel: yaml.safe_load(text) for rel, text in files.items() if "/agent-east-1-n" in rel}
    assert len(agents) == 3
    by_node = {c["node_id"]: c for c in agents.values()}
    assert by_node["east-1-n1"]["block"] == "east-1-g1-b1"
    assert by_node["east-1-n2"]["datasets"] == {"corpus": [0, 1]}
    assert by_node["east-1-n2"]["inventory"]["nvlink_domain_size"] == 4
    assert by_node["east-1-n3"]["block"] == "cpu-rack" and "inventory" not in by_node["east-1-n3"]
    for c in agents.values():
        dconfig.build(AgentConfig, c)  # the daemon's own validation


def test_agent_config_validates_block_and_datasets() -> None:
    base: dict[str, Any] = {"node_id": "n1", "subdomains": ["127.0.0.1:7100"], "insecure": True}
    with pytest.raises(ConfigError, match="not a valid block name") as info:
        dconfig.build(AgentConfig, {**base, "block": "bad block"})
    assert info.value.field == "block"
    with pytest.raises(ConfigError, match="distinct integers") as info:
        dconfig.build(AgentConfig, {**base, "datasets": {"corpus": [0, 0]}})
    assert info.value.field == "datasets.corpus"
    cfg = dconfig.build(AgentConfig, {**base, "state_dir": "/tmp/x"})
    assert cfg.data_dir == "/tmp/x/data"
