from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HealthStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATUS_UNSPECIFIED: _ClassVar[HealthStatus]
    HEALTH_STATUS_HEALTHY: _ClassVar[HealthStatus]
    HEALTH_STATUS_DEGRADED: _ClassVar[HealthStatus]
    HEALTH_STATUS_UNHEALTHY: _ClassVar[HealthStatus]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_PENDING: _ClassVar[TaskState]
    TASK_STATE_ASSIGNED: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_SUCCEEDED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_CANCELLED: _ClassVar[TaskState]
    TASK_STATE_LOST: _ClassVar[TaskState]
    TASK_STATE_REJECTED: _ClassVar[TaskState]

class NodeAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_ACTION_UNSPECIFIED: _ClassVar[NodeAction]
    NODE_ACTION_CORDON: _ClassVar[NodeAction]
    NODE_ACTION_DRAIN: _ClassVar[NodeAction]
    NODE_ACTION_UNCORDON: _ClassVar[NodeAction]
HEALTH_STATUS_UNSPECIFIED: HealthStatus
HEALTH_STATUS_HEALTHY: HealthStatus
HEALTH_STATUS_DEGRADED: HealthStatus
HEALTH_STATUS_UNHEALTHY: HealthStatus
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_PENDING: TaskState
TASK_STATE_ASSIGNED: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_SUCCEEDED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_CANCELLED: TaskState
TASK_STATE_LOST: TaskState
TASK_STATE_REJECTED: TaskState
NODE_ACTION_UNSPECIFIED: NodeAction
NODE_ACTION_CORDON: NodeAction
NODE_ACTION_DRAIN: NodeAction
NODE_ACTION_UNCORDON: NodeAction

class Resources(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes", "gpus", "gpu_model", "gpu_share_percent", "gpu_share_memory_bytes")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    GPU_SHARE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    GPU_SHARE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    gpus: int
    gpu_model: str
    gpu_share_percent: int
    gpu_share_memory_bytes: int
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[int] = ..., gpu_model: _Optional[str] = ..., gpu_share_percent: _Optional[int] = ..., gpu_share_memory_bytes: _Optional[int] = ...) -> None: ...

class GpuDevice(_message.Message):
    __slots__ = ("index", "uuid", "model", "memory_bytes", "nvlink_peers", "nvlink_domain", "tdp_w")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    NVLINK_PEERS_FIELD_NUMBER: _ClassVar[int]
    NVLINK_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TDP_W_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    model: str
    memory_bytes: int
    nvlink_peers: _containers.RepeatedScalarFieldContainer[int]
    nvlink_domain: int
    tdp_w: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., model: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., nvlink_peers: _Optional[_Iterable[int]] = ..., nvlink_domain: _Optional[int] = ..., tdp_w: _Optional[int] = ...) -> None: ...

class DatasetShard(_message.Message):
    __slots__ = ("dataset", "shard", "size_bytes")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: int
    size_bytes: int
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class NodeInventory(_message.Message):
    __slots__ = ("node_id", "hostname", "simulated", "cpu_cores", "memory_bytes", "gpus", "labels", "agent_version", "os", "allocatable", "block", "datasets")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATABLE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    simulated: bool
    cpu_cores: int
    memory_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[GpuDevice]
    labels: _containers.ScalarMap[str, str]
    agent_version: str
    os: str
    allocatable: Resources
    block: str
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetShard]
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., simulated: _Optional[bool] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GpuDevice, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., agent_version: _Optional[str] = ..., os: _Optional[str] = ..., allocatable: _Optional[_Union[Resources, _Mapping]] = ..., block: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[DatasetShard, _Mapping]]] = ...) -> None: ...

