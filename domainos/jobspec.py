"""Job specs: the YAML/dict form users write, validated field by field, and the protobuf form.

The same validation runs in ``domainctl``/the DSDK (before a request leaves) and in the master
(the authority), so a bad spec is refused with the same message either way.

YAML form::

    name: hello                 # optional, 1-63 chars [a-z0-9-_.]
    replicas: 4                 # 1..10000 (default 1; a training job: pp * dp)
    command: [python3, -c, "print('hi')"]   # required, non-empty list of strings (or one string, run by /bin/sh -c)
    env: {GREETING: hi}         # optional
    runtime: process            # process (default): a local process | docker: a container of
                                #   `image:` (see Containers below)
    resources:                  # per task
      cpus: 1                   # number, or "500m"   (default 1)
      memory: 256Mi             # size (default 256Mi)
      gpus: 0.5                 # whole GPUs (default 0; a training job: tp), or a fraction of ONE
                                #   GPU below 1 in 1% steps (0.25 = a quarter of a card's compute)
      gpu_memory: 10Gi          # only with a fraction: the card memory the share may use, rounded up
                                #   to whole MiB (default: the same fraction of the card's memory)
      gpu_model: ""             # optional: required GPU model
    exclude_gpu_models: [T4]    # never on these GPU models (at most 32; top level, not under
                                #   resources; must not name resources.gpu_model)
    node_selector: {zone: a}    # only on nodes whose labels all match (at most 32)
    retry:
      on_exit: 0                # retries when the process exits non-zero (default 0)
      on_lost: 3                # retries when its node dies (default 3)
    labels: {team: ml}
    priority: normal            # priority class: low | normal (default) | high | system
    gang:                       # all or nothing (or `gang: true`: all tasks)
      min: 4                    # the first `min` tasks are placed together (default: all replicas)
      timeout: 5m               # give up one reservation attempt after this long (default 300s, <= 24h)
    locality:                   # data locality: task i reads shard shards[i] (or i) of dataset
      dataset: imagenet         # a name like a job name
      shards: "0-3"             # optional: a list [0, 1, 2, 3] or ranges "0-3,8"; one per replica
      wait: 30s                 # how long to wait for a node holding the shard (0..3600 s, default 30)

A training job (tensor x pipeline x data parallel) sets ``parallelism`` and leaves out
``replicas`` and ``resources.gpus`` (or gives exactly these values)::

    parallelism: {tp: 8, pp: 2, dp: 4}   # tp <= 64, tp*pp*dp <= 100000; one task per TP group:
                                # replicas = pp*dp (8), resources.gpus = tp (8) whole GPUs on one
                                # NVLink domain; task i is stage i % pp of DP replica i // pp.
                                # Always a gang of all its tasks (gang.min, if given, = replicas).
    model:                      # the gradients all-reduced across DP replicas every iteration
      parameters: 7B            # a whole number, 7e9, or with a K/M/B/T suffix
      bytes_per_parameter: 2    # 2 = bf16 (default 2)
    iteration_time: 2s          # compute time of one iteration (seconds, or "1500ms")
    max_cross_domain_loss: 0.02 # 0 <= x < 1: the share of an iteration the job accepts losing to
                                # cross-sub-domain traffic (default 0.02)

``model``, ``iteration_time`` and ``max_cross_domain_loss`` are only allowed with ``parallelism``.
Without ``model`` and ``iteration_time`` the scheduler cannot estimate the loss of spanning
sub-domains, so such a training job still runs but always within ONE sub-domain.

Placing tasks on chosen nodes (not with ``gang``, ``parallelism`` or ``locality``)::

    affinity:                   # task i runs on nodes[i] ("<sub-domain>/<node>"; one per replica)
      nodes: [east-1/n1, west-1/n7]
      soft: true                # true (default): any node when that one cannot take it; false: wait
    distinct_nodes: true        # no two tasks of this job on one node (default false)

Resilience (any job)::

    checkpoint: true            # it saves checkpoints (DSDK checkpoint.Checkpointer) and resumes
                                # from the latest: a drain moves it first; or {interval: 30m}
    disconnect:                 # its tasks in a sub-domain the master cannot reach:
      lost_after: 5m            # left alone this long (default: the master's grace, 30 s) ...
      replace: true             # ... then run elsewhere (default); false: wait for the sub-domain

Containers: ``runtime: docker`` with ``image: python:3.12-slim`` (required with docker, refused
without it: a Docker image reference) runs each task as a container of that image; ``command`` is
then optional (left out, the image's own ENTRYPOINT and CMD run; given, it replaces both). A docker
job's tasks go only to nodes labelled ``domainos.io/docker=true`` (agents whose Docker
engine answers), and with GPUs to nodes labelled ``domainos.io/docker-gpus=true`` (an engine with
the ``nvidia`` runtime): those labels are added to its ``node_selector``. The container gets the
task's CPU (``nano_cpus``, and its cores as a cpuset) and memory (the limit, no swap) and its GPUs.

Durations are seconds (a number) or text with a unit: ``1500ms``, ``90s``, ``5m``, ``1h``. The
protobuf form is ``master.proto`` ``JobSpec``; the master's store form is :meth:`JobSpec.to_dict`.
Each task's placement constraints come from :func:`task_constraints`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from domainos.errors import InvalidArgument
from domainos.resources import MAX_GPUS, Resources, parse_cpus, parse_gpus, parse_memory

if TYPE_CHECKING:
    from domainos.api.v1 import master_pb2
    from domainos.model import PlacementConstraints

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
MAX_EXCLUDED_GPU_MODELS = 32
MAX_NODE_SELECTOR = 32
MAX_GPU_MODEL_CHARS = 128
MAX_GANG_TIMEOUT_S = 24 * 3600.0
MAX_TP = 64
MAX_RANKS = 100_000
MAX_PARAMETERS = 10**15
MAX_BYTES_PER_PARAMETER = 16.0
MAX_ITERATION_TIME_S = 24 * 3600.0
MAX_LOCALITY_WAIT_S = 3600.0
DEFAULT_LOCALITY_WAIT_S = 30.0
MAX_SHARD = 2**31 - 1
MIB = 2**20

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}\Z")
_TOP_FIELDS = (
    "name",
    "replicas",
    "command",
    "env",
    "resources",
    "retry",
    "labels",
    "tenant",
    "priority",
    "exclude_gpu_models",
    "node_selector",
    "gang",
    "parallelism",
    "model",
    "iteration_time",
    "max_cross_domain_loss",
    "locality",
    "affinity",
    "distinct_nodes",
    "checkpoint",
    "disconnect",
    "runtime",
    "image",
)
_RES_FIELDS = ("cpus", "memory", "gpus", "gpu_memory", "gpu_model")
_RETRY_FIELDS = ("on_exit", "on_lost")
_GANG_FIELDS = ("min", "timeout")
_PARALLELISM_FIELDS = ("tp", "pp", "dp")
_MODEL_FIELDS = ("parameters", "bytes_per_parameter")
_LOCALITY_FIELDS = ("dataset", "shards", "wait")
_AFFINITY_FIELDS = ("nodes", "soft")
_CHECKPOINT_FIELDS = ("interval",)
_DISCONNECT_FIELDS = ("lost_after", "replace")
MAX_CHECKPOINT_INTERVAL_S = 7 * 24 * 3600.0
MAX_LOST_AFTER_S = 7 * 24 * 3600.0
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}\Z")
#: Where a task runs: a local process (the default) or a container on the node's Docker engine.
RUNTIMES = ("process", "docker")
DEFAULT_RUNTIME = "process"
#: The node label of agents whose Docker engine answers (docker tasks are placed only there).
DOCKER_LABEL = "domainos.io/docker"
#: The node label of agents whose Docker engine has the ``nvidia`` runtime (docker tasks with GPUs).
DOCKER_GPU_LABEL = "domainos.io/docker-gpus"
MAX_IMAGE_CHARS = 512
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
#: A Docker image reference (distribution/reference): [host[:port]/]path[:tag][@digest].
_IMAGE_RE = re.compile(
    rf"^(?:{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?\Z"
)
#: A node id (what agents register with).
NODE_ID_RE = _NODE_ID_RE
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_COUNT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*$")
_COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_SHARD_RANGE_RE = re.compile(r"^\s*([0-9]{1,10})\s*(?:-\s*([0-9]{1,10})\s*)?$")


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
    wait_s: float = DEFAULT_LOCALITY_WAIT_S

    def shard_of(self, index: int) -> int:
        return self.shards[index] if self.shards else index


@dataclass(frozen=True)
class NodeRef:
    """One node of one sub-domain."""

    subdomain_id: str
    node_id: str

    def __str__(self) -> str:
        return f"{self.subdomain_id}/{self.node_id}"


@dataclass(frozen=True)
class NodeAffinity:
    """Task ``i`` runs on ``nodes[i]``; ``soft``: any node will do when that one cannot take it."""

    nodes: tuple[NodeRef, ...]
    soft: bool = True

    def node_of(self, index: int) -> NodeRef:
        return self.nodes[index]


@dataclass(frozen=True)
class CheckpointPolicy:
    """The job saves checkpoints and resumes from the latest; ``interval_s`` 0 = not said."""

    interval_s: float = 0.0


@dataclass(frozen=True)
class DisconnectPolicy:
    """Its tasks in an unreachable sub-domain: left alone ``lost_after_s`` (0 = the master's
    grace), then run elsewhere when ``replace``, else they wait for the sub-domain."""

    lost_after_s: float = 0.0
    replace: bool = True


@dataclass(frozen=True)
class JobSpec:
    """A validated job. Construct with :func:`parse_spec`, :meth:`from_proto` or :meth:`from_dict`."""

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
    affinity: NodeAffinity | None = None
    distinct_nodes: bool = False
    checkpoint: CheckpointPolicy | None = None
    disconnect: DisconnectPolicy | None = None
    #: ``process`` or ``docker`` (then ``image`` is set and ``command`` may be empty).
    runtime: str = DEFAULT_RUNTIME
    image: str = ""

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

    @property
    def gang_timeout_s(self) -> float:
        """How long one reservation attempt of the gang may take (the default when not given)."""
        return self.gang.timeout_s if self.gang is not None else DEFAULT_GANG_TIMEOUT_S

    def to_proto(self) -> master_pb2.JobSpec:
        from domainos.api.v1 import master_pb2

        msg = master_pb2.JobSpec(
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
            exclude_gpu_models=list(self.exclude_gpu_models),
            node_selector=dict(self.node_selector),
            iteration_time_s=self.iteration_time_s,
            distinct_nodes=self.distinct_nodes,
        )
        if self.affinity is not None:
            msg.affinity.CopyFrom(
                master_pb2.NodeAffinity(
                    nodes=[
                        master_pb2.NodeRef(subdomain_id=n.subdomain_id, node_id=n.node_id)
                        for n in self.affinity.nodes
                    ],
                    soft=self.affinity.soft,
                )
            )
        if self.gang is not None:
            msg.gang.CopyFrom(master_pb2.GangPolicy(min=self.gang.min, timeout_s=self.gang.timeout_s))
        if self.parallelism is not None:
            p = self.parallelism
            msg.parallelism.CopyFrom(master_pb2.Parallelism(tp=p.tp, pp=p.pp, dp=p.dp))
            msg.max_cross_domain_loss = self.max_cross_domain_loss
            msg.has_max_cross_domain_loss = True
        if self.model is not None:
            msg.model.CopyFrom(
                master_pb2.ModelSize(
                    parameters=self.model.parameters, bytes_per_parameter=self.model.bytes_per_parameter
                )
            )
        if self.locality is not None:
            loc = self.locality
            msg.locality.CopyFrom(
                master_pb2.Locality(dataset=loc.dataset, shards=list(loc.shards), wait_s=loc.wait_s)
            )
        if self.checkpoint is not None:
            msg.checkpoint.CopyFrom(
                master_pb2.CheckpointPolicy(enabled=True, interval_s=self.checkpoint.interval_s)
            )
        if self.disconnect is not None:
            msg.disconnect.CopyFrom(
                master_pb2.DisconnectPolicy(
                    lost_after_s=self.disconnect.lost_after_s,
                    replace=self.disconnect.replace,
                    has_replace=True,
                )
            )
        if self.runtime == "docker":
            from domainos.api.v1 import common_pb2

            msg.container.CopyFrom(common_pb2.ContainerSpec(image=self.image))
        return msg

    @classmethod
    def from_proto(cls, msg: master_pb2.JobSpec) -> JobSpec:
        """Validate a spec arriving over the wire (the master's entry point).

        Unset sub-messages mean "not asked for"; inside them a zero means the default where zero
        is not a valid value (``gang.timeout_s``, ``parallelism.tp/pp/dp``,
        ``model.bytes_per_parameter``). ``locality.wait_s`` is taken as sent (0 is valid).
        """
        data: dict[str, Any] = {
            "name": msg.name,
            "command": list(msg.command),
            "env": dict(msg.env),
            "labels": dict(msg.labels),
            "tenant": msg.tenant,
        }
        if msg.replicas < 0:
            raise InvalidArgument(
                f"must be between 1 and {MAX_REPLICAS}, got {msg.replicas}", field="replicas"
            )
        if msg.replicas or not msg.HasField("parallelism"):
            data["replicas"] = msg.replicas or 1
        if msg.priority:
            data["priority"] = msg.priority
        res: dict[str, Any] = {}
        if msg.HasField("resources"):
            r = msg.resources
            if r.cpu_millis < 0 or r.memory_bytes < 0 or r.gpus < 0 or r.gpu_share_memory_bytes < 0:
                bad = (
                    "cpus"
                    if r.cpu_millis < 0
                    else "memory"
                    if r.memory_bytes < 0
                    else "gpus"
                    if r.gpus < 0
                    else "gpu_memory"
                )
                raise InvalidArgument("must not be negative", field=f"resources.{bad}")
            if r.cpu_millis:
                res["cpus"] = f"{r.cpu_millis}m"
            if r.memory_bytes:
                res["memory"] = r.memory_bytes
            if r.gpu_share_percent:
                if r.gpus:
                    raise InvalidArgument(
                        f"whole GPUs ({r.gpus}) and a GPU share ({r.gpu_share_percent}%) cannot both be "
                        "asked for: a task gets whole GPUs or a fraction of one",
                        field="resources.gpus",
                    )
                if not 1 <= r.gpu_share_percent <= 99:
                    raise InvalidArgument(
                        f"a GPU share is 1..99 percent of one card, got {r.gpu_share_percent}",
                        field="resources.gpus",
                    )
                res["gpus"] = f"0.{r.gpu_share_percent:02d}"
            elif r.gpus or not msg.HasField("parallelism"):
                res["gpus"] = r.gpus
            if r.gpu_share_memory_bytes:
                res["gpu_memory"] = r.gpu_share_memory_bytes
            if r.gpu_model:
                res["gpu_model"] = r.gpu_model
        data["resources"] = res
        if msg.has_retry:
            data["retry"] = {"on_exit": msg.retry.on_exit, "on_lost": msg.retry.on_lost}
        if msg.exclude_gpu_models:
            data["exclude_gpu_models"] = list(msg.exclude_gpu_models)
        if msg.node_selector:
            data["node_selector"] = dict(msg.node_selector)
        if msg.HasField("gang"):
            gang: dict[str, Any] = {"min": msg.gang.min} if msg.gang.min else {}
            if msg.gang.timeout_s:
                gang["timeout"] = msg.gang.timeout_s
            data["gang"] = gang or True
        if msg.HasField("parallelism"):
            p = msg.parallelism
            data["parallelism"] = {"tp": p.tp or 1, "pp": p.pp or 1, "dp": p.dp or 1}
        if msg.HasField("model"):
            model: dict[str, Any] = {"parameters": msg.model.parameters}
            if msg.model.bytes_per_parameter:
                model["bytes_per_parameter"] = msg.model.bytes_per_parameter
            data["model"] = model
        if msg.iteration_time_s:
            data["iteration_time"] = msg.iteration_time_s
        if msg.has_max_cross_domain_loss:
            data["max_cross_domain_loss"] = msg.max_cross_domain_loss
        if msg.HasField("locality"):
            loc = msg.locality
            locality: dict[str, Any] = {"dataset": loc.dataset, "wait": loc.wait_s}
            if loc.shards:
                locality["shards"] = list(loc.shards)
            data["locality"] = locality
        if msg.HasField("affinity"):
            data["affinity"] = {
                "nodes": [f"{n.subdomain_id}/{n.node_id}" for n in msg.affinity.nodes],
                "soft": msg.affinity.soft,
            }
        if msg.distinct_nodes:
            data["distinct_nodes"] = True
        if msg.HasField("checkpoint") and msg.checkpoint.enabled:
            data["checkpoint"] = (
                {"interval": msg.checkpoint.interval_s} if msg.checkpoint.interval_s else True
            )
        if msg.HasField("disconnect"):
            d = msg.disconnect
            disconnect: dict[str, Any] = {}
            if d.lost_after_s:
                disconnect["lost_after"] = d.lost_after_s
            if d.has_replace:
                disconnect["replace"] = d.replace
            data["disconnect"] = disconnect
        if msg.HasField("container"):
            data["runtime"] = "docker"
            data["image"] = msg.container.image
            if not msg.command:
                del data["command"]  # the image's own command
        return parse_spec(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (the master's store form); read back with :meth:`from_dict`.

        The fields added with gangs, training and locality are written only when set, so a record
        of a plain job is the same as before they existed.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "replicas": self.replicas,
            "command": list(self.command),
            "env": dict(self.env),
            "resources": self.resources.to_dict(),
            "retry": {"on_exit": self.retry.on_exit, "on_lost": self.retry.on_lost},
            "labels": dict(self.labels),
            "tenant": self.tenant,
            "priority": self.priority,
        }
        if self.exclude_gpu_models:
            out["exclude_gpu_models"] = list(self.exclude_gpu_models)
        if self.node_selector:
            out["node_selector"] = dict(self.node_selector)
        if self.gang is not None:
            out["gang"] = {"min": self.gang.min, "timeout_s": self.gang.timeout_s}
        if self.parallelism is not None:
            p = self.parallelism
            out["parallelism"] = {"tp": p.tp, "pp": p.pp, "dp": p.dp}
            out["max_cross_domain_loss"] = self.max_cross_domain_loss
        if self.model is not None:
            out["model"] = {
                "parameters": self.model.parameters,
                "bytes_per_parameter": self.model.bytes_per_parameter,
            }
        if self.iteration_time_s:
            out["iteration_time_s"] = self.iteration_time_s
        if self.locality is not None:
            loc = self.locality
            out["locality"] = {"dataset": loc.dataset, "shards": list(loc.shards), "wait_s": loc.wait_s}
        if self.affinity is not None:
            out["affinity"] = {"nodes": [str(n) for n in self.affinity.nodes], "soft": self.affinity.soft}
        if self.distinct_nodes:
            out["distinct_nodes"] = True
        if self.checkpoint is not None:
            out["checkpoint"] = {"interval_s": self.checkpoint.interval_s}
        if self.disconnect is not None:
            out["disconnect"] = {
                "lost_after_s": self.disconnect.lost_after_s,
                "replace": self.disconnect.replace,
            }
        if self.runtime != DEFAULT_RUNTIME:
            out["runtime"] = self.runtime
            out["image"] = self.image
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Inverse of :meth:`to_dict` (trusted input: it was validated before it was stored).

        Keys missing from records written by older versions take their defaults.
        """
        retry = data.get("retry") or {}
        gang = data.get("gang")
        par = data.get("parallelism")
        model = data.get("model")
        loc = data.get("locality")
        aff = data.get("affinity")
        ck = data.get("checkpoint")
        dis = data.get("disconnect")
        return cls(
            command=tuple(data["command"]),
            name=data.get("name", ""),
            replicas=int(data.get("replicas", 1)),
            env=dict(data.get("env", {})),
            resources=Resources.from_dict(data.get("resources")),
            retry=RetryPolicy(
                int(retry.get("on_exit", DEFAULT_RETRY_ON_EXIT)),
                int(retry.get("on_lost", DEFAULT_RETRY_ON_LOST)),
            ),
            labels=dict(data.get("labels", {})),
            tenant=data.get("tenant", ""),
            priority=data.get("priority") or DEFAULT_PRIORITY,
            exclude_gpu_models=tuple(data.get("exclude_gpu_models", ())),
            node_selector=dict(data.get("node_selector", {})),
            gang=(
                GangPolicy(int(gang["min"]), float(gang.get("timeout_s", DEFAULT_GANG_TIMEOUT_S)))
                if gang
                else None
            ),
            parallelism=Parallelism(int(par["tp"]), int(par["pp"]), int(par["dp"])) if par else None,
            model=(
                ModelSize(int(model["parameters"]), float(model.get("bytes_per_parameter", 2.0)))
                if model
                else None
            ),
            iteration_time_s=float(data.get("iteration_time_s", 0.0)),
            max_cross_domain_loss=float(data.get("max_cross_domain_loss", DEFAULT_MAX_CROSS_DOMAIN_LOSS)),
            locality=(
                Locality(
                    str(loc["dataset"]),
                    tuple(int(s) for s in loc.get("shards", ())),
                    float(loc.get("wait_s", DEFAULT_LOCALITY_WAIT_S)),
                )
                if loc
                else None
            ),
            affinity=(
                NodeAffinity(
                    tuple(NodeRef(*str(n).split("/", 1)) for n in aff["nodes"]), bool(aff.get("soft", True))
                )
                if aff
                else None
            ),
            distinct_nodes=bool(data.get("distinct_nodes", False)),
            checkpoint=CheckpointPolicy(float(ck.get("interval_s", 0.0))) if ck is not None else None,
            disconnect=(
                DisconnectPolicy(float(dis.get("lost_after_s", 0.0)), bool(dis.get("replace", True)))
                if dis is not None
                else None
            ),
            runtime=str(data.get("runtime") or DEFAULT_RUNTIME),
            image=str(data.get("image") or ""),
        )


def task_constraints(spec: JobSpec, index: int, submitted_at: float) -> PlacementConstraints:
    """Where task ``index`` of ``spec`` may and should run (the ``TaskSpec.placement`` it carries).

    The GPU models to avoid and the node selector come from the spec; a training task with
    ``tp > 1`` needs its GPUs in one NVLink domain; a task of a job with ``locality`` prefers a node
    holding its shard, for ``locality.wait_s`` from ``submitted_at``; the stages of one DP replica
    of a training job share the group ``dp<replica>`` (they prefer one block); with ``affinity``
    the task names its node; ``distinct_nodes`` keeps it off nodes running the job's other tasks.
    """
    from domainos.model import PlacementConstraints

    par = spec.parallelism
    loc = spec.locality
    aff = spec.affinity
    return PlacementConstraints(
        exclude_gpu_models=spec.exclude_gpu_models,
        node_selector=dict(spec.node_selector),
        one_nvlink_domain=par is not None and par.tp > 1,
        dataset=loc.dataset if loc is not None else "",
        shard=loc.shard_of(index) if loc is not None else 0,
        locality_wait_s=loc.wait_s if loc is not None else 0.0,
        group=f"dp{index // par.pp}" if par is not None else "",
        submitted_at=submitted_at,
        node_id=aff.node_of(index).node_id if aff is not None else "",
        node_soft=aff.soft if aff is not None else False,
        distinct_nodes=spec.distinct_nodes,
    )


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, clipped to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_text(value: str, fld: str) -> str:
    """Protobuf strings must be valid UTF-8 with no NUL (lone surrogates cannot be sent)."""
    if "\x00" in value:
        raise InvalidArgument("must not contain NUL characters", field=fld)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("must be valid UTF-8 text (found an unpaired surrogate)", field=fld) from None
    return value


def _int_field(value: Any, fld: str, lo: int, hi: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(
            f"expected a whole number between {lo} and {hi}, got {_shown(value)}", field=fld
        )
    if not lo <= value <= hi:
        raise InvalidArgument(f"must be between {lo} and {hi}{what}, got {value}", field=fld)
    return value


def _str_map(value: Any, fld: str, key_re: re.Pattern[str], what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"expected a mapping of {what} to strings, got {_shown(value)}", field=fld)
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


def _mapping(value: Any, fld: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    """A sub-mapping of the spec; unknown keys are refused listing the allowed ones."""
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"expected a mapping with {', '.join(allowed)}, got {_shown(value)}", field=fld)
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise InvalidArgument(f"unknown field; allowed: {', '.join(allowed)}", field=f"{fld}.{unknown[0]}")
    return value


_HUGE = Decimal(10) ** 40
_TINY = Decimal(10) ** -40


def _clamp(d: Decimal) -> Decimal:
    """Keep exponents sane: far out of any range stays out of it, without overflowing arithmetic
    (``1e999999999`` must not become a huge int, ``1e-999999999`` must not round to 0)."""
    if d.is_finite() and d:
        if d.adjusted() > 40:
            return _HUGE.copy_sign(d)
        if d.adjusted() < -40:
            return _TINY.copy_sign(d)
    return d


def _decimal(value: Any) -> Decimal | None:
    """A finite number written as an int, a float or a numeric string; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            return None
        return _clamp(d) if d.is_finite() else None
    return None


def _number(
    value: Any, fld: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    """A number in ``[lo, hi]`` (an open end with ``lo_open``/``hi_open``), as a float."""
    rng = f"{'>' if lo_open else '>='} {lo:g} and {'<' if hi_open else '<='} {hi:g}"
    d = _decimal(value)
    if d is None:
        raise InvalidArgument(f"expected a number {rng}, got {_shown(value)}", field=fld)
    x = float(d)
    if (x <= lo if lo_open else x < lo) or (x >= hi if hi_open else x > hi):
        raise InvalidArgument(f"must be {rng}, got {_shown(value)}", field=fld)
    return x


def parse_duration(value: Any, fld: str, lo: float, hi: float, *, zero_ok: bool = False) -> float:
    """Seconds, written as a number or a string with a unit: ``90``, ``"90s"``, ``"5m"``, ``"1500ms"``, ``"1h"``.

    Must be in ``(0, hi]`` (``[0, hi]`` with ``zero_ok``) and at least ``lo``.
    """
    example = "e.g. 90, '90s', '5m', '1500ms'"
    rng = f"{'>= 0' if zero_ok else '> 0'} and <= {hi:g} seconds"
    if isinstance(value, str) and _DURATION_RE.match(value):
        m = _DURATION_RE.match(value)
        assert m is not None
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        d = _decimal(value) if not isinstance(value, str) else None
        if d is None:
            raise InvalidArgument(f"expected a duration ({example}) {rng}, got {_shown(value)}", field=fld)
        seconds = float(d)
    if seconds < 0 or (seconds == 0 and not zero_ok) or seconds > hi or seconds < lo:
        raise InvalidArgument(f"must be {rng}, got {_shown(value)}", field=fld)
    return seconds


def _gpu_request(value: Any, fld: str) -> tuple[int, int]:
    """``(whole GPUs, share percent)``: ``2`` -> (2, 0); ``0.25`` -> (0, 25)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return parse_gpus(value, fld), 0
    d = _decimal(value)
    if d is None:
        raise InvalidArgument(
            f"expected a whole number of GPUs, or a fraction of one below 1 such as 0.25, got {_shown(value)}",
            field=fld,
        )
    if d > MAX_GPUS or d < -MAX_GPUS:
        raise InvalidArgument(f"must be between 0 and {MAX_GPUS}, got {_shown(value)}", field=fld)
    if d == d.to_integral_value():
        return parse_gpus(int(d), fld), 0
    if d < 0:
        raise InvalidArgument(f"must be between 0 and {MAX_GPUS}, got {_shown(value)}", field=fld)
    if d > 1:
        raise InvalidArgument(
            f"whole GPUs, or a fraction below 1 (a share of one card, e.g. 0.5), got {_shown(value)}",
            field=fld,
        )
    pct = d * 100
    if pct != pct.to_integral_value() or pct < 1:
        raise InvalidArgument(
            f"fractions of a GPU go in 1% steps (0.01 to 0.99), got {_shown(value)}", field=fld
        )
    return 0, int(pct)


def _gpu_model_name(value: Any, fld: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"expected a GPU model name such as H100, got {_shown(value)}", field=fld)
    if len(value) > MAX_GPU_MODEL_CHARS:
        raise InvalidArgument(f"too long: at most {MAX_GPU_MODEL_CHARS} characters", field=fld)
    return _check_text(value, fld)


def _excluded_models(value: Any, required: str) -> tuple[str, ...]:
    fld = "exclude_gpu_models"
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise InvalidArgument(
            f"expected a list of GPU model names such as [T4, V100], got {_shown(value)}", field=fld
        )
    if len(value) > MAX_EXCLUDED_GPU_MODELS:
        raise InvalidArgument(
            f"too many: at most {MAX_EXCLUDED_GPU_MODELS} GPU models, got {len(value)}", field=fld
        )
    out: list[str] = []
    for i, item in enumerate(value):
        name = _gpu_model_name(item, f"{fld}[{i}]")
        if name in out:
            raise InvalidArgument(f"{name!r} is listed twice; list each GPU model once", field=f"{fld}[{i}]")
        out.append(name)
    if required and required in out:
        raise InvalidArgument(
            f"{required!r} is both required (resources.gpu_model) and excluded: no GPU could match",
            field=fld,
        )
    return tuple(out)


def _count(value: Any, fld: str) -> int:
    """A large count: ``7000000000``, ``7e9``, ``"7B"``, ``"70b"``, ``"1.5T"``, ``"350M"``, ``"20K"``."""
    d: Decimal | None = None
    if isinstance(value, str):
        m = _COUNT_RE.match(value)
        if m:
            d = _clamp(Decimal(m.group(1))) * _COUNT_UNITS[m.group(2).lower()]
    else:
        d = _decimal(value)
    if d is None or d != d.to_integral_value():
        raise InvalidArgument(
            f"expected a whole number of parameters such as 7000000000, 7e9 or '7B' (K, M, B, T), got {_shown(value)}",
            field=fld,
        )
    if not 1 <= d <= MAX_PARAMETERS:
        raise InvalidArgument(f"must be between 1 and {MAX_PARAMETERS:.0e}, got {_shown(value)}", field=fld)
    return int(d)


def parse_shards(value: Any, fld: str = "locality.shards") -> tuple[int, ...]:
    """Shard numbers: a list ``[0, 1, 2]`` or ranges ``"0-7"``, ``"0-3,8,10-11"``; distinct, >= 0."""
    items: list[int] = []
    if isinstance(value, str):
        for part in value.split(","):
            m = _SHARD_RANGE_RE.match(part)
            if not m:
                raise InvalidArgument(
                    f"expected shard numbers such as '0-7' or '0,2,4-5', got {_shown(value)}", field=fld
                )
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise InvalidArgument(f"the range {part.strip()!r} runs backwards", field=fld)
            if hi - lo >= MAX_REPLICAS:
                raise InvalidArgument(
                    f"the range {part.strip()!r} has more than {MAX_REPLICAS} shards", field=fld
                )
            items.extend(range(lo, hi + 1))
            if len(items) > MAX_REPLICAS:
                raise InvalidArgument(f"more than {MAX_REPLICAS} shards (one per task at most)", field=fld)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            items.append(_int_field(item, f"{fld}[{i}]", 0, MAX_SHARD))
    else:
        raise InvalidArgument(
            f"expected a list of shard numbers or ranges such as '0-7', got {_shown(value)}", field=fld
        )
    seen: set[int] = set()
    for s in items:
        if s > MAX_SHARD:
            raise InvalidArgument(f"shard numbers go up to {MAX_SHARD}, got {s}", field=fld)
        if s in seen:
            raise InvalidArgument(f"shard {s} is listed twice; each task reads its own shard", field=fld)
        seen.add(s)
    return tuple(items)


def _parallelism(value: Any) -> Parallelism:
    data = _mapping(value, "parallelism", _PARALLELISM_FIELDS)
    tp = _int_field(data.get("tp", 1), "parallelism.tp", 1, MAX_TP, " (GPUs of one TP group, on one node)")
    pp = _int_field(data.get("pp", 1), "parallelism.pp", 1, MAX_RANKS)
    dp = _int_field(data.get("dp", 1), "parallelism.dp", 1, MAX_RANKS)
    if tp * pp * dp > MAX_RANKS:
        raise InvalidArgument(
            f"tp * pp * dp = {tp * pp * dp} GPUs (tp {tp} x pp {pp} x dp {dp}); at most {MAX_RANKS}",
            field="parallelism",
        )
    if pp * dp > MAX_REPLICAS:
        raise InvalidArgument(
            f"pp * dp = {pp * dp} tasks (one per TP group; pp {pp} x dp {dp}); at most {MAX_REPLICAS}",
            field="parallelism",
        )
    return Parallelism(tp, pp, dp)


def _gang(value: Any, replicas: int, par: Parallelism | None) -> GangPolicy | None:
    if value is None or value is False:
        return None
    if value is True:
        return GangPolicy(replicas)
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f"expected true (all tasks), false, or a mapping with {', '.join(_GANG_FIELDS)}, got {_shown(value)}",
            field="gang",
        )
    data = _mapping(value, "gang", _GANG_FIELDS)
    gmin = replicas
    if data.get("min") is not None:
        gmin = _int_field(data["min"], "gang.min", 1, replicas, f" (the job's replicas are {replicas})")
        if par is not None and gmin != replicas:
            raise InvalidArgument(
                f"a training job is a gang of all its tasks: gang.min must equal replicas = {replicas} "
                f"(pp {par.pp} x dp {par.dp}) or be left out, got {gmin}",
                field="gang.min",
            )
    timeout = DEFAULT_GANG_TIMEOUT_S
    if data.get("timeout") is not None:
        timeout = parse_duration(data["timeout"], "gang.timeout", 0.0, MAX_GANG_TIMEOUT_S)
    return GangPolicy(gmin, timeout)


def _checkpoint(value: Any) -> CheckpointPolicy | None:
    if value is None or value is False:
        return None
    if value is True:
        return CheckpointPolicy()
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f"expected true, false, or a mapping with {', '.join(_CHECKPOINT_FIELDS)}, got {_shown(value)}",
            field="checkpoint",
        )
    data = _mapping(value, "checkpoint", _CHECKPOINT_FIELDS)
    interval = 0.0
    if data.get("interval") is not None:
        interval = parse_duration(data["interval"], "checkpoint.interval", 0.0, MAX_CHECKPOINT_INTERVAL_S)
    return CheckpointPolicy(interval)


