"""POSIX shared-memory segments as the CPU backend uses them: create, map, unlink, account.

Segments are created with :class:`multiprocessing.shared_memory.SharedMemory` (its naming, its
``O_EXCL`` creation and its registration with the resource tracker), but mapped here with
:mod:`mmap` directly: numpy views are built on the ``mmap`` object, so a mapping lives exactly as
long as some array still uses it and nothing ever has to "close" it while views exist
(``SharedMemory.close()`` raises ``BufferError`` then, and its ``__del__`` prints it).

Ownership and the resource tracker: every process of a pool (spawned workers included) talks to
the parent's one resource tracker, which keeps a *set* of registered names. A segment is
registered once by whoever created it; only the pool's parent ever unlinks, and it sends
REGISTER then UNREGISTER for the name: the set ends without it whether or not the creator got to
register (a worker killed mid-creation), so the tracker neither warns about leaks at exit nor
fails on an unknown name.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
from collections.abc import Iterable
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

#: Where glibc's ``shm_open`` keeps segments on Linux.
SHM_DIR = "/dev/shm"
_RTYPE = "shared_memory"
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # the Linux value; 3.11 lacks the name
_POPULATE_MIN_BYTES = 1 << 20


def create(name: str, size: int, *, fill: bool = True) -> mmap.mmap:
    """Create segment ``name`` of ``size`` bytes (at least 1) and map it read-write.

    ``fill``: the caller is about to write all of it, so its pages are populated now (see
    :func:`populate`).
    """
    segment = SharedMemory(name=name, create=True, size=max(size, 1))
    segment.close()  # no view of segment.buf exists yet, so this cannot fail; we map it ourselves
    mm = attach(name)
    if fill:
        populate(mm, 0, len(mm))
    return mm


def populate(mm: mmap.mmap, start: int, length: int) -> None:
    """Fault in ``[start, start + length)`` of a mapping for writing, in one system call.

    tmpfs gets no transparent huge pages here (private numpy memory does), so touching a fresh
    segment page by page costs a fault per 4 KiB: about 2.5x the time of the copy itself.
    ``MADV_POPULATE_WRITE`` (Linux 5.14+) does the same work without the traps; elsewhere it is
    skipped.
    """
    if length < _POPULATE_MIN_BYTES:
        return
    first = start - start % mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(_MADV_POPULATE_WRITE, first, min(len(mm), start + length) - first)


def attach(name: str) -> mmap.mmap:
    """Map the existing segment ``name`` read-write (no resource-tracker traffic)."""
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def remove(name: str) -> bool:
    """Unlink segment ``name``; False if it was already gone. Mappings stay valid until dropped."""
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        return False
    return True


def forget(names: Iterable[str]) -> None:
    """Tell the resource tracker that these (unlinked) segments need no cleanup at exit."""
    for name in names:
        resource_tracker.register("/" + name, _RTYPE)
        resource_tracker.unregister("/" + name, _RTYPE)


def existing(prefix: str) -> list[str]:
    """Names of the segments that start with ``prefix``."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    return []


def address(mm: mmap.mmap) -> int:
    """Start address of a mapping in this process."""
    return ctypes.addressof(ctypes.c_char.from_buffer(mm))
