"""Intra-node compute (卡间计算): one pool over the devices of this machine.

:class:`DevicePool` splits arrays over the GPUs of the node (CUDA, through PyTorch when present) or
over its CPU cores, runs functions on every device in parallel and combines results with
``reduce``/``allreduce``. On CPU, arrays live in shared memory and are never serialized between
the workers. See :class:`DevicePool` for the whole API.
"""

from ._errors import RemoteTraceback, TaskError
from ._pool import DevicePool, Sharded
from ._types import Device, PoolStats

__all__ = ["Device", "DevicePool", "PoolStats", "RemoteTraceback", "Sharded", "TaskError"]
