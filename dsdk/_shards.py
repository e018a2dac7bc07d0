"""Dataset shards on a node's local storage: ``<datasets_dir>/<dataset>/<shard>/``.

A shard is one Python object stored as pickle protocol 5 with its large buffers (numpy arrays,
``bytearray``, ``PickleBuffer``) in files of their own: ``object.pkl`` plus ``buffer-<i>``. Reading
maps those files (``mmap``), so a numpy shard is not copied into the reading process -- the page
cache serves it, and two workers on one node share it. Shards read back are read-only.

A shard appears atomically: it is written into ``.<shard>.tmp-<random>/`` and renamed into place
(the agent's scan, which looks for decimal directory names, never sees half a shard).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import re
import shutil
from collections.abc import Sequence
from typing import Any

from .errors import InvalidArgument, NotFound

OBJECT_FILE = "object.pkl"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_BUFFER_PREFIX = "buffer-"


def check_dataset_name(name: str, fld: str = "name") -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidArgument(
            f"{str(name)[:80]!r} is not a valid dataset name: 1-63 letters, digits, '-', '_' or '.'",
            field=fld,
        )
    return name


def shard_dir(base: str, dataset: str, shard: int) -> str:
    return os.path.join(base, check_dataset_name(dataset), str(int(shard)))


def write_shard(base: str, dataset: str, shard: int, obj: Any) -> int:
    """Store ``obj`` as shard ``shard`` of ``dataset`` (replacing one there); returns its size."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    views = [pb.raw() if _contiguous(pb) else memoryview(bytes(pb)) for pb in buffers]
    return _write_stored(base, dataset, shard, header, views)


def _write_stored(base: str, dataset: str, shard: int, header: bytes, buffers: Sequence[Any]) -> int:
    """Write a shard's stored form into a fresh directory, then rename it into place (replacing
    an older one): readers and the agent's scan see the whole shard or none of it."""
    ds_dir = os.path.join(base, check_dataset_name(dataset))
    os.makedirs(ds_dir, exist_ok=True)
    tmp = os.path.join(ds_dir, f".{int(shard)}.tmp-{os.urandom(6).hex()}")
    os.mkdir(tmp)
    try:
        with open(os.path.join(tmp, OBJECT_FILE), "wb") as f:
            f.write(header)
        size = len(header)
        for i, buf in enumerate(buffers):
            with open(os.path.join(tmp, f"{_BUFFER_PREFIX}{i}"), "wb") as f:
                f.write(buf)
            size += memoryview(buf).nbytes
        final = os.path.join(ds_dir, str(int(shard)))
        if os.path.isdir(final):
            old = f"{final}.old-{os.urandom(6).hex()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return size
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _contiguous(pb: pickle.PickleBuffer) -> bool:
    try:
        pb.raw()
    except BufferError:
        return False
    return True


def read_shard(base: str, dataset: str, shard: int) -> Any:
    """The object stored as shard ``shard`` of ``dataset`` (its buffers mapped, read-only)."""
    path = shard_dir(base, dataset, shard)
    try:
        with open(os.path.join(path, OBJECT_FILE), "rb") as f:
            header = f.read()
    except FileNotFoundError:
        raise NotFound(f"shard {shard} of dataset {dataset} is not on this node", field="shard") from None
    buffers: list[Any] = []
    i = 0
    while True:
        name = os.path.join(path, f"{_BUFFER_PREFIX}{i}")
        try:
            fd = os.open(name, os.O_RDONLY)
        except FileNotFoundError:
            break
        try:
            length = os.fstat(fd).st_size
            buffers.append(mmap.mmap(fd, length, access=mmap.ACCESS_READ) if length else b"")
        finally:
            os.close(fd)
        i += 1
    return pickle.loads(header, buffers=buffers)


def read_shard_bytes(base: str, dataset: str, shard: int) -> tuple[bytes, list[bytes]]:
    """The stored form of a shard (for copying it to another node as it is)."""
    path = shard_dir(base, dataset, shard)
    try:
        with open(os.path.join(path, OBJECT_FILE), "rb") as f:
            header = f.read()
    except FileNotFoundError:
        raise NotFound(f"shard {shard} of dataset {dataset} is not on this node", field="shard") from None
    buffers: list[bytes] = []
    i = 0
    while os.path.exists(os.path.join(path, f"{_BUFFER_PREFIX}{i}")):
        with open(os.path.join(path, f"{_BUFFER_PREFIX}{i}"), "rb") as f:
            buffers.append(f.read())
        i += 1
    return header, buffers


def write_shard_bytes(base: str, dataset: str, shard: int, header: bytes, buffers: list[Any]) -> int:
    """Store a shard given in its stored form (see :func:`read_shard_bytes`)."""
    return _write_stored(base, dataset, shard, header, buffers)


def local_shards(base: str, dataset: str) -> dict[int, int]:
    """Shard number -> stored size of every shard of ``dataset`` on this node (complete ones)."""
    ds_dir = os.path.join(base, check_dataset_name(dataset))
    out: dict[int, int] = {}
    try:
        names = os.listdir(ds_dir)
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return out
    for name in names:
        if not name.isdigit():
            continue
        path = os.path.join(ds_dir, name)
        if not os.path.exists(os.path.join(path, OBJECT_FILE)):
            continue
        size = 0
        with contextlib.suppress(OSError), os.scandir(path) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    size += entry.stat(follow_symlinks=False).st_size
        out[int(name)] = size
    return out


def delete_dataset(base: str, dataset: str) -> int:
    """Remove every shard of ``dataset`` on this node; returns how many there were."""
    ds_dir = os.path.join(base, check_dataset_name(dataset))
    n = len(local_shards(base, dataset))
    shutil.rmtree(ds_dir, ignore_errors=True)
    return n
