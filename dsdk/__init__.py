"""DSDK: the Python client of a DomainOS federation.

>>> import dsdk
>>> with dsdk.connect() as client:                      # doctest: +SKIP
...     job = client.submit({"command": ["python3", "-c", "print(42)"], "replicas": 2})
...     job = client.wait(job.job_id)
...     print(job.state, [log.text for log in client.logs(job.job_id)])
"""

from domainos.jobspec import JobSpec, RetryPolicy, parse_spec, parse_spec_yaml
from domainos.resources import Resources
from domainos.security import CertFiles as TLSFiles

from ._address import domainos_home, resolve_address, resolve_tls, state_file
from ._admin import AuditEntry, Explanation, NewToken, Principal, Quota, Tenant, TokenInfo
from ._checkpoint import Checkpoint, Checkpointer
from ._client import Client, connect
from ._context import TaskContext, context
from ._credentials import credentials_file, parse_ttl, save_token, token_for
from ._datasets import Dataset, DatasetMap, last_stats, read_shard, ship_module
from ._driver import Pool, WorkerInfo, gather
from ._models import conduct, contact, establish
from ._retry import Retry
from ._spec import as_spec, load_spec_file
from ._taskprogress import note_checkpoint, report_progress
from ._types import (
    ClusterInfo,
    DatasetInfo,
    Endpoint,
    Goodput,
    Job,
    JobState,
    JobStats,
    Node,
    NodeList,
    Region,
    ShardInfo,
    ShardReplica,
    SubDomain,
    Task,
    TaskLog,
    TaskState,
)
from ._worker import worker_state
from .errors import DomainOSError, RemoteError, WaitTimeout, WorkerLost

__all__ = [
    "AuditEntry",
    "Checkpoint",
    "Checkpointer",
    "Client",
    "ClusterInfo",
    "Dataset",
    "DatasetInfo",
    "DatasetMap",
    "DomainOSError",
    "Endpoint",
    "Explanation",
    "Goodput",
    "Job",
    "JobSpec",
    "JobState",
    "JobStats",
    "NewToken",
    "Node",
    "NodeList",
    "Pool",
    "Principal",
    "Quota",
    "Region",
    "RemoteError",
    "Resources",
    "Retry",
    "RetryPolicy",
    "ShardInfo",
    "ShardReplica",
    "SubDomain",
    "TLSFiles",
    "Task",
    "TaskContext",
    "TaskLog",
    "TaskState",
    "Tenant",
    "TokenInfo",
    "WaitTimeout",
    "WorkerInfo",
    "WorkerLost",
    "as_spec",
    "conduct",
    "connect",
    "contact",
    "context",
    "credentials_file",
    "domainos_home",
    "establish",
    "gather",
    "last_stats",
    "load_spec_file",
    "note_checkpoint",
    "parse_spec",
    "parse_spec_yaml",
    "parse_ttl",
    "read_shard",
    "report_progress",
    "resolve_address",
    "resolve_tls",
    "save_token",
    "ship_module",
    "state_file",
    "token_for",
    "worker_state",
]
