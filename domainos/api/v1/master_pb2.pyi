from domainos.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
    ROLE_JOB: _ClassVar[Role]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_SCHEDULED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
ROLE_UNSPECIFIED: Role
ROLE_USER: Role
ROLE_ADMIN: Role
ROLE_JOB: Role
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_SCHEDULED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class Principal(_message.Message):
    __slots__ = ("token_id", "tenant", "role", "cert_role", "cert_id", "job_id")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CERT_ROLE_FIELD_NUMBER: _ClassVar[int]
    CERT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    tenant: str
    role: Role
    cert_role: str
    cert_id: str
    job_id: str
    def __init__(self, token_id: _Optional[str] = ..., tenant: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., cert_role: _Optional[str] = ..., cert_id: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("name", "created_at", "created_by", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    created_at: float
    created_by: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., created_at: _Optional[float] = ..., created_by: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("name", "request_id", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("token_id", "tenant", "role", "created_at", "expires_at", "revoked_at", "created_by", "description", "job_id")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    tenant: str
    role: Role
    created_at: float
    expires_at: float
    revoked_at: float
    created_by: str
    description: str
    job_id: str
    def __init__(self, token_id: _Optional[str] = ..., tenant: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., revoked_at: _Optional[float] = ..., created_by: _Optional[str] = ..., description: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("tenant", "role", "ttl_seconds", "description", "request_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    role: Role
    ttl_seconds: float
    description: str
    request_id: str
    def __init__(self, tenant: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., ttl_seconds: _Optional[float] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("info", "token")
    INFO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    info: TokenInfo
    token: str
    def __init__(self, info: _Optional[_Union[TokenInfo, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("tenant", "include_revoked")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    include_revoked: bool
    def __init__(self, tenant: _Optional[str] = ..., include_revoked: _Optional[bool] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token_id", "request_id")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    request_id: str
    def __init__(self, token_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("entry_id", "time", "principal", "tenant", "role", "method", "target", "request_id", "code", "message", "peer", "cert")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CERT_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    time: float
    principal: str
    tenant: str
    role: Role
    method: str
    target: str
    request_id: str
    code: str
    message: str
    peer: str
    cert: str
    def __init__(self, entry_id: _Optional[str] = ..., time: _Optional[float] = ..., principal: _Optional[str] = ..., tenant: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., method: _Optional[str] = ..., target: _Optional[str] = ..., request_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., peer: _Optional[str] = ..., cert: _Optional[str] = ...) -> None: ...

class ReadAuditRequest(_message.Message):
    __slots__ = ("limit", "page_token", "since")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_token: str
    since: float
    def __init__(self, limit: _Optional[int] = ..., page_token: _Optional[str] = ..., since: _Optional[float] = ...) -> None: ...

class ReadAuditResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("on_exit", "on_lost")
    ON_EXIT_FIELD_NUMBER: _ClassVar[int]
    ON_LOST_FIELD_NUMBER: _ClassVar[int]
    on_exit: int
    on_lost: int
    def __init__(self, on_exit: _Optional[int] = ..., on_lost: _Optional[int] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("name", "replicas", "command", "env", "resources", "retry", "tenant", "labels", "has_retry", "priority", "exclude_gpu_models", "node_selector", "gang", "parallelism", "model", "iteration_time_s", "max_cross_domain_loss", "has_max_cross_domain_loss", "locality", "affinity", "distinct_nodes", "checkpoint", "disconnect", "container")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NodeSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HAS_RETRY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_GPU_MODELS_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    GANG_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ITERATION_TIME_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CROSS_DOMAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    HAS_MAX_CROSS_DOMAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_NODES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    name: str
    replicas: int
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    resources: _common_pb2.Resources
    retry: RetryPolicy
    tenant: str
    labels: _containers.ScalarMap[str, str]
    has_retry: bool
    priority: str
    exclude_gpu_models: _containers.RepeatedScalarFieldContainer[str]
    node_selector: _containers.ScalarMap[str, str]
    gang: GangPolicy
    parallelism: Parallelism
    model: ModelSize
    iteration_time_s: float
    max_cross_domain_loss: float
    has_max_cross_domain_loss: bool
    locality: Locality
    affinity: NodeAffinity
    distinct_nodes: bool
    checkpoint: CheckpointPolicy
    disconnect: DisconnectPolicy
    container: _common_pb2.ContainerSpec
    def __init__(self, name: _Optional[str] = ..., replicas: _Optional[int] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., tenant: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., has_retry: _Optional[bool] = ..., priority: _Optional[str] = ..., exclude_gpu_models: _Optional[_Iterable[str]] = ..., node_selector: _Optional[_Mapping[str, str]] = ..., gang: _Optional[_Union[GangPolicy, _Mapping]] = ..., parallelism: _Optional[_Union[Parallelism, _Mapping]] = ..., model: _Optional[_Union[ModelSize, _Mapping]] = ..., iteration_time_s: _Optional[float] = ..., max_cross_domain_loss: _Optional[float] = ..., has_max_cross_domain_loss: _Optional[bool] = ..., locality: _Optional[_Union[Locality, _Mapping]] = ..., affinity: _Optional[_Union[NodeAffinity, _Mapping]] = ..., distinct_nodes: _Optional[bool] = ..., checkpoint: _Optional[_Union[CheckpointPolicy, _Mapping]] = ..., disconnect: _Optional[_Union[DisconnectPolicy, _Mapping]] = ..., container: _Optional[_Union[_common_pb2.ContainerSpec, _Mapping]] = ...) -> None: ...

class CheckpointPolicy(_message.Message):
    __slots__ = ("enabled", "interval_s")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    interval_s: float
    def __init__(self, enabled: _Optional[bool] = ..., interval_s: _Optional[float] = ...) -> None: ...

class DisconnectPolicy(_message.Message):
    __slots__ = ("lost_after_s", "replace", "has_replace")
    LOST_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    HAS_REPLACE_FIELD_NUMBER: _ClassVar[int]
    lost_after_s: float
    replace: bool
    has_replace: bool
    def __init__(self, lost_after_s: _Optional[float] = ..., replace: _Optional[bool] = ..., has_replace: _Optional[bool] = ...) -> None: ...

class NodeAffinity(_message.Message):
    __slots__ = ("nodes", "soft")
    NODES_FIELD_NUMBER: _ClassVar[int]
    SOFT_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeRef]
    soft: bool
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeRef, _Mapping]]] = ..., soft: _Optional[bool] = ...) -> None: ...

class NodeRef(_message.Message):
    __slots__ = ("subdomain_id", "node_id")
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    subdomain_id: str
    node_id: str
    def __init__(self, subdomain_id: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class GangPolicy(_message.Message):
    __slots__ = ("min", "timeout_s")
    MIN_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    min: int
    timeout_s: float
    def __init__(self, min: _Optional[int] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class Parallelism(_message.Message):
    __slots__ = ("tp", "pp", "dp")
    TP_FIELD_NUMBER: _ClassVar[int]
    PP_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    tp: int
    pp: int
    dp: int
    def __init__(self, tp: _Optional[int] = ..., pp: _Optional[int] = ..., dp: _Optional[int] = ...) -> None: ...

class ModelSize(_message.Message):
    __slots__ = ("parameters", "bytes_per_parameter")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_PARAMETER_FIELD_NUMBER: _ClassVar[int]
    parameters: int
    bytes_per_parameter: float
    def __init__(self, parameters: _Optional[int] = ..., bytes_per_parameter: _Optional[float] = ...) -> None: ...

class Locality(_message.Message):
    __slots__ = ("dataset", "shards", "wait_s")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shards: _containers.RepeatedScalarFieldContainer[int]
    wait_s: float
    def __init__(self, dataset: _Optional[str] = ..., shards: _Optional[_Iterable[int]] = ..., wait_s: _Optional[float] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("index", "attempt", "state", "node_id", "subdomain_id", "region", "exit_code", "message", "started_at", "finished_at", "exit_retries", "lost_retries", "drains", "progress", "straggler")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_RETRIES_FIELD_NUMBER: _ClassVar[int]
    LOST_RETRIES_FIELD_NUMBER: _ClassVar[int]
    DRAINS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STRAGGLER_FIELD_NUMBER: _ClassVar[int]
    index: int
    attempt: int
    state: _common_pb2.TaskState
    node_id: str
    subdomain_id: str
    region: str
    exit_code: int
    message: str
    started_at: float
    finished_at: float
    exit_retries: int
    lost_retries: int
    drains: int
    progress: _common_pb2.TaskProgress
    straggler: bool
    def __init__(self, index: _Optional[int] = ..., attempt: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., node_id: _Optional[str] = ..., subdomain_id: _Optional[str] = ..., region: _Optional[str] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., exit_retries: _Optional[int] = ..., lost_retries: _Optional[int] = ..., drains: _Optional[int] = ..., progress: _Optional[_Union[_common_pb2.TaskProgress, _Mapping]] = ..., straggler: _Optional[bool] = ...) -> None: ...

class Goodput(_message.Message):
    __slots__ = ("wall_s", "productive_s", "lost_s", "recovery_s", "effective_ratio", "interruptions")
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    PRODUCTIVE_S_FIELD_NUMBER: _ClassVar[int]
    LOST_S_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_S_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_RATIO_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTIONS_FIELD_NUMBER: _ClassVar[int]
    wall_s: float
    productive_s: float
    lost_s: float
    recovery_s: float
    effective_ratio: float
    interruptions: int
    def __init__(self, wall_s: _Optional[float] = ..., productive_s: _Optional[float] = ..., lost_s: _Optional[float] = ..., recovery_s: _Optional[float] = ..., effective_ratio: _Optional[float] = ..., interruptions: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "spec", "state", "message", "created_at", "updated_at", "finished_at", "tasks", "request_id", "stats", "goodput", "stragglers")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    GOODPUT_FIELD_NUMBER: _ClassVar[int]
    STRAGGLERS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: JobSpec
    state: JobState
    message: str
    created_at: float
    updated_at: float
    finished_at: float
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    request_id: str
    stats: JobStats
    goodput: Goodput
    stragglers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., request_id: _Optional[str] = ..., stats: _Optional[_Union[JobStats, _Mapping]] = ..., goodput: _Optional[_Union[Goodput, _Mapping]] = ..., stragglers: _Optional[_Iterable[int]] = ...) -> None: ...

class JobStats(_message.Message):
    __slots__ = ("bytes_intra_node", "bytes_inter_node", "bytes_inter_subdomain", "bytes_inter_region", "bytes_client", "calls", "local_calls", "updated_at")
    BYTES_INTRA_NODE_FIELD_NUMBER: _ClassVar[int]
    BYTES_INTER_NODE_FIELD_NUMBER: _ClassVar[int]
    BYTES_INTER_SUBDOMAIN_FIELD_NUMBER: _ClassVar[int]
    BYTES_INTER_REGION_FIELD_NUMBER: _ClassVar[int]
    BYTES_CLIENT_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CALLS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    bytes_intra_node: int
    bytes_inter_node: int
    bytes_inter_subdomain: int
    bytes_inter_region: int
    bytes_client: int
    calls: int
    local_calls: int
    updated_at: float
    def __init__(self, bytes_intra_node: _Optional[int] = ..., bytes_inter_node: _Optional[int] = ..., bytes_inter_subdomain: _Optional[int] = ..., bytes_inter_region: _Optional[int] = ..., bytes_client: _Optional[int] = ..., calls: _Optional[int] = ..., local_calls: _Optional[int] = ..., updated_at: _Optional[float] = ...) -> None: ...

class ReportJobStatsRequest(_message.Message):
    __slots__ = ("job_id", "stats")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    stats: JobStats
    def __init__(self, job_id: _Optional[str] = ..., stats: _Optional[_Union[JobStats, _Mapping]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("task_index", "attempt", "address", "node_id", "subdomain_id", "region", "kind", "published_at")
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    attempt: int
    address: str
    node_id: str
    subdomain_id: str
    region: str
    kind: str
    published_at: float
    def __init__(self, task_index: _Optional[int] = ..., attempt: _Optional[int] = ..., address: _Optional[str] = ..., node_id: _Optional[str] = ..., subdomain_id: _Optional[str] = ..., region: _Optional[str] = ..., kind: _Optional[str] = ..., published_at: _Optional[float] = ...) -> None: ...

class PublishEndpointRequest(_message.Message):
    __slots__ = ("job_id", "endpoint")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    endpoint: Endpoint
    def __init__(self, job_id: _Optional[str] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class PublishEndpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ("job_id", "kind", "min_count", "wait_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: str
    min_count: int
    wait_s: float
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[str] = ..., min_count: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "state")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    state: JobState
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ShardReplica(_message.Message):
    __slots__ = ("node_id", "subdomain_id", "region")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    subdomain_id: str
    region: str
    def __init__(self, node_id: _Optional[str] = ..., subdomain_id: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class DatasetShardInfo(_message.Message):
    __slots__ = ("shard", "size_bytes", "replicas")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    size_bytes: int
    replicas: _containers.RepeatedCompositeFieldContainer[ShardReplica]
    def __init__(self, shard: _Optional[int] = ..., size_bytes: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ShardReplica, _Mapping]]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "tenant", "num_shards", "replicas", "size_bytes", "shards", "created_at", "created_by", "job_id", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant: str
    num_shards: int
    replicas: int
    size_bytes: int
    shards: _containers.RepeatedCompositeFieldContainer[DatasetShardInfo]
    created_at: float
    created_by: str
    job_id: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., tenant: _Optional[str] = ..., num_shards: _Optional[int] = ..., replicas: _Optional[int] = ..., size_bytes: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[DatasetShardInfo, _Mapping]]] = ..., created_at: _Optional[float] = ..., created_by: _Optional[str] = ..., job_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PutDatasetRequest(_message.Message):
    __slots__ = ("dataset", "request_id", "replace")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    request_id: str
    replace: bool
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ..., request_id: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job", "duplicate")
    JOB_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    job: Job
    duplicate: bool
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "limit", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    limit: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "request_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    request_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., request_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReadLogsRequest(_message.Message):
    __slots__ = ("job_id", "task_index", "stream", "offset", "max_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    task_index: int
    stream: str
    offset: int
    max_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., task_index: _Optional[int] = ..., stream: _Optional[str] = ..., offset: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class TaskLog(_message.Message):
    __slots__ = ("task_index", "attempt", "node_id", "chunk")
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    attempt: int
    node_id: str
    chunk: _common_pb2.LogChunk
    def __init__(self, task_index: _Optional[int] = ..., attempt: _Optional[int] = ..., node_id: _Optional[str] = ..., chunk: _Optional[_Union[_common_pb2.LogChunk, _Mapping]] = ...) -> None: ...

class ReadLogsResponse(_message.Message):
    __slots__ = ("logs",)
    LOGS_FIELD_NUMBER: _ClassVar[int]
    logs: _containers.RepeatedCompositeFieldContainer[TaskLog]
    def __init__(self, logs: _Optional[_Iterable[_Union[TaskLog, _Mapping]]] = ...) -> None: ...

class ListDomainsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubDomainView(_message.Message):
    __slots__ = ("subdomain_id", "region", "address", "connected", "last_seen_at", "summary", "incarnation")
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    subdomain_id: str
    region: str
    address: str
    connected: bool
    last_seen_at: float
    summary: _common_pb2.SubDomainSummary
    incarnation: str
    def __init__(self, subdomain_id: _Optional[str] = ..., region: _Optional[str] = ..., address: _Optional[str] = ..., connected: _Optional[bool] = ..., last_seen_at: _Optional[float] = ..., summary: _Optional[_Union[_common_pb2.SubDomainSummary, _Mapping]] = ..., incarnation: _Optional[str] = ...) -> None: ...

class RegionView(_message.Message):
    __slots__ = ("name", "subdomains")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAINS_FIELD_NUMBER: _ClassVar[int]
    name: str
    subdomains: _containers.RepeatedCompositeFieldContainer[SubDomainView]
    def __init__(self, name: _Optional[str] = ..., subdomains: _Optional[_Iterable[_Union[SubDomainView, _Mapping]]] = ...) -> None: ...

class ListDomainsResponse(_message.Message):
    __slots__ = ("regions",)
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedCompositeFieldContainer[RegionView]
    def __init__(self, regions: _Optional[_Iterable[_Union[RegionView, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("subdomain_id", "page_size")
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    subdomain_id: str
    page_size: int
    def __init__(self, subdomain_id: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "unreachable")
    NODES_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[_common_pb2.NodeView]
    unreachable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, nodes: _Optional[_Iterable[_Union[_common_pb2.NodeView, _Mapping]]] = ..., unreachable: _Optional[_Iterable[str]] = ...) -> None: ...

class AdminNodeRequest(_message.Message):
    __slots__ = ("node_id", "subdomain_id", "action", "reason", "grace_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    subdomain_id: str
    action: _common_pb2.NodeAction
    reason: str
    grace_s: float
    def __init__(self, node_id: _Optional[str] = ..., subdomain_id: _Optional[str] = ..., action: _Optional[_Union[_common_pb2.NodeAction, str]] = ..., reason: _Optional[str] = ..., grace_s: _Optional[float] = ...) -> None: ...

class AdminNodeResponse(_message.Message):
    __slots__ = ("node", "tasks_stopped", "unreachable")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TASKS_STOPPED_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    node: _common_pb2.NodeView
    tasks_stopped: int
    unreachable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[_Union[_common_pb2.NodeView, _Mapping]] = ..., tasks_stopped: _Optional[int] = ..., unreachable: _Optional[_Iterable[str]] = ...) -> None: ...

class GetClusterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("master_id", "version", "store", "started_at", "subdomains_connected", "subdomains_known", "nodes_ready", "jobs_active")
    MASTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAINS_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAINS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    NODES_READY_FIELD_NUMBER: _ClassVar[int]
    JOBS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    master_id: str
    version: str
    store: str
    started_at: float
    subdomains_connected: int
    subdomains_known: int
    nodes_ready: int
    jobs_active: int
    def __init__(self, master_id: _Optional[str] = ..., version: _Optional[str] = ..., store: _Optional[str] = ..., started_at: _Optional[float] = ..., subdomains_connected: _Optional[int] = ..., subdomains_known: _Optional[int] = ..., nodes_ready: _Optional[int] = ..., jobs_active: _Optional[int] = ...) -> None: ...

class QuotaInfo(_message.Message):
    __slots__ = ("tenant", "region", "subdomain", "limits", "used")
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class UsedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    region: str
    subdomain: str
    limits: _containers.ScalarMap[str, int]
    used: _containers.ScalarMap[str, int]
    def __init__(self, tenant: _Optional[str] = ..., region: _Optional[str] = ..., subdomain: _Optional[str] = ..., limits: _Optional[_Mapping[str, int]] = ..., used: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("tenant", "region", "subdomain", "limits", "request_id")
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    region: str
    subdomain: str
    limits: _containers.ScalarMap[str, int]
    request_id: str
    def __init__(self, tenant: _Optional[str] = ..., region: _Optional[str] = ..., subdomain: _Optional[str] = ..., limits: _Optional[_Mapping[str, int]] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteQuotaRequest(_message.Message):
    __slots__ = ("tenant", "region", "subdomain", "request_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    region: str
    subdomain: str
    request_id: str
    def __init__(self, tenant: _Optional[str] = ..., region: _Optional[str] = ..., subdomain: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListQuotasRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListQuotasResponse(_message.Message):
    __slots__ = ("quotas",)
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    quotas: _containers.RepeatedCompositeFieldContainer[QuotaInfo]
    def __init__(self, quotas: _Optional[_Iterable[_Union[QuotaInfo, _Mapping]]] = ...) -> None: ...

class ExplainJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ExplainJobResponse(_message.Message):
    __slots__ = ("job_id", "text", "state", "reasons")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    text: str
    state: JobState
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., text: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...
