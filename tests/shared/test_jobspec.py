from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domainos.errors import InvalidArgument
from domainos.jobspec import JobSpec, parse_spec, parse_spec_yaml
from domainos.resources import Resources


def test_defaults_and_round_trip() -> None:
    spec = parse_spec({"command": ["echo", "hi"]})
    assert spec.replicas == 1
    assert spec.resources == Resources(1000, 256 * 2**20, 0, "")
    assert spec.retry.on_exit == 0 and spec.retry.on_lost == 3
    assert JobSpec.from_proto(spec.to_proto()) == spec


def test_shell_string_command() -> None:
    assert parse_spec({"command": "echo $HOME"}).command == ("/bin/sh", "-c", "echo $HOME")


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"command": ["x"], "colour": "red"}, "colour", "unknown field"),
        ({"command": []}, "command", "is required"),
        ({}, "command", "is required"),
        ({"command": ["x"], "resources": {"cpus": -1}}, "resources.cpus", "greater than 0"),
        ({"command": ["x"], "resources": {"cpus": "lots"}}, "resources.cpus", "expected a number"),
        ({"command": ["x"], "resources": {"memory": "12 parsecs"}}, "resources.memory", "expected a size"),
        ({"command": ["x"], "resources": {"memory": -5}}, "resources.memory", "greater than 0"),
        ({"command": ["x"], "resources": {"gpus": 1.5}}, "resources.gpus", "whole number"),
        ({"command": ["x"], "resources": {"disk": 1}}, "resources.disk", "unknown field"),
        ({"command": ["x"], "replicas": 0}, "replicas", "between 1 and 10000"),
        ({"command": ["x"], "replicas": "many"}, "replicas", "whole number"),
        ({"command": ["x"], "env": {"1BAD": "v"}}, "env", "not a valid environment variable"),
        ({"command": ["x"], "retry": {"on_exit": -1}}, "retry.on_exit", "between 0 and 100"),
        ({"command": [""]}, "command[0]", "must not be empty"),
        ({"command": ["x", {"a": 1}]}, "command[1]", "expected a string"),
    ],
)
def test_bad_specs_name_the_field(data: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_spec(data)
    assert exc.value.field == field
    assert fragment in str(exc.value)
    assert str(exc.value).startswith(f"{field}: ")


def test_malformed_yaml_names_the_line() -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_spec_yaml("command: [echo\nreplicas: 2\n", "job.yaml")
    assert "malformed YAML at job.yaml:" in str(exc.value)


def test_yaml_not_a_mapping() -> None:
    with pytest.raises(InvalidArgument, match="must be a mapping"):
        parse_spec_yaml("- a\n- b\n")


def test_negative_resources_over_the_wire() -> None:
    msg = parse_spec({"command": ["x"]}).to_proto()
    msg.resources.cpu_millis = -5
    with pytest.raises(InvalidArgument) as exc:
        JobSpec.from_proto(msg)
    assert exc.value.field == "resources.cpus"


@given(
    replicas=st.integers(1, 10_000),
    cpus=st.integers(1, 64_000),
    mem=st.integers(1, 2**40),
    gpus=st.integers(0, 16),
    args=st.lists(
        st.text(
            alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_any_valid_spec_round_trips(replicas: int, cpus: int, mem: int, gpus: int, args: list[str]) -> None:
    if not args[0].strip():
        args[0] = "prog"
    spec = parse_spec(
        {
            "command": args,
            "replicas": replicas,
            "resources": {"cpus": f"{cpus}m", "memory": mem, "gpus": gpus},
        }
    )
    assert JobSpec.from_proto(spec.to_proto()) == spec


def test_unpaired_surrogates_are_refused_not_crashed_on() -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_spec({"command": ["echo", "\ud800"]})
    assert exc.value.field == "command[1]" and "UTF-8" in str(exc.value)
    with pytest.raises(InvalidArgument) as exc:
        parse_spec({"command": ["echo"], "env": {"A": "\udfff"}})
    assert exc.value.field == "env.A"
