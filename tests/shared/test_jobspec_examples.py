"""Every job file in examples/ is a valid spec, and says what it claims."""

from __future__ import annotations

import pathlib

import pytest

from domainos.jobspec import JobSpec, parse_spec_yaml

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yml"))


def _load(name: str) -> JobSpec:
    return parse_spec_yaml((EXAMPLES / name).read_text(), name)


def test_there_are_examples() -> None:
    assert {"hello.yaml", "train-llm.yaml", "gang.yaml", "shares.yaml"} <= {p.name for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_example_parses_and_round_trips(path: pathlib.Path) -> None:
    spec = parse_spec_yaml(path.read_text(), path.name)
    assert JobSpec.from_proto(spec.to_proto()) == spec
    assert JobSpec.from_dict(spec.to_dict()) == spec


def test_train_llm() -> None:
    spec = _load("train-llm.yaml")
    assert spec.parallelism is not None and (
        spec.parallelism.tp,
        spec.parallelism.pp,
        spec.parallelism.dp,
    ) == (8, 2, 4)
    assert spec.replicas == 8 and spec.resources.gpus == 8 and spec.resources.gpu_model == "H100"
    assert (
        spec.model is not None
        and spec.model.parameters == 7_000_000_000
        and spec.model.bytes_per_parameter == 2
    )
    assert spec.iteration_time_s == 2.0 and spec.is_gang and spec.gang_min == 8


def test_gang() -> None:
    spec = _load("gang.yaml")
    assert spec.replicas == 4 and spec.gang_min == 4 and spec.resources.gpus == 0
    assert spec.gang is not None and spec.gang.timeout_s == 90.0


def test_shares() -> None:
    spec = _load("shares.yaml")
    r = spec.resources
    assert spec.replicas == 4 and (r.gpus, r.gpu_share, r.gpu_share_memory) == (0, 25, 4 * 2**30)


def test_the_yaml_forms_in_the_module_docstring_are_valid() -> None:
    import domainos.jobspec as js
    from domainos.config import parse_yaml

    doc = js.__doc__ or ""
    blocks: list[str] = []
    for chunk in doc.split("::\n\n")[1:]:
        lines = []
        for line in chunk.splitlines():
            if line and not line.startswith("    "):
                break
            lines.append(line[4:])
        blocks.append("\n".join(lines))
    assert len(blocks) == 4
    plain = js.parse_spec(parse_yaml(blocks[0], "docstring"))
    assert plain.gang is not None and plain.locality is not None and plain.resources.gpu_share == 50
    training = js.parse_spec({"command": ["train"], **parse_yaml(blocks[1], "docstring")})
    assert training.parallelism is not None and training.model is not None and training.replicas == 8
    pinned = js.parse_spec({"command": ["x"], "replicas": 2, **parse_yaml(blocks[2], "docstring")})
    assert pinned.affinity is not None and [str(n) for n in pinned.affinity.nodes] == [
        "east-1/n1",
        "west-1/n7",
    ]
    assert pinned.affinity.soft and pinned.distinct_nodes
    resilient = js.parse_spec({"command": ["x"], **parse_yaml(blocks[3], "docstring")})
    assert resilient.checkpoint is not None and resilient.disconnect is not None
    assert (resilient.disconnect.lost_after_s, resilient.disconnect.replace) == (300.0, True)
