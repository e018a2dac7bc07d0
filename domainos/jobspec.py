"""Job specs: the YAML/dict form users write, validated field by field, and the protobuf form.

The same validation runs in ``domainctl``/the DSDK (before a request leaves) and in the master
(the authority), so a bad spec is refused with the same message either way.

YAML form::

    name: hello                 # optional, 1-63 chars [a-z0-9-_.]
    replicas: 4                 # 1..10000 (default 1)
    command: [python3, -c, "print('hi')"]   # required, non-empty list of strings (or one string, run by /bin/sh -c)
    env: {GREETING: hi}         # optional
    resources:                  # per task
      cpus: 1                   # number, or "500m"   (default 1)
      memory: 256Mi             # size (default 256Mi)
      gpus: 0                   # whole GPUs (default 0)
      gpu_model: ""             # optional: required GPU model
    retry:
      on_exit: 0                # retries when the process exits non-zero (default 0)
      on_lost: 3                # retries when its node dies (default 3)
    labels: {team: ml}
    priority: normal            # priority class: low | normal (default) | high | system
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from domainos.errors import InvalidArgument
from domainos.resources import Resources, parse_cpus, parse_gpus, parse_memory

if TYPE_CHECKING:
    from domainos.api.v1 import master_pb2

MAX_REPLICAS = 10_000
MAX_RETRIES = 100
MAX_COMMAND_ARGS = 4096
MAX_COMMAND_BYTES = 128 * 1024
MAX_ENV_VARS = 1024
MAX_ENV_BYTES = 128 * 1024
DEFAULT_CPU_MILLIS = 1000
DEFAULT_MEMORY = 256 * 2**20
DEFAULT_RETRY_ON_EXIT = 0
DEFAULT_RETRY_ON_LOST = 3
#: The priority classes a job may name (the master's ``PriorityClasses`` defaults), lowest first.
PRIORITY_CLASSES = ("low", "normal", "high", "system")
DEFAULT_PRIORITY = "normal"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$")
_TOP_FIELDS = ("name", "replicas", "command", "env", "resources", "retry", "labels", "tenant", "priority")
_RES_FIELDS = ("cpus", "memory", "gpus", "gpu_model")
_RETRY_FIELDS = ("on_exit", "on_lost")


@dataclass(frozen=True)
class RetryPolicy:
    on_exit: int = DEFAULT_RETRY_ON_EXIT
    on_lost: int = DEFAULT_RETRY_ON_LOST


DEFAULT_GANG_TIMEOUT_S = 300.0
DEFAULT_MAX_CROSS_DOMAIN_LOSS = 0.02


@dataclass(frozen=True)
class GangPolicy:
    """All or nothing: the first ``min`` tasks are placed together or not at all."""

    min: int
    timeout_s: float = DEFAULT_GANG_TIMEOUT_S


@dataclass(frozen=True)
class Parallelism:
    """Training ranks: ``tp * pp * dp`` GPUs; one task per TP group (``pp * dp`` tasks).

    Task ``i`` is pipeline stage ``i % pp`` of data-parallel replica ``i // pp``.
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1


@dataclass(frozen=True)
class ModelSize:
    """The model whose gradients DP replicas all-reduce every iteration."""

    parameters: int
    bytes_per_parameter: float = 2.0


@dataclass(frozen=True)
class Locality:
    """Task ``i`` reads shard ``shards[i]`` (or ``i`` when ``shards`` is empty) of ``dataset``."""

    dataset: str
    shards: tuple[int, ...] = ()
    wait_s: float = 30.0

    def shard_of(self, index: int) -> int:
        return self.shards[index] if self.shards else index


