"""DSDK: the Python client of a DomainOS federation.

>>> import dsdk
>>> with dsdk.connect() as client:                      # doctest: +SKIP
...     job = client.submit({"command": ["python3", "-c", "print(42)"], "replicas": 2})
...     job = client.wait(job.job_id)
...     print(job.state, [log.text for log in client.logs(job.job_id)])
"""

from domainos.jobspec import JobSpec, RetryPolicy, parse_spec, parse_spec_yaml
from domainos.resources import Resources

from ._address import domainos_home, resolve_address, state_file
from ._client import Client, connect
from ._retry import Retry
from ._spec import as_spec, load_spec_file
from ._types import ClusterInfo, Job, JobState, Node, NodeList, Region, SubDomain, Task, TaskLog, TaskState
from .errors import DomainOSError, WaitTimeout

__all__ = [
    "Client",
    "ClusterInfo",
    "DomainOSError",
    "Job",
    "JobSpec",
    "JobState",
    "Node",
    "NodeList",
    "Region",
    "Resources",
    "Retry",
    "RetryPolicy",
    "SubDomain",
    "Task",
    "TaskLog",
    "TaskState",
    "WaitTimeout",
    "as_spec",
    "connect",
    "domainos_home",
    "load_spec_file",
    "parse_spec",
    "parse_spec_yaml",
    "resolve_address",
    "state_file",
]
