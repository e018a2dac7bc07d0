"""Errors of :mod:`dsdk.intra`: a function that failed on a device, or a worker that died there."""

from __future__ import annotations

import linecache
import re

from domainos.errors import DomainOSError

from ._types import Device


class RemoteTraceback(Exception):
    """The traceback text of a failure on a device; the ``__cause__`` of a :class:`TaskError`.

    It exists so that Python prints the remote traceback under the local one, as
    :mod:`concurrent.futures` does for process pools.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


class TaskError(DomainOSError):
    """A function run by a :class:`~dsdk.intra.DevicePool` raised, or the worker running it died.

    ``device`` is where it happened and ``rank`` its position in the pool (the part index);
    ``exc_type`` is the qualified name of the original exception type (``""`` when the worker
    died, see ``worker_exit_code``) and ``remote_traceback`` the traceback formatted on the device.
    """

    def __init__(
        self,
        message: str,
        *,
        device: Device,
        rank: int,
        exc_type: str = "",
        remote_traceback: str = "",
        worker_exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.device = device
        self.rank = rank
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback
        self.worker_exit_code = worker_exit_code

    @property
    def device_index(self) -> int:
        """The hardware index of :attr:`device` (CPU core or CUDA ordinal)."""
        return self.device.index


_DYNAMIC_FRAME = re.compile(r'^(  File )"<dynamic-code>"(, line (\d+), in .*)$', re.MULTILINE)


def localize(text: str, fn: object) -> str:
    """Put ``fn``'s file name and source lines back into a traceback from a worker.

    cloudpickle ships functions defined in ``__main__`` (and lambdas, closures) by value and names
    their code ``<dynamic-code>``; such code comes from ``fn``'s own module in practice.
    """
    code = getattr(fn, "__code__", None)
    if code is None:
        return text
    filename = code.co_filename

    def frame(match: re.Match[str]) -> str:
        line = linecache.getline(filename, int(match.group(3))).strip()
        head = f'{match.group(1)}"{filename}"{match.group(2)}'
        return f"{head}\n    {line}" if line else head

    return _DYNAMIC_FRAME.sub(frame, text)


def first_failure(errors: dict[int, TaskError]) -> TaskError:
    """The failure of the lowest rank, its message naming the other devices that failed too."""
    first = min(errors)
    error = errors[first]
    others = [str(errors[rank].device) for rank in sorted(errors) if rank != first]
    if others:
        error.message = f"{error.message} (also failed: {', '.join(others)})"
        error.args = (error.message,)
    return error
