from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domainos.errors import InvalidArgument
from domainos.jobspec import (
    GangPolicy,
    JobSpec,
    Locality,
    ModelSize,
    Parallelism,
    RetryPolicy,
    parse_spec,
    parse_spec_yaml,
    task_constraints,
)
from domainos.resources import Resources
from master_domain._jobs import spec_from_dict, spec_to_dict


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
        (
            {"command": ["x"], "resources": {"gpus": 1.5}},
            "resources.gpus",
            "whole GPUs, or a fraction below 1",
        ),
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
        st.text(alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), min_size=1),
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


# -- scheduling fields: GPU shares, exclusions, selectors, gangs, training, locality -------------

C: dict[str, object] = {"command": ["x"]}
TRAIN: dict[str, object] = {"command": ["x"], "parallelism": {"tp": 8, "pp": 2, "dp": 4}}


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        # GPU shares
        (
            {**C, "resources": {"gpus": 0.333}},
            "resources.gpus",
            "fractions of a GPU go in 1% steps (0.01 to 0.99), got 0.333",
        ),
        (
            {**C, "resources": {"gpus": 1.5}},
            "resources.gpus",
            "whole GPUs, or a fraction below 1 (a share of one card, e.g. 0.5), got 1.5",
        ),
        (
            {**C, "resources": {"gpus": "half"}},
            "resources.gpus",
            "a fraction of one below 1 such as 0.25, got 'half'",
        ),
        ({**C, "resources": {"gpus": -0.5}}, "resources.gpus", "must be between 0 and 1024, got -0.5"),
        ({**C, "resources": {"gpus": float("nan")}}, "resources.gpus", "expected a whole number of GPUs"),
        (
            {**C, "resources": {"gpus": 2, "gpu_memory": "10Gi"}},
            "resources.gpu_memory",
            "only with a fraction of a GPU (resources.gpus below 1, e.g. 0.5): whole GPUs come with all their memory (resources.gpus is 2)",
        ),
        ({**C, "resources": {"gpu_memory": "10Gi"}}, "resources.gpu_memory", "only with a fraction of a GPU"),
        ({**C, "resources": {"gpus": 0.5, "gpu_memory": "lots"}}, "resources.gpu_memory", "expected a size"),
        # exclusions and selectors
        (
            {**C, "resources": {"exclude_gpu_models": ["T4"]}},
            "resources.exclude_gpu_models",
            "goes at the top level of the spec, next to resources (exclude_gpu_models: [T4]), not under resources",
        ),
        (
            {**C, "exclude_gpu_models": "T4"},
            "exclude_gpu_models",
            "expected a list of GPU model names such as [T4, V100], got 'T4'",
        ),
        (
            {**C, "exclude_gpu_models": ["T4", ""]},
            "exclude_gpu_models[1]",
            "expected a GPU model name such as H100, got ''",
        ),
        ({**C, "exclude_gpu_models": ["T4", "T4"]}, "exclude_gpu_models[1]", "'T4' is listed twice"),
        (
            {**C, "exclude_gpu_models": [f"M{i}" for i in range(33)]},
            "exclude_gpu_models",
            "too many: at most 32 GPU models, got 33",
        ),
        (
            {**C, "exclude_gpu_models": ["T4"], "resources": {"gpus": 1, "gpu_model": "T4"}},
            "exclude_gpu_models",
            "'T4' is both required (resources.gpu_model) and excluded",
        ),
        ({**C, "node_selector": {"bad key!": "x"}}, "node_selector", "'bad key!' is not a valid label key"),
        ({**C, "node_selector": ["zone=a"]}, "node_selector", "expected a mapping of label key to strings"),
        (
            {**C, "node_selector": {f"k{i}": "v" for i in range(33)}},
            "node_selector",
            "too many: at most 32 labels, got 33",
        ),
        # gangs
        (
            {**C, "replicas": 4, "gang": {"min": 5}},
            "gang.min",
            "must be between 1 and 4 (the job's replicas are 4), got 5",
        ),
        ({**C, "replicas": 4, "gang": {"min": 0}}, "gang.min", "must be between 1 and 4"),
        (
            {**C, "replicas": 4, "gang": {"min": "all"}},
            "gang.min",
            "expected a whole number between 1 and 4, got 'all'",
        ),
        ({**C, "gang": {"timeout": "25h"}}, "gang.timeout", "must be > 0 and <= 86400 seconds, got '25h'"),
        ({**C, "gang": {"timeout": 0}}, "gang.timeout", "must be > 0 and <= 86400 seconds, got 0"),
        (
            {**C, "gang": {"timeout": "soon"}},
            "gang.timeout",
            "expected a duration (e.g. 90, '90s', '5m', '1500ms') > 0 and <= 86400 seconds, got 'soon'",
        ),
        ({**C, "gang": {"size": 2}}, "gang.size", "unknown field; allowed: min, timeout"),
        ({**C, "gang": 3}, "gang", "expected true (all tasks), false, or a mapping with min, timeout, got 3"),
        # training
        (
            {**C, "parallelism": {"tp": 65}},
            "parallelism.tp",
            "must be between 1 and 64 (GPUs of one TP group, on one node), got 65",
        ),
        ({**C, "parallelism": {"tp": 0}}, "parallelism.tp", "must be between 1 and 64"),
        (
            {**C, "parallelism": {"pp": "2"}},
            "parallelism.pp",
            "expected a whole number between 1 and 100000, got '2'",
        ),
        (
            {**C, "parallelism": {"tp": 64, "pp": 100, "dp": 100}},
            "parallelism",
            "tp * pp * dp = 640000 GPUs (tp 64 x pp 100 x dp 100); at most 100000",
        ),
        (
            {**C, "parallelism": {"pp": 200, "dp": 100}},
            "parallelism",
            "pp * dp = 20000 tasks (one per TP group; pp 200 x dp 100); at most 10000",
        ),
        ({**C, "parallelism": {"ep": 2}}, "parallelism.ep", "unknown field; allowed: tp, pp, dp"),
        ({**C, "parallelism": [8, 2, 4]}, "parallelism", "expected a mapping with tp, pp, dp"),
        (
            {**TRAIN, "replicas": 4},
            "replicas",
            "a training job has one task per TP group: replicas must equal pp * dp = 8 (pp 2 x dp 4) or be left out, got 4",
        ),
        (
            {**TRAIN, "resources": {"gpus": 4}},
            "resources.gpus",
            "resources.gpus must equal tp = 8 whole GPUs or be left out, got 4",
        ),
        (
            {**TRAIN, "resources": {"gpus": 0.5}},
            "resources.gpus",
            "must equal tp = 8 whole GPUs or be left out, got 0.5",
        ),
        (
            {**TRAIN, "gang": {"min": 4}},
            "gang.min",
            "a training job is a gang of all its tasks: gang.min must equal replicas = 8 (pp 2 x dp 4) or be left out, got 4",
        ),
        (
            {**C, "model": {"parameters": "7B"}},
            "model",
            "is only allowed for a training job (with parallelism: {tp, pp, dp})",
        ),
        ({**C, "iteration_time": 2}, "iteration_time", "is only allowed for a training job"),
        ({**C, "max_cross_domain_loss": 0.1}, "max_cross_domain_loss", "is only allowed for a training job"),
        ({**TRAIN, "model": {}}, "model.parameters", "is required: the model's parameter count, e.g. 7B"),
        (
            {**TRAIN, "model": {"parameters": "7Q"}},
            "model.parameters",
            "expected a whole number of parameters such as 7000000000, 7e9 or '7B' (K, M, B, T), got '7Q'",
        ),
        (
            {**TRAIN, "model": {"parameters": 0.5}},
            "model.parameters",
            "expected a whole number of parameters",
        ),
        (
            {**TRAIN, "model": {"parameters": "2000T"}},
            "model.parameters",
            "must be between 1 and 1e+15, got '2000T'",
        ),
        (
            {**TRAIN, "model": {"parameters": "7B", "bytes_per_parameter": 0}},
            "model.bytes_per_parameter",
            "must be > 0 and <= 16, got 0",
        ),
        (
            {**TRAIN, "model": {"parameters": "7B", "dtype": "bf16"}},
            "model.dtype",
            "unknown field; allowed: parameters, bytes_per_parameter",
        ),
        ({**TRAIN, "iteration_time": 0}, "iteration_time", "must be > 0 and <= 86400 seconds, got 0"),
        ({**TRAIN, "iteration_time": "fast"}, "iteration_time", "expected a duration"),
        ({**TRAIN, "max_cross_domain_loss": 1}, "max_cross_domain_loss", "must be >= 0 and < 1, got 1"),
        ({**TRAIN, "max_cross_domain_loss": -0.1}, "max_cross_domain_loss", "must be >= 0 and < 1, got -0.1"),
        (
            {**TRAIN, "max_cross_domain_loss": "low"},
            "max_cross_domain_loss",
            "expected a number >= 0 and < 1, got 'low'",
        ),
        # locality
        (
            {**C, "locality": {"shards": "0"}},
            "locality.dataset",
            "is required: the name of the dataset the tasks read",
        ),
        (
            {**C, "locality": {"dataset": "../etc"}},
            "locality.dataset",
            "'../etc' is not a valid dataset name: 1-63 letters, digits, '-', '_' or '.'",
        ),
        (
            {**C, "replicas": 4, "locality": {"dataset": "d", "shards": "0-2"}},
            "locality.shards",
            "one shard per task: the job has 4 replicas, got 3 shards",
        ),
        (
            {**C, "replicas": 2, "locality": {"dataset": "d", "shards": [1, 1]}},
            "locality.shards",
            "shard 1 is listed twice",
        ),
        (
            {**C, "replicas": 2, "locality": {"dataset": "d", "shards": [0, -1]}},
            "locality.shards[1]",
            "must be between 0 and 2147483647, got -1",
        ),
        (
            {**C, "replicas": 2, "locality": {"dataset": "d", "shards": "3-1"}},
            "locality.shards",
            "the range '3-1' runs backwards",
        ),
        (
            {**C, "replicas": 2, "locality": {"dataset": "d", "shards": "a,b"}},
            "locality.shards",
            "expected shard numbers such as '0-7' or '0,2,4-5', got 'a,b'",
        ),
        (
            {**C, "locality": {"dataset": "d", "wait": "2h"}},
            "locality.wait",
            "must be >= 0 and <= 3600 seconds, got '2h'",
        ),
        (
            {**C, "locality": {"dataset": "d", "node": "n1"}},
            "locality.node",
            "unknown field; allowed: dataset, shards, wait",
        ),
        (
            {**C, "locality": "imagenet"},
            "locality",
            "expected a mapping with dataset, shards, wait, got 'imagenet'",
        ),
    ],
)
def test_bad_scheduling_fields_name_the_field_and_what_is_allowed(
    data: dict[str, object], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_spec(data)
    assert exc.value.field == field, str(exc.value)
    assert fragment in str(exc.value)
    assert str(exc.value).startswith(f"{field}: ")


def test_unknown_top_level_field_lists_the_new_ones() -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_spec({**C, "pipeline": 2})
    for name in ("gang", "parallelism", "model", "iteration_time", "locality", "exclude_gpu_models"):
        assert name in exc.value.message


@pytest.mark.parametrize(
    ("gpus", "share"),
    [(0.25, 25), ("0.5", 50), (0.01, 1), (0.99, 99), (0.1, 10), (0.29, 29), ("0.07", 7)],
)
def test_fractional_gpus_become_a_share(gpus: object, share: int) -> None:
    r = parse_spec({**C, "resources": {"gpus": gpus}}).resources
    assert (r.gpus, r.gpu_share, r.gpu_share_memory) == (0, share, 0)


@pytest.mark.parametrize(("gpus", "whole"), [(2, 2), (2.0, 2), ("3", 3), (0, 0), ("1.0", 1)])
def test_whole_gpus_written_as_numbers_or_text(gpus: object, whole: int) -> None:
    r = parse_spec({**C, "resources": {"gpus": gpus}}).resources
    assert (r.gpus, r.gpu_share) == (whole, 0)


def test_share_memory_is_rounded_up_to_whole_mib() -> None:
    r = parse_spec({**C, "resources": {"gpus": 0.5, "gpu_memory": 10 * 2**20 + 1}}).resources
    assert r.gpu_share_memory == 11 * 2**20
    r = parse_spec({**C, "resources": {"gpus": 0.5, "gpu_memory": "10Gi"}}).resources
    assert r.gpu_share_memory == 10 * 2**30


def test_exclusions_and_selector() -> None:
    spec = parse_spec(
        {**C, "exclude_gpu_models": ["T4", "V100"], "node_selector": {"zone": "a", "disk": "nvme"}}
    )
    assert spec.exclude_gpu_models == ("T4", "V100")
    assert dict(spec.node_selector) == {"zone": "a", "disk": "nvme"}
    # A required model that is not excluded is fine.
    spec = parse_spec({**C, "exclude_gpu_models": ["T4"], "resources": {"gpus": 1, "gpu_model": "H100"}})
    assert spec.resources.gpu_model == "H100"


@pytest.mark.parametrize(
    ("gang", "expected"),
    [
        (True, GangPolicy(4, 300.0)),
        (False, None),
        (None, None),
        ({}, GangPolicy(4, 300.0)),
        ({"min": 2}, GangPolicy(2, 300.0)),
        ({"min": 3, "timeout": "90s"}, GangPolicy(3, 90.0)),
        ({"timeout": "5m"}, GangPolicy(4, 300.0)),
        ({"timeout": 1.5}, GangPolicy(4, 1.5)),
        ({"timeout": "1h"}, GangPolicy(4, 3600.0)),
        ({"timeout": "24h"}, GangPolicy(4, 86400.0)),
        ({"timeout": "1500ms"}, GangPolicy(4, 1.5)),
    ],
)
def test_gang_forms(gang: object, expected: GangPolicy | None) -> None:
    spec = parse_spec({**C, "replicas": 4, "gang": gang})
    assert spec.gang == expected
    assert spec.is_gang == (expected is not None)
    assert spec.gang_min == (expected.min if expected else 0)


def test_training_job_defaults_replicas_gpus_and_is_a_gang() -> None:
    spec = parse_spec(
        {
            **TRAIN,
            "model": {"parameters": "7B", "bytes_per_parameter": 2},
            "iteration_time": "2s",
            "resources": {"gpu_model": "H100"},
        }
    )
    assert spec.parallelism == Parallelism(8, 2, 4)
    assert spec.replicas == 8 and spec.resources.gpus == 8 and spec.resources.gpu_model == "H100"
    assert spec.is_gang and spec.gang_min == 8 and spec.gang is None
    assert spec.model == ModelSize(7_000_000_000, 2.0)
    assert spec.iteration_time_s == 2.0 and spec.max_cross_domain_loss == 0.02
    # Giving replicas, gpus and gang.min consistently is fine too.
    same = parse_spec({**TRAIN, "replicas": 8, "resources": {"gpus": 8}, "gang": {"min": 8, "timeout": 60}})
    assert same.replicas == 8 and same.gang == GangPolicy(8, 60.0)


@pytest.mark.parametrize(
    ("params", "n"),
    [
        (7_000_000_000, 7_000_000_000),
        (70e9, 70_000_000_000),
        ("70e9", 70_000_000_000),
        ("7B", 7_000_000_000),
        ("7b", 7_000_000_000),
        ("1.5T", 1_500_000_000_000),
        ("350M", 350_000_000),
        ("20K", 20_000),
        ("125000", 125_000),
    ],
)
def test_parameter_counts(params: object, n: int) -> None:
    assert parse_spec({**TRAIN, "model": {"parameters": params}}).model == ModelSize(n, 2.0)


def test_training_job_without_model_still_parses() -> None:
    spec = parse_spec({"command": ["x"], "parallelism": {"tp": 2}})
    assert spec.model is None and spec.iteration_time_s == 0.0 and spec.replicas == 1


@pytest.mark.parametrize(
    ("shards", "expected"),
    [("0-3", (0, 1, 2, 3)), ([7, 3, 5, 1], (7, 3, 5, 1)), ("0,2,4-5", (0, 2, 4, 5)), (None, ())],
)
def test_locality(shards: object, expected: tuple[int, ...]) -> None:
    spec = parse_spec({**C, "replicas": 4, "locality": {"dataset": "imagenet", "shards": shards}})
    assert spec.locality == Locality("imagenet", expected, 30.0)
    assert [spec.locality.shard_of(i) for i in range(4)] == list(expected or range(4))
    spec = parse_spec({**C, "locality": {"dataset": "d", "wait": 0}})
    assert spec.locality is not None and spec.locality.wait_s == 0.0


FULL: dict[str, object] = {
    "name": "full",
    "command": ["python3", "train.py"],
    "parallelism": {"tp": 4, "pp": 2, "dp": 2},
    "resources": {"cpus": 8, "memory": "64Gi", "gpu_model": "H100"},
    "exclude_gpu_models": ["T4"],
    "node_selector": {"zone": "a"},
    "gang": {"timeout": "10m"},
    "model": {"parameters": "13B", "bytes_per_parameter": 2},
    "iteration_time": "1500ms",
    "max_cross_domain_loss": 0.05,
    "locality": {"dataset": "web-text", "shards": "10-13", "wait": "1m"},
    "priority": "high",
}


def test_every_field_round_trips_through_proto_and_store_form() -> None:
    spec = parse_spec(FULL)
    assert JobSpec.from_proto(spec.to_proto()) == spec
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert spec_from_dict(spec_to_dict(spec)) == spec
    share = parse_spec({**C, "replicas": 4, "gang": True, "resources": {"gpus": 0.25, "gpu_memory": "4Gi"}})
    assert JobSpec.from_proto(share.to_proto()) == share
    assert JobSpec.from_dict(share.to_dict()) == share


def test_proto_carries_the_new_fields() -> None:
    msg = parse_spec(FULL).to_proto()
    assert list(msg.exclude_gpu_models) == ["T4"] and dict(msg.node_selector) == {"zone": "a"}
    assert (msg.gang.min, msg.gang.timeout_s) == (4, 600.0)
    assert (msg.parallelism.tp, msg.parallelism.pp, msg.parallelism.dp) == (4, 2, 2)
    assert (msg.model.parameters, msg.model.bytes_per_parameter) == (13_000_000_000, 2.0)
    assert msg.iteration_time_s == 1.5
    assert msg.has_max_cross_domain_loss and msg.max_cross_domain_loss == 0.05
    assert (msg.locality.dataset, list(msg.locality.shards), msg.locality.wait_s) == (
        "web-text",
        [10, 11, 12, 13],
        60.0,
    )
    assert msg.replicas == 4 and msg.resources.gpus == 4
    plain = parse_spec(C).to_proto()
    for name in ("gang", "parallelism", "model", "locality"):
        assert not plain.HasField(name)
    assert not plain.has_max_cross_domain_loss


def test_a_hand_built_proto_takes_defaults_for_zeros() -> None:
    from domainos.api.v1 import master_pb2

    msg = master_pb2.JobSpec(command=["x"])
    msg.parallelism.tp = 8  # pp, dp unset: 1
    msg.gang.SetInParent()  # min and timeout unset: all tasks, the default timeout
    spec = JobSpec.from_proto(msg)
    assert spec.parallelism == Parallelism(8, 1, 1) and spec.replicas == 1 and spec.resources.gpus == 8
    assert spec.gang == GangPolicy(1, 300.0)


def test_bad_shares_over_the_wire() -> None:
    msg = parse_spec(C).to_proto()
    msg.resources.gpu_share_percent = 150
    with pytest.raises(
        InvalidArgument, match=r"resources.gpus: a GPU share is 1..99 percent of one card, got 150"
    ):
        JobSpec.from_proto(msg)
    msg.resources.gpu_share_percent = 50
    msg.resources.gpus = 1
    with pytest.raises(InvalidArgument, match=r"whole GPUs \(1\) and a GPU share \(50%\) cannot both"):
        JobSpec.from_proto(msg)
    msg = parse_spec(C).to_proto()
    msg.max_cross_domain_loss = 0.5
    msg.has_max_cross_domain_loss = True
    with pytest.raises(InvalidArgument, match="max_cross_domain_loss: is only allowed for a training job"):
        JobSpec.from_proto(msg)


def test_old_store_records_still_load() -> None:
    old = {
        "name": "old",
        "replicas": 2,
        "command": ["echo"],
        "env": {},
        "resources": {"cpu_millis": 500, "memory_bytes": 2**20, "gpus": 1, "gpu_model": ""},
        "retry": {"on_exit": 1, "on_lost": 3},
        "labels": {},
        "tenant": "acme",
    }
    spec = spec_from_dict(old)
    assert spec == JobSpec(
        command=("echo",),
        name="old",
        replicas=2,
        resources=Resources(500, 2**20, 1, ""),
        retry=RetryPolicy(1, 3),
        tenant="acme",
    )
    assert not spec.is_gang and spec.locality is None and spec.exclude_gpu_models == ()
    # And a plain job's record is what it was before these fields existed.
    assert set(spec_to_dict(spec)) == set(old) | {"priority"}


def _opt(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.none(), strategy)


_MODELS = st.sampled_from(["T4", "V100", "A100", "L4"])


@st.composite
def scheduling_specs(draw: st.DrawFn) -> dict[str, object]:
    data: dict[str, object] = {"command": ["run"]}
    res: dict[str, object] = {}
    par = draw(
        _opt(
            st.fixed_dictionaries(
                {"tp": st.integers(1, 64), "pp": st.integers(1, 8), "dp": st.integers(1, 8)}
            )
        )
    )
    if par is not None:
        assert isinstance(par, dict)
        data["parallelism"] = par
        replicas = par["pp"] * par["dp"]
        model = draw(
            _opt(
                st.fixed_dictionaries(
                    {"parameters": st.integers(1, 10**15)},
                    optional={"bytes_per_parameter": st.sampled_from([0.5, 1, 2, 4])},
                )
            )
        )
        if model is not None:
            data["model"] = model
        it = draw(_opt(st.floats(0.001, 86400)))
        if it is not None:
            data["iteration_time"] = it
        loss = draw(_opt(st.floats(0, 0.999)))
        if loss is not None:
            data["max_cross_domain_loss"] = loss
        if draw(st.booleans()):
            data["gang"] = {"timeout": draw(st.floats(0.5, 86400))}
    else:
        replicas = draw(st.integers(1, 64))
        data["replicas"] = replicas
        if draw(st.booleans()):
            res["gpus"] = draw(st.integers(1, 99)) / 100
            if draw(st.booleans()):
                res["gpu_memory"] = draw(st.integers(1, 2**36))
        else:
            res["gpus"] = draw(st.integers(0, 16))
        gang = draw(_opt(st.one_of(st.just(True), st.fixed_dictionaries({"min": st.integers(1, replicas)}))))
        if gang is not None:
            data["gang"] = gang
    if draw(st.booleans()):
        res["gpu_model"] = "H100"
    data["resources"] = res
    excluded = draw(st.lists(_MODELS, unique=True, max_size=3))
    if excluded:
        data["exclude_gpu_models"] = excluded
    selector = draw(
        st.dictionaries(st.sampled_from(["zone", "rack", "disk"]), st.text("abc", min_size=1), max_size=3)
    )
    if selector:
        data["node_selector"] = selector
    if draw(st.booleans()):
        loc: dict[str, object] = {"dataset": "data-1", "wait": draw(st.floats(0, 3600))}
        if draw(st.booleans()):
            loc["shards"] = draw(st.permutations(list(range(replicas, 2 * replicas))))
        data["locality"] = loc
    return data


@given(scheduling_specs())
def test_any_valid_scheduling_spec_round_trips(data: dict[str, object]) -> None:
    spec = parse_spec(data)
    assert JobSpec.from_proto(spec.to_proto()) == spec
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert spec.is_gang == ("gang" in data or "parallelism" in data)
    if spec.parallelism is not None:
        assert spec.replicas == spec.parallelism.pp * spec.parallelism.dp
        assert spec.resources.gpus == spec.parallelism.tp and spec.gang_min == spec.replicas


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({**C, "resources": {"gpus": "1e999999999"}}, "resources.gpus", "must be between 0 and 1024"),
        ({**C, "resources": {"gpus": "1e-999999999"}}, "resources.gpus", "1% steps"),
        ({**C, "resources": {"gpus": 1e-300}}, "resources.gpus", "1% steps"),
        (
            {**TRAIN, "model": {"parameters": "1e999999999T"}},
            "model.parameters",
            "must be between 1 and 1e+15",
        ),
        (
            {**C, "replicas": 2, "locality": {"dataset": "d", "shards": "9" * 5000}},
            "locality.shards",
            "expected shard numbers",
        ),
        (
            {**C, "locality": {"dataset": "d", "shards": ",".join(f"{i}0000-{i}9999" for i in range(1, 30))}},
            "locality.shards",
            "more than 10000 shards",
        ),
        ({**C, "gang": {"timeout": "9" * 5000 + "s"}}, "gang.timeout", "must be > 0 and <= 86400 seconds"),
    ],
)
def test_huge_values_are_refused_quickly_with_a_short_message(
    data: dict[str, object], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_spec(data)
    assert exc.value.field == field and fragment in exc.value.message
    assert len(exc.value.message) < 300


_ANY = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=12),
        st.sampled_from(["0-3", "7B", "90s", "1e999", "0.25", "-1", "nan", "inf", "1,2", "5m"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
_SUB = {
    "resources": st.fixed_dictionaries({}, optional={"gpus": _ANY, "gpu_memory": _ANY, "gpu_model": _ANY}),
    "gang": st.one_of(_ANY, st.fixed_dictionaries({}, optional={"min": _ANY, "timeout": _ANY})),
    "parallelism": st.one_of(_ANY, st.fixed_dictionaries({}, optional={"tp": _ANY, "pp": _ANY, "dp": _ANY})),
    "model": st.one_of(
        _ANY, st.fixed_dictionaries({}, optional={"parameters": _ANY, "bytes_per_parameter": _ANY})
    ),
    "locality": st.one_of(
        _ANY, st.fixed_dictionaries({}, optional={"dataset": _ANY, "shards": _ANY, "wait": _ANY})
    ),
    "exclude_gpu_models": _ANY,
    "node_selector": _ANY,
    "iteration_time": _ANY,
    "max_cross_domain_loss": _ANY,
    "replicas": st.one_of(_ANY, st.integers(1, 16)),
}


@given(st.fixed_dictionaries({"command": st.just(["x"])}, optional=_SUB))
def test_arbitrary_scheduling_fields_are_valid_or_invalid_argument(data: dict[str, object]) -> None:
    try:
        spec = parse_spec(data)
    except InvalidArgument as exc:
        assert exc.field, str(exc)  # every refusal names the field
        return
    assert JobSpec.from_proto(spec.to_proto()) == spec
    assert JobSpec.from_dict(spec.to_dict()) == spec


# -- node affinity and distinct nodes ---------------------------------------------------------------


def test_affinity_and_distinct_nodes_round_trip() -> None:
    spec = parse_spec(
        {
            "command": ["x"],
            "replicas": 2,
            "affinity": {"nodes": ["east-1/n1", {"subdomain": "west-1", "node": "n7"}], "soft": False},
            "distinct_nodes": True,
        }
    )
    assert spec.affinity is not None and [str(n) for n in spec.affinity.nodes] == ["east-1/n1", "west-1/n7"]
    assert not spec.affinity.soft and spec.distinct_nodes
    assert JobSpec.from_proto(spec.to_proto()) == spec
    assert JobSpec.from_dict(spec.to_dict()) == spec
    c = task_constraints(spec, 1, 5.0)
    assert (c.node_id, c.node_soft, c.distinct_nodes) == ("n7", False, True)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        (
            {"affinity": {"nodes": ["a/n1"]}},
            "affinity.nodes",
            "one node per task: the job has 2 replicas, got 1 nodes",
        ),
        ({"affinity": {"nodes": ["n1", "a/n2"]}}, "affinity.nodes[0]", "expected '<sub-domain>/<node>'"),
        ({"affinity": {"nodes": ["a/n 1", "a/n2"]}}, "affinity.nodes[0]", "'n 1' is not a valid node id"),
        ({"affinity": {"nodes": ["a/n1", "a/n2"], "soft": "yes"}}, "affinity.soft", "expected true or false"),
        ({"affinity": {"nodes": ["a/n1", "a/n2"], "hard": True}}, "affinity.hard", "unknown field"),
        ({"distinct_nodes": "yes"}, "distinct_nodes", "expected true or false"),
        ({"distinct_nodes": True, "gang": True}, "distinct_nodes", "not supported for gangs"),
        (
            {"affinity": {"nodes": ["a/n1", "a/n2"]}, "locality": {"dataset": "d"}},
            "affinity",
            "cannot be combined with locality",
        ),
        (
            {"affinity": {"nodes": ["a/n1", "a/n1"]}, "distinct_nodes": True},
            "affinity.nodes",
            "a node is listed twice",
        ),
    ],
)
def test_affinity_errors_name_the_field(fields: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_spec({"command": ["x"], "replicas": 2, **fields})
    assert exc.value.field == field and words in exc.value.message