class GpuUsage(_message.Message):
    __slots__ = ("index", "utilization_percent", "memory_used_bytes", "temperature_c", "power_w", "ecc_corrected", "ecc_uncorrected", "last_xid", "xid_count", "throttle_reasons")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    ECC_CORRECTED_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_XID_FIELD_NUMBER: _ClassVar[int]
    XID_COUNT_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    index: int
    utilization_percent: float
    memory_used_bytes: int
    temperature_c: float
    power_w: float
    ecc_corrected: int
    ecc_uncorrected: int
    last_xid: int
    xid_count: int
    throttle_reasons: int
    def __init__(self, index: _Optional[int] = ..., utilization_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., temperature_c: _Optional[float] = ..., power_w: _Optional[float] = ..., ecc_corrected: _Optional[int] = ..., ecc_uncorrected: _Optional[int] = ..., last_xid: _Optional[int] = ..., xid_count: _Optional[int] = ..., throttle_reasons: _Optional[int] = ...) -> None: ...

class NodeUsage(_message.Message):
    __slots__ = ("cpu_percent", "memory_used_bytes", "gpus", "load1")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    memory_used_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[GpuUsage]
    load1: float
    def __init__(self, cpu_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GpuUsage, _Mapping]]] = ..., load1: _Optional[float] = ...) -> None: ...

class NodeHealth(_message.Message):
    __slots__ = ("status", "conditions")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    status: HealthStatus
    conditions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[_Union[HealthStatus, str]] = ..., conditions: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("job_id", "task_index", "attempt", "command", "env", "resources", "tenant", "master_address", "job_name", "replicas", "placement", "reservation_id", "checkpointable", "fence_after_s", "container")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTABLE_FIELD_NUMBER: _ClassVar[int]
    FENCE_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    task_index: int
    attempt: int
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    resources: Resources
    tenant: str
    master_address: str
    job_name: str
    replicas: int
    placement: PlacementConstraints
    reservation_id: str
    checkpointable: bool
    fence_after_s: float
    container: ContainerSpec
    def __init__(self, job_id: _Optional[str] = ..., task_index: _Optional[int] = ..., attempt: _Optional[int] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., tenant: _Optional[str] = ..., master_address: _Optional[str] = ..., job_name: _Optional[str] = ..., replicas: _Optional[int] = ..., placement: _Optional[_Union[PlacementConstraints, _Mapping]] = ..., reservation_id: _Optional[str] = ..., checkpointable: _Optional[bool] = ..., fence_after_s: _Optional[float] = ..., container: _Optional[_Union[ContainerSpec, _Mapping]] = ...) -> None: ...