@dataclass(frozen=True)
class JobSpec:
    """A validated job. Construct with :func:`parse_spec` or :meth:`from_proto`."""

    command: tuple[str, ...]
    name: str = ""
    replicas: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=lambda: Resources(DEFAULT_CPU_MILLIS, DEFAULT_MEMORY, 0, ""))
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    labels: Mapping[str, str] = field(default_factory=dict)
    tenant: str = ""
    priority: str = DEFAULT_PRIORITY
    exclude_gpu_models: tuple[str, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    gang: GangPolicy | None = None
    parallelism: Parallelism | None = None
    model: ModelSize | None = None
    iteration_time_s: float = 0.0
    max_cross_domain_loss: float = DEFAULT_MAX_CROSS_DOMAIN_LOSS
    locality: Locality | None = None

    @property
    def is_gang(self) -> bool:
        """Placed all or nothing (an explicit gang, or any training job)."""
        return self.gang is not None or self.parallelism is not None

    @property
    def gang_min(self) -> int:
        """How many tasks (the first ones) are placed together; 0 when not a gang."""
        if self.gang is not None:
            return self.gang.min
        return self.replicas if self.parallelism is not None else 0

    def to_proto(self) -> master_pb2.JobSpec:
        from domainos.api.v1 import master_pb2

        return master_pb2.JobSpec(
            name=self.name,
            replicas=self.replicas,
            command=list(self.command),
            env=dict(self.env),
            resources=self.resources.to_proto(),
            retry=master_pb2.RetryPolicy(on_exit=self.retry.on_exit, on_lost=self.retry.on_lost),
            has_retry=True,
            tenant=self.tenant,
            labels=dict(self.labels),
            priority=self.priority,
        )

    @classmethod
    def from_proto(cls, msg: master_pb2.JobSpec) -> JobSpec:
        """Validate a spec arriving over the wire (the master's entry point)."""
        data: dict[str, Any] = {
            "name": msg.name,
            "replicas": msg.replicas if msg.replicas else 1,
            "command": list(msg.command),
            "env": dict(msg.env),
            "labels": dict(msg.labels),
            "tenant": msg.tenant,
        }
        if msg.priority:
            data["priority"] = msg.priority
        res: dict[str, Any] = {}
        if msg.HasField("resources"):
            r = msg.resources
            if r.cpu_millis < 0 or r.memory_bytes < 0 or r.gpus < 0:
                bad = "cpus" if r.cpu_millis < 0 else "memory" if r.memory_bytes < 0 else "gpus"
                raise InvalidArgument("must not be negative", field=f"resources.{bad}")
            if r.cpu_millis:
                res["cpus"] = f"{r.cpu_millis}m"
            if r.memory_bytes:
                res["memory"] = r.memory_bytes
            res["gpus"] = r.gpus
            if r.gpu_model:
                res["gpu_model"] = r.gpu_model
        data["resources"] = res
        if msg.has_retry:
            data["retry"] = {"on_exit": msg.retry.on_exit, "on_lost": msg.retry.on_lost}
        if msg.replicas < 0:
            raise InvalidArgument(
                f"must be between 1 and {MAX_REPLICAS}, got {msg.replicas}", field="replicas"
            )
        return parse_spec(data)


def _check_text(value: str, fld: str) -> str:
    """Protobuf strings must be valid UTF-8 with no NUL (lone surrogates cannot be sent)."""
    if "\x00" in value:
        raise InvalidArgument("must not contain NUL characters", field=fld)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("must be valid UTF-8 text (found an unpaired surrogate)", field=fld) from None
    return value


def _int_field(value: Any, fld: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"expected a whole number between {lo} and {hi}, got {value!r}", field=fld)
    if not lo <= value <= hi:
        raise InvalidArgument(f"must be between {lo} and {hi}, got {value}", field=fld)
    return value


def _str_map(value: Any, fld: str, key_re: re.Pattern[str], what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"expected a mapping of {what} to strings, got {value!r}", field=fld)
    out: dict[str, str] = {}
    total = 0
    for k, v in value.items():
        if not isinstance(k, str) or not key_re.match(k):
            raise InvalidArgument(f"{k!r} is not a valid {what}", field=fld)
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise InvalidArgument(f"expected a string value, got {v!r}", field=f"{fld}.{k}")
        sv = _check_text(str(v), f"{fld}.{k}")
        total += len(k) + len(sv)
        out[k] = sv
    if len(out) > MAX_ENV_VARS or total > MAX_ENV_BYTES:
        raise InvalidArgument(
            f"too large: at most {MAX_ENV_VARS} entries and {MAX_ENV_BYTES // 1024} KiB in all", field=fld
        )
    return out


def parse_spec(data: Any) -> JobSpec:
    """Validate a job spec mapping (parsed YAML, JSON or built by the CLI)."""
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"a job spec must be a mapping of fields, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _TOP_FIELDS)
    if unknown:
        raise InvalidArgument(f"unknown field; allowed fields: {', '.join(_TOP_FIELDS)}", field=unknown[0])

    name = data.get("name") or ""
    if not isinstance(name, str) or (name and not _NAME_RE.match(name)):
        raise InvalidArgument(
            f"{name!r} is not a valid name: 1-63 letters, digits, '-', '_' or '.'", field="name"
        )
    replicas = _int_field(data.get("replicas", 1), "replicas", 1, MAX_REPLICAS)

    if "command" not in data or data["command"] in (None, "", []):
        raise InvalidArgument(
            "is required: the program and its arguments, e.g. [python3, train.py]", field="command"
        )
    raw_cmd = data["command"]
    if isinstance(raw_cmd, str):
        command: tuple[str, ...] = ("/bin/sh", "-c", raw_cmd)
    elif isinstance(raw_cmd, list):
        for i, arg in enumerate(raw_cmd):
            if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
                raise InvalidArgument(f"expected a string, got {arg!r}", field=f"command[{i}]")
            _check_text(str(arg), f"command[{i}]")
        command = tuple(str(a) for a in raw_cmd)
        if not command[0].strip():
            raise InvalidArgument("the program name must not be empty", field="command[0]")
    else:
        raise InvalidArgument(
            f"expected a list of strings or one shell string, got {raw_cmd!r}", field="command"
        )
    if len(command) > MAX_COMMAND_ARGS or sum(len(a) for a in command) > MAX_COMMAND_BYTES:
        raise InvalidArgument(
            f"too large: at most {MAX_COMMAND_ARGS} arguments and {MAX_COMMAND_BYTES // 1024} KiB",
            field="command",
        )

    env = _str_map(data.get("env"), "env", _ENV_RE, "environment variable name")
    labels = _str_map(data.get("labels"), "labels", _LABEL_RE, "label key")

    res_data = data.get("resources") or {}
    if not isinstance(res_data, Mapping):
        raise InvalidArgument(
            f"expected a mapping with {', '.join(_RES_FIELDS)}, got {res_data!r}", field="resources"
        )
    unknown = sorted(str(k) for k in res_data if k not in _RES_FIELDS)
    if unknown:
        raise InvalidArgument(
            f"unknown field; allowed: {', '.join(_RES_FIELDS)}", field=f"resources.{unknown[0]}"
        )
    cpu = parse_cpus(res_data["cpus"], "resources.cpus") if "cpus" in res_data else DEFAULT_CPU_MILLIS
    mem = parse_memory(res_data["memory"], "resources.memory") if "memory" in res_data else DEFAULT_MEMORY
    gpus = parse_gpus(res_data.get("gpus", 0), "resources.gpus")
    model = res_data.get("gpu_model") or ""
    if not isinstance(model, str):
        raise InvalidArgument(f"expected a string, got {model!r}", field="resources.gpu_model")
    _check_text(model, "resources.gpu_model")

    retry_data = data.get("retry") or {}
    if not isinstance(retry_data, Mapping):
        raise InvalidArgument(f"expected a mapping with {', '.join(_RETRY_FIELDS)}", field="retry")
    unknown = sorted(str(k) for k in retry_data if k not in _RETRY_FIELDS)
    if unknown:
        raise InvalidArgument(
            f"unknown field; allowed: {', '.join(_RETRY_FIELDS)}", field=f"retry.{unknown[0]}"
        )
    retry = RetryPolicy(
        on_exit=_int_field(retry_data.get("on_exit", DEFAULT_RETRY_ON_EXIT), "retry.on_exit", 0, MAX_RETRIES),
        on_lost=_int_field(retry_data.get("on_lost", DEFAULT_RETRY_ON_LOST), "retry.on_lost", 0, MAX_RETRIES),
    )
    tenant = data.get("tenant") or ""
    if not isinstance(tenant, str):
        raise InvalidArgument(f"expected a string, got {tenant!r}", field="tenant")
    _check_text(tenant, "tenant")
    priority = parse_priority(data.get("priority", DEFAULT_PRIORITY))
    return JobSpec(
        command=command,
        name=name,
        replicas=replicas,
        env=env,
        resources=Resources(cpu, mem, gpus, model),
        retry=retry,
        labels=labels,
        tenant=tenant,
        priority=priority,
    )


def parse_priority(value: Any, fld: str = "priority") -> str:
    """A priority class name (``None``/``""``: the default); InvalidArgument listing the allowed ones."""
    if value is None or value == "":
        return DEFAULT_PRIORITY
    if isinstance(value, str) and value in PRIORITY_CLASSES:
        return value
    shown = value[:80] if isinstance(value, str) else value
    raise InvalidArgument(
        f"unknown priority class {shown!r}; allowed: {'|'.join(PRIORITY_CLASSES)} (default {DEFAULT_PRIORITY})",
        field=fld,
    )


def parse_spec_yaml(text: str, source: str = "<job spec>") -> JobSpec:
    """Parse YAML text into a validated spec; malformed YAML is an InvalidArgument naming the line."""
    from domainos.config import parse_yaml
    from domainos.errors import ConfigError

    try:
        data = parse_yaml(text, source)
    except ConfigError as exc:
        raise InvalidArgument(str(exc)) from None
    return parse_spec(data)
