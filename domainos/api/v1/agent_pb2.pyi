from domainos.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentMessage(_message.Message):
    __slots__ = ("register", "report", "ack", "log_reply", "probe_reply")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    LOG_REPLY_FIELD_NUMBER: _ClassVar[int]
    PROBE_REPLY_FIELD_NUMBER: _ClassVar[int]
    register: Register
    report: AgentReport
    ack: _common_pb2.CommandAck
    log_reply: _common_pb2.LogReply
    probe_reply: ProbeReply
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., report: _Optional[_Union[AgentReport, _Mapping]] = ..., ack: _Optional[_Union[_common_pb2.CommandAck, _Mapping]] = ..., log_reply: _Optional[_Union[_common_pb2.LogReply, _Mapping]] = ..., probe_reply: _Optional[_Union[ProbeReply, _Mapping]] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("inventory", "incarnation", "tasks", "usage", "health")
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    inventory: _common_pb2.NodeInventory
    incarnation: str
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskStatus]
    usage: _common_pb2.NodeUsage
    health: _common_pb2.NodeHealth
    def __init__(self, inventory: _Optional[_Union[_common_pb2.NodeInventory, _Mapping]] = ..., incarnation: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.TaskStatus, _Mapping]]] = ..., usage: _Optional[_Union[_common_pb2.NodeUsage, _Mapping]] = ..., health: _Optional[_Union[_common_pb2.NodeHealth, _Mapping]] = ...) -> None: ...

class AgentReport(_message.Message):
    __slots__ = ("incarnation", "seq", "full", "usage", "health", "tasks", "sent_at")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    incarnation: str
    seq: int
    full: bool
    usage: _common_pb2.NodeUsage
    health: _common_pb2.NodeHealth
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskStatus]
    sent_at: float
    def __init__(self, incarnation: _Optional[str] = ..., seq: _Optional[int] = ..., full: _Optional[bool] = ..., usage: _Optional[_Union[_common_pb2.NodeUsage, _Mapping]] = ..., health: _Optional[_Union[_common_pb2.NodeHealth, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.TaskStatus, _Mapping]]] = ..., sent_at: _Optional[float] = ...) -> None: ...

class AgentCommand(_message.Message):
    __slots__ = ("registered", "start_task", "stop_task", "ack_tasks", "fetch_log", "probe")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    START_TASK_FIELD_NUMBER: _ClassVar[int]
    STOP_TASK_FIELD_NUMBER: _ClassVar[int]
    ACK_TASKS_FIELD_NUMBER: _ClassVar[int]
    FETCH_LOG_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    start_task: StartTask
    stop_task: StopTask
    ack_tasks: AckTasks
    fetch_log: FetchLog
    probe: Probe
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., start_task: _Optional[_Union[StartTask, _Mapping]] = ..., stop_task: _Optional[_Union[StopTask, _Mapping]] = ..., ack_tasks: _Optional[_Union[AckTasks, _Mapping]] = ..., fetch_log: _Optional[_Union[FetchLog, _Mapping]] = ..., probe: _Optional[_Union[Probe, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("node_id", "subdomain_id", "region", "report_interval_s", "full_sync_interval_s", "heartbeat_interval_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    FULL_SYNC_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    subdomain_id: str
    region: str
    report_interval_s: float
    full_sync_interval_s: float
    heartbeat_interval_s: float
    def __init__(self, node_id: _Optional[str] = ..., subdomain_id: _Optional[str] = ..., region: _Optional[str] = ..., report_interval_s: _Optional[float] = ..., full_sync_interval_s: _Optional[float] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class StartTask(_message.Message):
    __slots__ = ("command_id", "spec", "gpu_indexes")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    GPU_INDEXES_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    spec: _common_pb2.TaskSpec
    gpu_indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, command_id: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.TaskSpec, _Mapping]] = ..., gpu_indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class StopTask(_message.Message):
    __slots__ = ("command_id", "task", "grace_s", "reason")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    task: _common_pb2.TaskRef
    grace_s: float
    reason: str
    def __init__(self, command_id: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.TaskRef, _Mapping]] = ..., grace_s: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class AckTasks(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskRef]
    def __init__(self, tasks: _Optional[_Iterable[_Union[_common_pb2.TaskRef, _Mapping]]] = ...) -> None: ...

class FetchLog(_message.Message):
    __slots__ = ("request_id", "request")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    request: _common_pb2.LogRequest
    def __init__(self, request_id: _Optional[str] = ..., request: _Optional[_Union[_common_pb2.LogRequest, _Mapping]] = ...) -> None: ...

class Probe(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class ProbeReply(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...
