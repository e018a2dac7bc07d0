from domainos.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReservationOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_OUTCOME_UNSPECIFIED: _ClassVar[ReservationOutcome]
    RESERVATION_OUTCOME_ACCEPTED: _ClassVar[ReservationOutcome]
    RESERVATION_OUTCOME_REFUSED: _ClassVar[ReservationOutcome]
    RESERVATION_OUTCOME_COMMITTED: _ClassVar[ReservationOutcome]
RESERVATION_OUTCOME_UNSPECIFIED: ReservationOutcome
RESERVATION_OUTCOME_ACCEPTED: ReservationOutcome
RESERVATION_OUTCOME_REFUSED: ReservationOutcome
RESERVATION_OUTCOME_COMMITTED: ReservationOutcome

class SubDomainMessage(_message.Message):
    __slots__ = ("hello", "summary", "task_updates", "ack", "node_list", "log_reply", "reservation", "node_admin")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TASK_UPDATES_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NODE_LIST_FIELD_NUMBER: _ClassVar[int]
    LOG_REPLY_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    NODE_ADMIN_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    summary: SummaryReport
    task_updates: TaskUpdates
    ack: _common_pb2.CommandAck
    node_list: NodeListReply
    log_reply: _common_pb2.LogReply
    reservation: ReservationReply
    node_admin: NodeAdminReply
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., summary: _Optional[_Union[SummaryReport, _Mapping]] = ..., task_updates: _Optional[_Union[TaskUpdates, _Mapping]] = ..., ack: _Optional[_Union[_common_pb2.CommandAck, _Mapping]] = ..., node_list: _Optional[_Union[NodeListReply, _Mapping]] = ..., log_reply: _Optional[_Union[_common_pb2.LogReply, _Mapping]] = ..., reservation: _Optional[_Union[ReservationReply, _Mapping]] = ..., node_admin: _Optional[_Union[NodeAdminReply, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("subdomain_id", "region", "incarnation", "address", "max_nodes", "tasks", "summary", "reservations")
    SUBDOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    subdomain_id: str
    region: str
    incarnation: str
    address: str
    max_nodes: int
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskStatus]
    summary: _common_pb2.SubDomainSummary
    reservations: _containers.RepeatedCompositeFieldContainer[ReservationState]
    def __init__(self, subdomain_id: _Optional[str] = ..., region: _Optional[str] = ..., incarnation: _Optional[str] = ..., address: _Optional[str] = ..., max_nodes: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.TaskStatus, _Mapping]]] = ..., summary: _Optional[_Union[_common_pb2.SubDomainSummary, _Mapping]] = ..., reservations: _Optional[_Iterable[_Union[ReservationState, _Mapping]]] = ...) -> None: ...

class SummaryReport(_message.Message):
    __slots__ = ("incarnation", "seq", "summary", "placements_applied")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    incarnation: str
    seq: int
    summary: _common_pb2.SubDomainSummary
    placements_applied: int
    def __init__(self, incarnation: _Optional[str] = ..., seq: _Optional[int] = ..., summary: _Optional[_Union[_common_pb2.SubDomainSummary, _Mapping]] = ..., placements_applied: _Optional[int] = ...) -> None: ...

class TaskUpdates(_message.Message):
    __slots__ = ("incarnation", "seq", "tasks")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    incarnation: str
    seq: int
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskStatus]
    def __init__(self, incarnation: _Optional[str] = ..., seq: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.TaskStatus, _Mapping]]] = ...) -> None: ...

