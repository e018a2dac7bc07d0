"""The CUDA backend: parts are PyTorch tensors on ``cuda:i``; torch is imported only here, lazily.

``map`` runs the function in one thread per device under ``torch.cuda.device(i)`` and synchronises
that device before returning, so asynchronous CUDA errors surface in the call that caused them.
``reduce`` and ``allreduce`` move data device to device (``tensor.to("cuda:j")``, which PyTorch
does peer to peer where the hardware allows), never through host memory; ``gather`` copies each
part to host once, straight into the result.
"""

from __future__ import annotations

import importlib
import importlib.util
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from domainos.errors import FailedPrecondition, InvalidArgument

from ._backend import OPS, Split, common_shape, concat, row_bounds
from ._errors import RemoteTraceback, TaskError, first_failure
from ._types import Device, DeviceKind, PoolStats


def _torch() -> Any:
    """The torch module, or None when it is not installed or does not import."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        return importlib.import_module("torch")
    except Exception:
        return None


def device_count() -> tuple[int, str]:
    """How many CUDA devices torch sees, and if none, why (for the error message)."""
    torch = _torch()
    if torch is None:
        return 0, "PyTorch (torch) is not installed or does not import"
    count = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    if count == 0:
        return 0, f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)"
    return count, ""


class CudaBackend:
    """One thread per CUDA device; see the module docstring."""

    def __init__(self, ordinals: Sequence[int]) -> None:
        torch = _torch()
        if torch is None:
            raise FailedPrecondition("kind='cuda' needs PyTorch (torch), which does not import here")
        self._torch = torch
        self.kind: DeviceKind = "cuda"
        self.devices = [Device("cuda", i, str(torch.cuda.get_device_name(i))) for i in ordinals]
        self._threads = ThreadPoolExecutor(max_workers=len(ordinals), thread_name_prefix="dsdk-intra-cuda")
        self._calls = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("the DevicePool is closed")

    def _each(self, what: str, jobs: dict[int, Callable[[], Any]]) -> dict[int, Any]:
        """Run ``jobs[rank]`` on the device of each rank in parallel; raise the first failure."""
        self._check_open()
        self._calls += 1
        futures = {rank: self._threads.submit(self._on_device, rank, job) for rank, job in jobs.items()}
        results: dict[int, Any] = {}
        errors: dict[int, TaskError] = {}
        for rank, future in futures.items():
            try:
                results[rank] = future.result()
            except Exception as exc:
                errors[rank] = self._failed(rank, what, exc)
        if errors:
            raise first_failure(errors)
        return results

    def _on_device(self, rank: int, job: Callable[[], Any]) -> Any:
        index = self.devices[rank].index
        with self._torch.cuda.device(index):
            result = job()
            self._torch.cuda.synchronize(index)
        return result

    def _failed(self, rank: int, what: str, exc: BaseException) -> TaskError:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc_type = type(exc).__qualname__
        if type(exc).__module__ not in ("builtins", "__main__"):
            exc_type = f"{type(exc).__module__}.{exc_type}"
        device = self.devices[rank]
        error = TaskError(
            f"{what} failed on {device} (rank {rank}): {exc_type}: {exc}",
            device=device,
            rank=rank,
            exc_type=exc_type,
            remote_traceback=text,
        )
        error.__cause__ = RemoteTraceback(text)
        return error

    def _where(self, index: int) -> str:
        """The torch device string of CUDA ordinal ``index``."""
        return f"cuda:{index}"

    def _is_tensor(self, value: Any) -> bool:
        return bool(self._torch.is_tensor(value))

    def scatter(self, x: npt.NDArray[Any]) -> list[Any]:
        self._check_open()
        try:
            host = self._torch.from_numpy(np.ascontiguousarray(x))
        except TypeError as exc:
            raise InvalidArgument(f"PyTorch cannot hold an array of dtype {x.dtype}: {exc}") from exc
        bounds = row_bounds(x.shape[0], len(self.devices))
        return [
            host[start:end].to(self._where(device.index))
            for device, (start, end) in zip(self.devices, bounds, strict=True)
        ]

    def map(self, fn: Callable[..., Any], args: Sequence[Any], what: str) -> list[Any]:
        def job(rank: int) -> Callable[[], Any]:
            values = [a.parts[rank] if isinstance(a, Split) else a for a in args]
            return lambda: fn(*values)

        results = self._each(what, {rank: job(rank) for rank in range(len(self.devices))})
        return [results[rank] for rank in range(len(self.devices))]

    def reduce(self, fn: Callable[[Any, Any], Any], parts: Sequence[Any], what: str) -> Any:
        acc: list[Any] = list(parts)
        stride = 1
        while stride < len(acc):
            jobs: dict[int, Callable[[], Any]] = {}
            for rank in range(0, len(acc) - stride, 2 * stride):
                jobs[rank] = self._combine(fn, acc[rank], acc[rank + stride], self.devices[rank].index)
            for rank, value in self._each(f"{what} (round of stride {stride})", jobs).items():
                acc[rank], acc[rank + stride] = value, None
            stride *= 2
        return self.host(acc[0])

    def _combine(self, fn: Callable[[Any, Any], Any], left: Any, right: Any, index: int) -> Callable[[], Any]:
        def job() -> Any:
            other = right.to(self._where(index), non_blocking=True) if self._is_tensor(right) else right
            return fn(left, other)

        return job

    def allreduce(self, parts: Sequence[Any], op: str, inplace: bool) -> list[Any]:
        torch = self._torch
        if not all(self._is_tensor(p) for p in parts):
            raise InvalidArgument("allreduce on CUDA needs every part to be a tensor")
        shape = common_shape([tuple(p.shape) for p in parts])
        dtype = parts[0].dtype
        for part in parts[1:]:
            dtype = torch.promote_types(dtype, part.dtype)
        if inplace:
            if any(p.dtype != dtype or not p.is_contiguous() for p in parts):
                raise InvalidArgument("allreduce(inplace=True) on CUDA needs contiguous tensors of one dtype")
            places = {(p.device, p.data_ptr()) for p in parts}
            if len(places) < len(parts):
                raise InvalidArgument("allreduce(inplace=True) needs parts that do not share memory")
        combine = {
            "add": torch.add,
            "maximum": torch.maximum,
            "minimum": torch.minimum,
            "multiply": torch.mul,
        }[OPS[op]]
        flats = [p.reshape(-1) for p in parts]
        numel = flats[0].numel()
        if inplace:
            outs = flats
        else:
            outs = [torch.empty(numel, dtype=dtype, device=self._where(d.index)) for d in self.devices]
        bounds = row_bounds(numel, len(parts))

        def slice_job(rank: int) -> Callable[[], None]:
            # reduce-scatter: this device reduces slice `rank` of every part; all-gather: it
            # writes the reduced slice into every device's output.
            def job() -> None:
                lo, hi = bounds[rank]
                if hi == lo:
                    return
                here = self._where(self.devices[rank].index)
                acc = flats[rank][lo:hi].to(dtype=dtype, copy=True)  # a copy: outs may be the inputs
                for other in range(len(parts)):
                    if other != rank:
                        combine(acc, flats[other][lo:hi].to(here, non_blocking=True), out=acc)
                for out in outs:
                    out[lo:hi].copy_(acc, non_blocking=True)

            return job

        self._each(f"allreduce(op={op!r})", {rank: slice_job(rank) for rank in range(len(parts))})
        for device in self.devices:
            torch.cuda.synchronize(device.index)
        return list(parts) if inplace else [out.view(shape) for out in outs]

    def host(self, part: Any) -> Any:
        self._check_open()
        if self._is_tensor(part):
            return part.detach().cpu().numpy()
        return part

    def local(self, part: Any) -> Any:
        self._check_open()
        return part

    def gather(self, parts: Sequence[Any]) -> npt.NDArray[Any]:
        self._check_open()
        torch = self._torch
        tensors = all(self._is_tensor(p) and p.dim() > 0 for p in parts)
        if tensors and len({(p.dtype, tuple(p.shape[1:])) for p in parts}) == 1:
            try:
                dtype = torch.empty(0, dtype=parts[0].dtype).numpy().dtype
            except TypeError:  # no numpy twin (bfloat16): copy part by part
                return concat([self.host(p) for p in parts])
            out = np.empty((sum(int(p.shape[0]) for p in parts), *parts[0].shape[1:]), dtype=dtype)
            start = 0
            for part in parts:
                end = start + int(part.shape[0])
                torch.from_numpy(out[start:end]).copy_(part.detach())  # device -> host, once
                start = end
            return out
        return concat([self.host(p) for p in parts])

    def stats(self) -> PoolStats:
        return PoolStats(
            calls=self._calls,
            pipe_bytes_sent=0,
            pipe_bytes_received=0,
            shm_bytes_created=0,
            workers_restarted=0,
        )

    def close(self) -> None:
        """Stop the device threads. Idempotent; tensors already handed out stay valid."""
        if self._closed:
            return
        self._closed = True
        self._threads.shutdown(wait=True)
