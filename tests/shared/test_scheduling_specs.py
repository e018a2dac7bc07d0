"""Scheduling data in the shared specs: the job's priority class, the topology's inter-region links
and power budgets, and the master's ``topology`` setting."""

from __future__ import annotations

import pathlib

import pytest

from domainos.errors import ConfigError, InvalidArgument
from domainos.jobspec import JobSpec, parse_spec
from domainos.topology import load_topology
from master_domain._config import MasterConfig
from master_domain._jobs import spec_from_dict, spec_to_dict

# -- priority ---------------------------------------------------------------------------------


def test_priority_defaults_to_normal_and_round_trips() -> None:
    spec = parse_spec({"command": ["echo"]})
    assert spec.priority == "normal"
    for name in ("low", "normal", "high", "system"):
        spec = parse_spec({"command": ["echo"], "priority": name})
        assert spec.priority == name
        assert JobSpec.from_proto(spec.to_proto()).priority == name
        assert spec_from_dict(spec_to_dict(spec)).priority == name


def test_a_proto_without_priority_is_normal() -> None:
    msg = parse_spec({"command": ["echo"]}).to_proto()
    msg.priority = ""
    assert JobSpec.from_proto(msg).priority == "normal"


def test_a_stored_spec_from_before_priorities_is_normal() -> None:
    data = spec_to_dict(parse_spec({"command": ["echo"]}))
    del data["priority"]
    assert spec_from_dict(data).priority == "normal"


@pytest.mark.parametrize("value", ["urgent", "HIGH", 3, True, ["high"]])
def test_unknown_priority_is_refused_listing_the_classes(value: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_spec({"command": ["echo"], "priority": value})
    assert info.value.field == "priority"
    assert "allowed: low|normal|high|system (default normal)" in info.value.message
    assert f"unknown priority class {value!r}" in info.value.message


def test_unknown_priority_over_the_wire() -> None:
    msg = parse_spec({"command": ["echo"]}).to_proto()
    msg.priority = "vip"
    with pytest.raises(InvalidArgument, match="unknown priority class 'vip'"):
        JobSpec.from_proto(msg)


# -- topology: links and power budgets ---------------------------------------------------------

BASE = """\
version: 1
regions:
  - name: east
    power_budget_kw: {east_kw}
    subdomains: [{{id: east-1}}]
  - name: west
    subdomains: [{{id: west-1}}]
  - name: north
    subdomains: [{{id: north-1}}]
"""


def write(tmp_path: pathlib.Path, links: str = "", east_kw: str = "40") -> str:
    path = tmp_path / "topology.yaml"
    path.write_text(BASE.format(east_kw=east_kw) + links)
    return str(path)


def test_links_and_budgets_load(tmp_path: pathlib.Path) -> None:
    topo = load_topology(
        write(
            tmp_path,
            "links:\n"
            "  - {between: [east, west], bandwidth_gbps: 100, distance_km: 1200}\n"
            "  - {between: [west, north], bandwidth_gbps: 400.5, distance_km: 30}\n",
        )
    )
    assert [(link.pair, link.bandwidth_gbps, link.distance_km) for link in topo.links] == [
        (("east", "west"), 100.0, 1200.0),
        (("north", "west"), 400.5, 30.0),
    ]
    assert topo.power_budgets_kw() == {"east": 40.0}
    assert topo.region("west") is not None and topo.region("south") is None


def test_no_links_is_fine(tmp_path: pathlib.Path) -> None:
    assert load_topology(write(tmp_path)).links == []


@pytest.mark.parametrize(
    ("links", "message"),
    [
        (
            "  - {between: [east, south], bandwidth_gbps: 1, distance_km: 1}\n",
            "links[0].between: unknown region 'south'; regions: east, north, west",
        ),
        (
            "  - {between: [east, east], bandwidth_gbps: 1, distance_km: 1}\n",
            "links.between: expected two different region names, got ['east', 'east']",
        ),
        ("  - {between: [east], bandwidth_gbps: 1, distance_km: 1}\n", "expected two different region names"),
        (
            "  - {between: [east, west], bandwidth_gbps: 0, distance_km: 1}\n",
            "links[east-west].bandwidth_gbps: must be a positive number, got 0.0",
        ),
        (
            "  - {between: [east, west], bandwidth_gbps: 10, distance_km: -5}\n",
            "links[east-west].distance_km: must be a positive number, got -5.0",
        ),
        (
            "  - {between: [east, west], bandwidth_gbps: fast, distance_km: 1}\n",
            "expected a number, got 'fast'",
        ),
        (
            "  - {between: [east, west], bandwidth_gbps: 1, distance_km: 1}\n"
            "  - {between: [west, east], bandwidth_gbps: 2, distance_km: 1}\n",
            "links[1].between: duplicate link between east and west",
        ),
        ("  - {between: [east, west], bandwidth_gbps: 1, latency: 3}\n", "unknown field links[0].latency"),
    ],
)
def test_bad_links_are_refused_naming_the_field(tmp_path: pathlib.Path, links: str, message: str) -> None:
    path = write(tmp_path, "links:\n" + links)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert message in str(info.value)
    assert path in str(info.value)


@pytest.mark.parametrize("kw", ["-1", ".nan", ".inf"])
def test_power_budget_must_be_a_finite_number_not_below_zero(tmp_path: pathlib.Path, kw: str) -> None:
    with pytest.raises(ConfigError, match=r"regions\[east\].power_budget_kw: must be a number >= 0"):
        load_topology(write(tmp_path, east_kw=kw))


def test_zero_budget_means_no_cap(tmp_path: pathlib.Path) -> None:
    assert load_topology(write(tmp_path, east_kw="0")).power_budgets_kw() == {}


# -- the master's topology setting -------------------------------------------------------------


def test_master_config_loads_and_validates_its_topology(tmp_path: pathlib.Path) -> None:
    assert MasterConfig(insecure=True).load_topology() is None
    good = write(tmp_path)
    topo = MasterConfig(insecure=True, topology=good).load_topology()
    assert topo is not None and topo.power_budgets_kw() == {"east": 40.0}
    with pytest.raises(ConfigError) as info:
        MasterConfig(insecure=True, topology=str(tmp_path / "missing.yaml")).validate()
    assert info.value.field == "topology" and "file not found" in str(info.value)
    bad = write(tmp_path, east_kw="-3")
    with pytest.raises(ConfigError, match="power_budget_kw: must be a number >= 0"):
        MasterConfig(insecure=True, topology=bad).validate()


def test_domainctl_up_passes_its_topology_file_to_the_master(tmp_path: pathlib.Path) -> None:
    from domainctl._local import Paths, master_config

    paths = Paths(tmp_path / "home")
    assert "topology" not in master_config(paths, None)
    conf = master_config(paths, None, topology_file=write(tmp_path))
    assert conf["topology"] == str((tmp_path / "topology.yaml").resolve())