def _disconnect(value: Any) -> DisconnectPolicy:
    data = _mapping(value, "disconnect", _DISCONNECT_FIELDS)
    lost_after = 0.0
    if data.get("lost_after") is not None:
        lost_after = parse_duration(data["lost_after"], "disconnect.lost_after", 0.0, MAX_LOST_AFTER_S)
    replace = data.get("replace", True)
    if not isinstance(replace, bool):
        raise InvalidArgument(f"expected true or false, got {_shown(replace)}", field="disconnect.replace")
    return DisconnectPolicy(lost_after, replace)


def _model(value: Any) -> ModelSize:
    data = _mapping(value, "model", _MODEL_FIELDS)
    if data.get("parameters") is None:
        raise InvalidArgument("is required: the model's parameter count, e.g. 7B", field="model.parameters")
    params = _count(data["parameters"], "model.parameters")
    bpp = 2.0
    if data.get("bytes_per_parameter") is not None:
        bpp = _number(
            data["bytes_per_parameter"], "model.bytes_per_parameter", 0, MAX_BYTES_PER_PARAMETER, lo_open=True
        )
    return ModelSize(params, bpp)


def _locality(value: Any, replicas: int) -> Locality:
    data = _mapping(value, "locality", _LOCALITY_FIELDS)
    dataset = data.get("dataset")
    if not dataset:
        raise InvalidArgument("is required: the name of the dataset the tasks read", field="locality.dataset")
    if not isinstance(dataset, str) or not _NAME_RE.match(dataset):
        raise InvalidArgument(
            f"{dataset!r} is not a valid dataset name: 1-63 letters, digits, '-', '_' or '.'",
            field="locality.dataset",
        )
    shards: tuple[int, ...] = ()
    if data.get("shards") not in (None, "", []):
        shards = parse_shards(data["shards"])
        if len(shards) != replicas:
            raise InvalidArgument(
                f"one shard per task: the job has {replicas} replicas, got {len(shards)} shards "
                f"(leave shards out and task i reads shard i)",
                field="locality.shards",
            )
    wait = DEFAULT_LOCALITY_WAIT_S
    if data.get("wait") is not None:
        wait = parse_duration(data["wait"], "locality.wait", 0.0, MAX_LOCALITY_WAIT_S, zero_ok=True)
    return Locality(dataset, shards, wait)