class NodeListReply(_message.Message):
    __slots__ = ("request_id", "nodes", "next_page_token", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[_common_pb2.NodeView]
    next_page_token: str
    error: str
    def __init__(self, request_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[_common_pb2.NodeView, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class MasterCommand(_message.Message):
    __slots__ = ("welcome", "place_task", "stop_task", "ack_tasks", "list_nodes", "fetch_log", "reserve", "commit", "release", "place_tasks", "node_admin")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    PLACE_TASK_FIELD_NUMBER: _ClassVar[int]
    STOP_TASK_FIELD_NUMBER: _ClassVar[int]
    ACK_TASKS_FIELD_NUMBER: _ClassVar[int]
    LIST_NODES_FIELD_NUMBER: _ClassVar[int]
    FETCH_LOG_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    PLACE_TASKS_FIELD_NUMBER: _ClassVar[int]
    NODE_ADMIN_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    place_task: PlaceTask
    stop_task: StopTaskCommand
    ack_tasks: AckTaskStates
    list_nodes: ListNodes
    fetch_log: FetchTaskLog
    reserve: ReserveTasks
    commit: CommitReservation
    release: ReleaseReservation
    place_tasks: PlaceTasks
    node_admin: NodeAdmin
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., place_task: _Optional[_Union[PlaceTask, _Mapping]] = ..., stop_task: _Optional[_Union[StopTaskCommand, _Mapping]] = ..., ack_tasks: _Optional[_Union[AckTaskStates, _Mapping]] = ..., list_nodes: _Optional[_Union[ListNodes, _Mapping]] = ..., fetch_log: _Optional[_Union[FetchTaskLog, _Mapping]] = ..., reserve: _Optional[_Union[ReserveTasks, _Mapping]] = ..., commit: _Optional[_Union[CommitReservation, _Mapping]] = ..., release: _Optional[_Union[ReleaseReservation, _Mapping]] = ..., place_tasks: _Optional[_Union[PlaceTasks, _Mapping]] = ..., node_admin: _Optional[_Union[NodeAdmin, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("master_id", "summary_interval_s")
    MASTER_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    master_id: str
    summary_interval_s: float
    def __init__(self, master_id: _Optional[str] = ..., summary_interval_s: _Optional[float] = ...) -> None: ...

class PlaceTask(_message.Message):
    __slots__ = ("command_id", "spec")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    spec: _common_pb2.TaskSpec
    def __init__(self, command_id: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.TaskSpec, _Mapping]] = ...) -> None: ...

class PlaceTasks(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[PlaceTask]
    def __init__(self, tasks: _Optional[_Iterable[_Union[PlaceTask, _Mapping]]] = ...) -> None: ...

class StopTaskCommand(_message.Message):
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

class AckTaskStates(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskRef]
    def __init__(self, tasks: _Optional[_Iterable[_Union[_common_pb2.TaskRef, _Mapping]]] = ...) -> None: ...

class NodeAdmin(_message.Message):
    __slots__ = ("request_id", "node_id", "action", "reason", "grace_s", "by")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    node_id: str
    action: _common_pb2.NodeAction
    reason: str
    grace_s: float
    by: str
    def __init__(self, request_id: _Optional[str] = ..., node_id: _Optional[str] = ..., action: _Optional[_Union[_common_pb2.NodeAction, str]] = ..., reason: _Optional[str] = ..., grace_s: _Optional[float] = ..., by: _Optional[str] = ...) -> None: ...

class NodeAdminReply(_message.Message):
    __slots__ = ("request_id", "found", "node", "tasks_stopped", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    TASKS_STOPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    found: bool
    node: _common_pb2.NodeView
    tasks_stopped: int
    error: str
    def __init__(self, request_id: _Optional[str] = ..., found: _Optional[bool] = ..., node: _Optional[_Union[_common_pb2.NodeView, _Mapping]] = ..., tasks_stopped: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ListNodes(_message.Message):
    __slots__ = ("request_id", "page_size", "page_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    page_size: int
    page_token: str
    def __init__(self, request_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class FetchTaskLog(_message.Message):
    __slots__ = ("request_id", "node_id", "request")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    node_id: str
    request: _common_pb2.LogRequest
    def __init__(self, request_id: _Optional[str] = ..., node_id: _Optional[str] = ..., request: _Optional[_Union[_common_pb2.LogRequest, _Mapping]] = ...) -> None: ...

class ReserveTasks(_message.Message):
    __slots__ = ("reservation_id", "tasks", "hold_s")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    HOLD_S_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskSpec]
    hold_s: float
    def __init__(self, reservation_id: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.TaskSpec, _Mapping]]] = ..., hold_s: _Optional[float] = ...) -> None: ...

class CommitReservation(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class ReleaseReservation(_message.Message):
    __slots__ = ("reservation_id", "reason")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    reason: str
    def __init__(self, reservation_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReservationReply(_message.Message):
    __slots__ = ("reservation_id", "outcome", "reason", "expired", "placements")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    outcome: ReservationOutcome
    reason: str
    expired: bool
    placements: _containers.RepeatedCompositeFieldContainer[TaskPlacement]
    def __init__(self, reservation_id: _Optional[str] = ..., outcome: _Optional[_Union[ReservationOutcome, str]] = ..., reason: _Optional[str] = ..., expired: _Optional[bool] = ..., placements: _Optional[_Iterable[_Union[TaskPlacement, _Mapping]]] = ...) -> None: ...

class TaskPlacement(_message.Message):
    __slots__ = ("task_index", "node_id", "block")
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    node_id: str
    block: str
    def __init__(self, task_index: _Optional[int] = ..., node_id: _Optional[str] = ..., block: _Optional[str] = ...) -> None: ...

class ReservationState(_message.Message):
    __slots__ = ("reservation_id", "committed")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    committed: bool
    def __init__(self, reservation_id: _Optional[str] = ..., committed: _Optional[bool] = ...) -> None: ...
