from __future__ import annotations

import pathlib

import pytest

from domainos.config import build, load, parse_set_flags
from domainos.errors import ConfigError
from domainos.resources import format_cpus, format_memory, parse_cpus, parse_memory
from domainos.topology import SimInventory, Topology, load_topology


def test_default_topology_is_two_regions_two_agents_each() -> None:
    topo = load_topology(None)
    assert [r.name for r in topo.regions] == ["east", "west"]
    assert [a.node_id for a in topo.agents()] == ["east-1-n1", "east-1-n2", "west-1-n1", "west-1-n2"]


def test_topology_unknown_field(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text("version: 1\nregions:\n  - name: east\n    subdomain: []\n")
    with pytest.raises(ConfigError) as exc:
        load_topology(str(p))
    assert "unknown field regions[0].subdomain; allowed: name, power_budget_kw, subdomains" in str(exc.value)
    assert str(p) in str(exc.value)


def test_topology_malformed_yaml_names_line(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text("version: 1\nregions: [\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at .*t.yaml:\d+"):
        load_topology(str(p))


def test_topology_duplicate_subdomain() -> None:
    data = {
        "regions": [{"name": "a", "subdomains": [{"id": "x"}]}, {"name": "b", "subdomains": [{"id": "x"}]}]
    }
    with pytest.raises(ConfigError, match="duplicate sub-domain id 'x'"):
        build(Topology, data)


def test_sim_inventory_needs_model_for_gpus() -> None:
    with pytest.raises(ConfigError, match=r"inventory\.gpu_model: is required"):
        build(SimInventory, {"gpus": 8})


def test_wrong_type_names_path() -> None:
    with pytest.raises(ConfigError) as exc:
        build(Topology, {"regions": [{"name": "a", "subdomains": [{"id": "x", "max_nodes": "lots"}]}]})
    assert "regions[0].subdomains[0].max_nodes" in str(exc.value)
    assert "expected an integer" in str(exc.value)


def test_load_with_overrides(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text("name: from-file\nregions:\n  - name: east\n")
    topo = load(Topology, str(p), {"name": "from-flag"})
    assert topo.name == "from-flag"
    assert parse_set_flags(["a.b=3", "c=true"]) == {"a.b": 3, "c": True}
    with pytest.raises(ConfigError):
        parse_set_flags(["novalue"])


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(Topology, "/nonexistent/x.yaml")


@pytest.mark.parametrize(
    ("text", "expected"), [("512Mi", 512 * 2**20), ("2G", 2 * 10**9), ("1.5GiB", 3 * 2**29), (1024, 1024)]
)
def test_parse_memory(text: object, expected: int) -> None:
    assert parse_memory(text) == expected


def test_parse_cpus_and_format() -> None:
    assert parse_cpus("500m") == 500
    assert parse_cpus(2) == 2000
    assert parse_cpus(0.25) == 250
    assert format_memory(3 * 2**29) == "1.5Gi"


@pytest.mark.parametrize(
    ("millis", "text"), [(1, "0.001"), (10, "0.01"), (500, "0.5"), (4500, "4.5"), (2000, "2"), (1250, "1.25")]
)
def test_format_cpus_is_exact_to_the_millicore(millis: int, text: str) -> None:
    assert format_cpus(millis) == text
    assert parse_cpus(text) == millis