def parse_node_ref(value: Any, fld: str) -> NodeRef:
    """``"<sub-domain>/<node>"`` (or a mapping with ``subdomain`` and ``node``) as a :class:`NodeRef`."""
    if isinstance(value, Mapping):
        value = f"{value.get('subdomain', '')}/{value.get('node', '')}"
    if not isinstance(value, str) or "/" not in value:
        raise InvalidArgument(
            f"expected '<sub-domain>/<node>' (e.g. east-1/node-a, as `domainctl nodes` shows), got {_shown(value)}",
            field=fld,
        )
    sd, node = value.split("/", 1)
    if not _NAME_RE.match(sd):
        raise InvalidArgument(f"{sd!r} is not a valid sub-domain id", field=fld)
    if not _NODE_ID_RE.match(node):
        raise InvalidArgument(f"{node!r} is not a valid node id", field=fld)
    return NodeRef(sd, node)


def _affinity(value: Any, replicas: int) -> NodeAffinity:
    data = _mapping(value, "affinity", _AFFINITY_FIELDS)
    nodes = data.get("nodes")
    if not isinstance(nodes, (list, tuple)) or not nodes:
        raise InvalidArgument(
            f"expected a list of '<sub-domain>/<node>', one per task, got {_shown(nodes)}",
            field="affinity.nodes",
        )
    if len(nodes) != replicas:
        raise InvalidArgument(
            f"one node per task: the job has {replicas} replicas, got {len(nodes)} nodes",
            field="affinity.nodes",
        )
    refs = tuple(parse_node_ref(n, f"affinity.nodes[{i}]") for i, n in enumerate(nodes))
    soft = data.get("soft", True)
    if not isinstance(soft, bool):
        raise InvalidArgument(f"expected true or false, got {_shown(soft)}", field="affinity.soft")
    return NodeAffinity(refs, soft)


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
    par = _parallelism(data["parallelism"]) if data.get("parallelism") is not None else None
    if par is None:
        replicas = _int_field(data.get("replicas", 1), "replicas", 1, MAX_REPLICAS)
    else:
        replicas = par.pp * par.dp
        if data.get("replicas") is not None:
            given = _int_field(data["replicas"], "replicas", 1, MAX_REPLICAS)
            if given != replicas:
                raise InvalidArgument(
                    f"a training job has one task per TP group: replicas must equal pp * dp = {replicas} "
                    f"(pp {par.pp} x dp {par.dp}) or be left out, got {given}",
                    field="replicas",
                )

    runtime, image = _runtime(data)
    raw_cmd = data.get("command")
    if raw_cmd in (None, "", []):
        if runtime != "docker":
            raise InvalidArgument(
                "is required: the program and its arguments, e.g. [python3, train.py]", field="command"
            )
        command: tuple[str, ...] = ()  # the image's own ENTRYPOINT and CMD
    elif isinstance(raw_cmd, str):
        command = ("/bin/sh", "-c", raw_cmd)
    elif isinstance(raw_cmd, (list, tuple)):
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
    if isinstance(res_data, Mapping) and "exclude_gpu_models" in res_data:
        raise InvalidArgument(
            "goes at the top level of the spec, next to resources (exclude_gpu_models: [T4]), "
            "not under resources",
            field="resources.exclude_gpu_models",
        )
    res_data = _mapping(res_data, "resources", _RES_FIELDS)
    cpu = parse_cpus(res_data["cpus"], "resources.cpus") if "cpus" in res_data else DEFAULT_CPU_MILLIS
    mem = parse_memory(res_data["memory"], "resources.memory") if "memory" in res_data else DEFAULT_MEMORY
    if res_data.get("gpus") is not None:
        gpus, share = _gpu_request(res_data["gpus"], "resources.gpus")
    else:
        gpus, share = (par.tp if par is not None else 0), 0
    if par is not None and (share or gpus != par.tp):
        got = res_data["gpus"]
        raise InvalidArgument(
            f"a training job has one task per TP group: resources.gpus must equal tp = {par.tp} whole "
            f"GPUs or be left out, got {got!r}",
            field="resources.gpus",
        )
    share_mem = 0
    if res_data.get("gpu_memory") is not None:
        if not share:
            raise InvalidArgument(
                "only with a fraction of a GPU (resources.gpus below 1, e.g. 0.5): whole GPUs come "
                f"with all their memory (resources.gpus is {gpus})",
                field="resources.gpu_memory",
            )
        share_mem = -(-parse_memory(res_data["gpu_memory"], "resources.gpu_memory") // MIB) * MIB
    model = res_data.get("gpu_model") or ""
    if not isinstance(model, str):
        raise InvalidArgument(f"expected a string, got {model!r}", field="resources.gpu_model")
    _check_text(model, "resources.gpu_model")
    excluded = _excluded_models(data.get("exclude_gpu_models"), model)
    selector = _str_map(data.get("node_selector"), "node_selector", _LABEL_RE, "label key")
    # The runtime's own labels (added below, and present when a stored spec is parsed again) do
    # not count against the user's.
    given = len(selector.keys() - {DOCKER_LABEL, DOCKER_GPU_LABEL})
    if given > MAX_NODE_SELECTOR:
        raise InvalidArgument(
            f"too many: at most {MAX_NODE_SELECTOR} labels, got {given}", field="node_selector"
        )
    if runtime == "docker":
        # Placed only on nodes whose agent found a Docker engine (with the nvidia runtime for GPUs).
        needed = [DOCKER_LABEL] + ([DOCKER_GPU_LABEL] if gpus or share else [])
        for key in needed:
            if selector.get(key, "true") != "true":
                raise InvalidArgument(
                    f"{key}={selector[key]} contradicts runtime: docker, which runs only on nodes "
                    f"labelled {key}=true",
                    field=f"node_selector.{key}",
                )
            selector[key] = "true"

    retry_data = _mapping(data.get("retry") or {}, "retry", _RETRY_FIELDS)
    retry = RetryPolicy(
        on_exit=_int_field(retry_data.get("on_exit", DEFAULT_RETRY_ON_EXIT), "retry.on_exit", 0, MAX_RETRIES),
        on_lost=_int_field(retry_data.get("on_lost", DEFAULT_RETRY_ON_LOST), "retry.on_lost", 0, MAX_RETRIES),
    )
    tenant = data.get("tenant") or ""
    if not isinstance(tenant, str):
        raise InvalidArgument(f"expected a string, got {tenant!r}", field="tenant")
    _check_text(tenant, "tenant")
    priority = parse_priority(data.get("priority", DEFAULT_PRIORITY))
    gang = _gang(data.get("gang"), replicas, par)

    for key in ("model", "iteration_time", "max_cross_domain_loss"):
        if par is None and data.get(key) is not None:
            raise InvalidArgument(
                "is only allowed for a training job (with parallelism: {tp, pp, dp})", field=key
            )
    size = _model(data["model"]) if data.get("model") is not None else None
    iteration = 0.0
    if data.get("iteration_time") is not None:
        iteration = parse_duration(data["iteration_time"], "iteration_time", 0.0, MAX_ITERATION_TIME_S)
    loss = DEFAULT_MAX_CROSS_DOMAIN_LOSS
    if data.get("max_cross_domain_loss") is not None:
        loss = _number(data["max_cross_domain_loss"], "max_cross_domain_loss", 0, 1, hi_open=True)
    locality = _locality(data["locality"], replicas) if data.get("locality") is not None else None
    affinity = _affinity(data["affinity"], replicas) if data.get("affinity") is not None else None
    distinct = data.get("distinct_nodes", False)
    if not isinstance(distinct, bool):
        raise InvalidArgument(f"expected true or false, got {_shown(distinct)}", field="distinct_nodes")
    if (affinity is not None or distinct) and (gang is not None or par is not None):
        raise InvalidArgument(
            "is not supported for gangs and training jobs (they are placed by reservations); "
            "use node_selector there",
            field="affinity" if affinity is not None else "distinct_nodes",
        )
    if affinity is not None and locality is not None:
        raise InvalidArgument(
            "affinity names each task's node; it cannot be combined with locality (which picks "
            "nodes holding a shard)",
            field="affinity",
        )
    if affinity is not None and distinct and len(set(affinity.nodes)) != len(affinity.nodes):
        raise InvalidArgument(
            "with distinct_nodes every task needs its own node; a node is listed twice",
            field="affinity.nodes",
        )
    checkpoint = _checkpoint(data.get("checkpoint"))
    disconnect = _disconnect(data["disconnect"]) if data.get("disconnect") is not None else None
    return JobSpec(
        command=command,
        name=name,
        replicas=replicas,
        env=env,
        resources=Resources(cpu, mem, gpus, model, share, share_mem),
        retry=retry,
        labels=labels,
        tenant=tenant,
        priority=priority,
        exclude_gpu_models=excluded,
        node_selector=selector,
        gang=gang,
        parallelism=par,
        model=size,
        iteration_time_s=iteration,
        max_cross_domain_loss=loss,
        locality=locality,
        affinity=affinity,
        distinct_nodes=distinct,
        checkpoint=checkpoint,
        disconnect=disconnect,
        runtime=runtime,
        image=image,
    )


def check_image(value: Any, fld: str = "image") -> str:
    """A Docker image reference (``[host[:port]/]name[:tag][@digest]``); InvalidArgument naming ``fld``."""
    if not isinstance(value, str) or not value.strip():
        got = "" if value is None else f", got {_shown(value)}"
        raise InvalidArgument(
            f"is required with runtime: docker: a Docker image reference, e.g. python:3.12-slim{got}",
            field=fld,
        )
    if len(value) > MAX_IMAGE_CHARS or not _IMAGE_RE.match(value):
        raise InvalidArgument(
            f"{_shown(value)} is not a Docker image reference: [registry[:port]/]name[:tag][@digest] "
            "with a lowercase name, e.g. python:3.12-slim or ghcr.io/org/app:v1",
            field=fld,
        )
    return value


def _runtime(data: Mapping[str, Any]) -> tuple[str, str]:
    """(runtime, image) of a spec mapping: ``runtime`` process (default) or docker, which needs an image."""
    runtime = data.get("runtime")
    if runtime is None or runtime == "":
        runtime = DEFAULT_RUNTIME
    if not isinstance(runtime, str) or runtime not in RUNTIMES:
        raise InvalidArgument(
            f"unknown runtime {_shown(runtime)}; allowed: {'|'.join(RUNTIMES)} (default {DEFAULT_RUNTIME})",
            field="runtime",
        )
    image = data.get("image")
    if runtime != "docker":
        if image not in (None, ""):
            raise InvalidArgument(
                "is only used with runtime: docker (set runtime: docker to run the task in this image)",
                field="image",
            )
        return runtime, ""
    return runtime, check_image(image, "image")


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
