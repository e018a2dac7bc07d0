"""Which dataset shards this node holds: declared in the config, plus found on local storage.

A shard on disk is a directory ``<data_dir>/datasets/<name>/<shard>/`` (``shard`` a decimal
integer); its size is the apparent size of the files under it. The walk is capped
(:data:`MAX_WALK_ENTRIES` directory entries per scan, all shards together): past the cap the
remaining shards are still listed, with the size counted so far, so a huge tree costs a bounded
amount of I/O per full-report interval. Symbolic links are followed for the ``<name>`` and
``<shard>`` directories themselves (datasets often live on another volume) but never inside a
shard (no loops, no double counting).

Calls here block (they read directories); the agent runs them in a worker thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from domainos.model import DATASET_NAME_RE, MAX_NODE_DATASET_SHARDS, DatasetShard

log = logging.getLogger(__name__)

#: Directory entries one scan looks at, at most (every shard of every dataset together).
MAX_WALK_ENTRIES = 200_000
DATASETS_DIR = "datasets"


def _shard_number(name: str) -> int | None:
    if not name.isdigit() or len(name) > 9:  # int32 on the wire
        return None
    return int(name)


def _du(path: str, budget: list[int]) -> int:
    """Apparent size of the files under ``path`` (not following links), spending ``budget[0]``."""
    total = 0
    stack = [path]
    while stack and budget[0] > 0:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    budget[0] -= 1
                    if budget[0] <= 0:
                        break
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError as exc:
            log.debug("cannot read %s: %s", current, exc)
    return total


def discover(
    data_dir: str | os.PathLike[str], *, max_entries: int = MAX_WALK_ENTRIES
) -> dict[tuple[str, int], int]:
    """``(dataset, shard) -> size`` of every shard directory under ``<data_dir>/datasets``.

    Directories whose names are not a valid dataset name or shard number are skipped.
    """
    root = Path(data_dir) / DATASETS_DIR
    found: dict[tuple[str, int], int] = {}
    budget = [max_entries]
    try:
        names = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return found  # no data directory (yet): nothing held
    for ds in names:
        if not DATASET_NAME_RE.fullmatch(ds.name) or not ds.is_dir():
            continue
        try:
            shards = sorted(os.scandir(ds.path), key=lambda e: e.name)
        except OSError as exc:
            log.debug("cannot read %s: %s", ds.path, exc)
            continue
        for sh in shards:
            number = _shard_number(sh.name)
            if number is None or not sh.is_dir():
                continue
            found[(ds.name, number)] = _du(sh.path, budget) if budget[0] > 0 else 0
    if budget[0] <= 0:
        log.info(
            "dataset scan of %s stopped counting sizes after %d entries: sizes are lower bounds",
            root,
            max_entries,
        )
    return found


def node_datasets(
    declared: Mapping[str, Iterable[int]],
    data_dir: str | os.PathLike[str] | None,
    *,
    max_entries: int = MAX_WALK_ENTRIES,
) -> tuple[DatasetShard, ...]:
    """Declared shards plus the ones found on disk, sorted by (dataset, shard).

    A declared shard that is also on disk gets its size from the disk (else 0). At most
    :data:`~domainos.model.MAX_NODE_DATASET_SHARDS` are kept (the first in order; a warning says so).
    """
    found = discover(data_dir, max_entries=max_entries) if data_dir else {}
    held = dict(found)
    for name, shards in declared.items():
        for shard in shards:
            held.setdefault((name, int(shard)), 0)
    out = tuple(DatasetShard(name, shard, size) for (name, shard), size in sorted(held.items()))
    if len(out) > MAX_NODE_DATASET_SHARDS:
        log.warning(
            "the node holds %d dataset shards; only the first %d are reported",
            len(out),
            MAX_NODE_DATASET_SHARDS,
        )
        out = out[:MAX_NODE_DATASET_SHARDS]
    return out