class ContainerSpec(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: str
    def __init__(self, image: _Optional[str] = ...) -> None: ...

class PlacementConstraints(_message.Message):
    __slots__ = ("exclude_gpu_models", "node_selector", "one_nvlink_domain", "dataset", "shard", "locality_wait_s", "group", "submitted_at", "node_id", "node_soft", "distinct_nodes")
    class NodeSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXCLUDE_GPU_MODELS_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    ONE_NVLINK_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_SOFT_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_NODES_FIELD_NUMBER: _ClassVar[int]
    exclude_gpu_models: _containers.RepeatedScalarFieldContainer[str]
    node_selector: _containers.ScalarMap[str, str]
    one_nvlink_domain: bool
    dataset: str
    shard: int
    locality_wait_s: float
    group: str
    submitted_at: float
    node_id: str
    node_soft: bool
    distinct_nodes: bool
    def __init__(self, exclude_gpu_models: _Optional[_Iterable[str]] = ..., node_selector: _Optional[_Mapping[str, str]] = ..., one_nvlink_domain: _Optional[bool] = ..., dataset: _Optional[str] = ..., shard: _Optional[int] = ..., locality_wait_s: _Optional[float] = ..., group: _Optional[str] = ..., submitted_at: _Optional[float] = ..., node_id: _Optional[str] = ..., node_soft: _Optional[bool] = ..., distinct_nodes: _Optional[bool] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("job_id", "task_index", "attempt", "state", "exit_code", "message", "node_id", "subdomain_id", "started_at", "finished_at", "pid", "gpu_indexes", "cpu_set", "drained", "progress")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    GPU_INDEXES_FIELD_NUMBER: _ClassVar[int]
    CPU_SET_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    task_index: int
    attempt: int
    state: TaskState
    exit_code: int
    message: str
    node_id: str
    subdomain_id: str
    started_at: float
    finished_at: float
    pid: int
    gpu_indexes: _containers.RepeatedScalarFieldContainer[int]
    cpu_set: _containers.RepeatedScalarFieldContainer[int]
    drained: bool
    progress: TaskProgress
    def __init__(self, job_id: _Optional[str] = ..., task_index: _Optional[int] = ..., attempt: _Optional[int] = ..., state: _Optional[_Union[TaskState, str]] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., node_id: _Optional[str] = ..., subdomain_id: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., pid: _Optional[int] = ..., gpu_indexes: _Optional[_Iterable[int]] = ..., cpu_set: _Optional[_Iterable[int]] = ..., drained: _Optional[bool] = ..., progress: _Optional[_Union[TaskProgress, _Mapping]] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("step", "total_steps", "step_at", "checkpoint_step", "checkpoint_at")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_AT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_AT_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    step_at: float
    checkpoint_step: int
    checkpoint_at: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., step_at: _Optional[float] = ..., checkpoint_step: _Optional[int] = ..., checkpoint_at: _Optional[float] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("job_id", "task_index", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    task_index: int
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., task_index: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class CommandAck(_message.Message):
    __slots__ = ("command_id", "ok", "error")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    ok: bool
    error: str
    def __init__(self, command_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class NodeView(_message.Message):
    __slots__ = ("inventory", "usage", "health", "state", "free", "running_tasks", "subdomain_id", "region", "last_report_at", "incarnation", "cordon_reason", "cordoned_by", "cordoned_at", "draining", "risk")
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_AT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    CORDON_REASON_FIELD_NUMBER: _ClassVar[int]
    CORDONED_BY_FIELD_NUMBER: _ClassVar[int]
    CORDONED_AT_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    RISK_FIELD_NUMBER: _ClassVar[int]
    inventory: NodeInventory
    usage: NodeUsage
    health: NodeHealth
    state: str
    free: Resources
    running_tasks: int
    subdomain_id: str
    region: str
    last_report_at: float
    incarnation: str
    cordon_reason: str
    cordoned_by: str
    cordoned_at: float
    draining: bool
    risk: float
    def __init__(self, inventory: _Optional[_Union[NodeInventory, _Mapping]] = ..., usage: _Optional[_Union[NodeUsage, _Mapping]] = ..., health: _Optional[_Union[NodeHealth, _Mapping]] = ..., state: _Optional[str] = ..., free: _Optional[_Union[Resources, _Mapping]] = ..., running_tasks: _Optional[int] = ..., subdomain_id: _Optional[str] = ..., region: _Optional[str] = ..., last_report_at: _Optional[float] = ..., incarnation: _Optional[str] = ..., cordon_reason: _Optional[str] = ..., cordoned_by: _Optional[str] = ..., cordoned_at: _Optional[float] = ..., draining: _Optional[bool] = ..., risk: _Optional[float] = ...) -> None: ...

class LogRequest(_message.Message):
    __slots__ = ("task", "stream", "offset", "max_bytes")
    TASK_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    task: TaskRef
    stream: str
    offset: int
    max_bytes: int
    def __init__(self, task: _Optional[_Union[TaskRef, _Mapping]] = ..., stream: _Optional[str] = ..., offset: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("data", "offset", "size", "eof", "error")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    size: int
    eof: bool
    error: str
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ..., eof: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class LogReply(_message.Message):
    __slots__ = ("request_id", "chunk")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    chunk: LogChunk
    def __init__(self, request_id: _Optional[str] = ..., chunk: _Optional[_Union[LogChunk, _Mapping]] = ...) -> None: ...

class SubDomainSummary(_message.Message):
    __slots__ = ("nodes_total", "nodes_ready", "nodes_suspect", "nodes_dead", "nodes_simulated", "capacity", "free", "shapes", "running_tasks", "max_nodes", "gpus_by_model", "free_gpus_by_model", "largest_node", "power_draw_w", "blocks", "label_nodes", "datasets", "share_slots", "reservations_held")
    class GpusByModelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FreeGpusByModelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LabelNodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NODES_READY_FIELD_NUMBER: _ClassVar[int]
    NODES_SUSPECT_FIELD_NUMBER: _ClassVar[int]
    NODES_DEAD_FIELD_NUMBER: _ClassVar[int]
    NODES_SIMULATED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    GPUS_BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    FREE_GPUS_BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    LARGEST_NODE_FIELD_NUMBER: _ClassVar[int]
    POWER_DRAW_W_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LABEL_NODES_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    SHARE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_HELD_FIELD_NUMBER: _ClassVar[int]
    nodes_total: int
    nodes_ready: int
    nodes_suspect: int
    nodes_dead: int
    nodes_simulated: int
    capacity: Resources
    free: Resources
    shapes: _containers.RepeatedCompositeFieldContainer[NodeShape]
    running_tasks: int
    max_nodes: int
    gpus_by_model: _containers.ScalarMap[str, int]
    free_gpus_by_model: _containers.ScalarMap[str, int]
    largest_node: Resources
    power_draw_w: float
    blocks: _containers.RepeatedCompositeFieldContainer[BlockSummary]
    label_nodes: _containers.ScalarMap[str, int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetPresence]
    share_slots: _containers.RepeatedCompositeFieldContainer[GpuShareSlot]
    reservations_held: int
    def __init__(self, nodes_total: _Optional[int] = ..., nodes_ready: _Optional[int] = ..., nodes_suspect: _Optional[int] = ..., nodes_dead: _Optional[int] = ..., nodes_simulated: _Optional[int] = ..., capacity: _Optional[_Union[Resources, _Mapping]] = ..., free: _Optional[_Union[Resources, _Mapping]] = ..., shapes: _Optional[_Iterable[_Union[NodeShape, _Mapping]]] = ..., running_tasks: _Optional[int] = ..., max_nodes: _Optional[int] = ..., gpus_by_model: _Optional[_Mapping[str, int]] = ..., free_gpus_by_model: _Optional[_Mapping[str, int]] = ..., largest_node: _Optional[_Union[Resources, _Mapping]] = ..., power_draw_w: _Optional[float] = ..., blocks: _Optional[_Iterable[_Union[BlockSummary, _Mapping]]] = ..., label_nodes: _Optional[_Mapping[str, int]] = ..., datasets: _Optional[_Iterable[_Union[DatasetPresence, _Mapping]]] = ..., share_slots: _Optional[_Iterable[_Union[GpuShareSlot, _Mapping]]] = ..., reservations_held: _Optional[int] = ...) -> None: ...

class NodeShape(_message.Message):
    __slots__ = ("gpu_model", "free_gpus", "count", "best", "free_nvlink_gpus")
    GPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    FREE_GPUS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    FREE_NVLINK_GPUS_FIELD_NUMBER: _ClassVar[int]
    gpu_model: str
    free_gpus: int
    count: int
    best: Resources
    free_nvlink_gpus: int
    def __init__(self, gpu_model: _Optional[str] = ..., free_gpus: _Optional[int] = ..., count: _Optional[int] = ..., best: _Optional[_Union[Resources, _Mapping]] = ..., free_nvlink_gpus: _Optional[int] = ...) -> None: ...

class BlockSummary(_message.Message):
    __slots__ = ("block", "shapes")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    block: str
    shapes: _containers.RepeatedCompositeFieldContainer[NodeShape]
    def __init__(self, block: _Optional[str] = ..., shapes: _Optional[_Iterable[_Union[NodeShape, _Mapping]]] = ...) -> None: ...

class DatasetPresence(_message.Message):
    __slots__ = ("dataset", "shards")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dataset: _Optional[str] = ..., shards: _Optional[_Iterable[int]] = ...) -> None: ...

class GpuShareSlot(_message.Message):
    __slots__ = ("gpu_model", "free_percent", "free_memory_bytes", "count")
    GPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    FREE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    FREE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    gpu_model: str
    free_percent: int
    free_memory_bytes: int
    count: int
    def __init__(self, gpu_model: _Optional[str] = ..., free_percent: _Optional[int] = ..., free_memory_bytes: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...
