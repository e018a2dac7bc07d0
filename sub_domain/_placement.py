"""Choosing a node for a task: pure, indexed, best fit.

Placeable nodes (ready, not cordoned) are bucketed by ``(gpu_model, free_gpus)``; inside a bucket they
are kept sorted by free CPU. A request walks the free-GPU levels upward from what it needs (least
leftover GPUs first, so whole GPU nodes are kept for GPU work) and, inside a level, bisects to the
node with the least CPU left over that also has the memory. A placement therefore touches a few
buckets, not every node, in the common case; only a memory-bound request walks a bucket further.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from domainos.resources import Resources


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a task goes: the node and the concrete GPU indexes it gets."""

    node_id: str
    gpu_indexes: tuple[int, ...]


class PlacementIndex:
    """Placeable nodes by (GPU model, free GPUs), each bucket sorted by free CPU."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, int], list[tuple[int, str]]] = {}
        # free-GPU level -> models that have a non-empty bucket at that level
        self._levels: dict[int, set[str]] = {}
        self._sorted_levels: list[int] = []
        self._free: dict[str, Resources] = {}
        self._model: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._free)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._free

    def free(self, node_id: str) -> Resources | None:
        return self._free.get(node_id)

    def put(self, node_id: str, model: str, free: Resources) -> None:
        """Add a node, or move it after its free resources changed."""
        old = self._free.get(node_id)
        if old is not None:
            if old == free and self._model[node_id] == model:
                return
            self.remove(node_id)
        key = (model, max(free.gpus, 0))
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = []
            models = self._levels.get(key[1])
            if models is None:
                models = self._levels[key[1]] = set()
                bisect.insort(self._sorted_levels, key[1])
            models.add(model)
        bisect.insort(bucket, (free.cpu_millis, node_id))
        self._free[node_id] = free
        self._model[node_id] = model

    def remove(self, node_id: str) -> None:
        """Drop a node (no longer placeable). Unknown ids are ignored."""
        free = self._free.pop(node_id, None)
        if free is None:
            return
        model = self._model.pop(node_id)
        key = (model, max(free.gpus, 0))
        bucket = self._buckets[key]
        entry = (free.cpu_millis, node_id)
        i = bisect.bisect_left(bucket, entry)
        assert i < len(bucket) and bucket[i] == entry, f"placement index out of sync for {node_id}"
        del bucket[i]
        if not bucket:
            del self._buckets[key]
            models = self._levels[key[1]]
            models.discard(model)
            if not models:
                del self._levels[key[1]]
                j = bisect.bisect_left(self._sorted_levels, key[1])
                del self._sorted_levels[j]

    def choose(self, request: Resources) -> str | None:
        """The best-fitting node for ``request``, or None when nothing fits."""
        want_model = request.gpu_model if request.gpus > 0 else ""
        start = bisect.bisect_left(self._sorted_levels, max(request.gpus, 0))
        for level in self._sorted_levels[start:]:
            best: tuple[int, str] | None = None
            for model in self._levels[level]:
                if want_model and model != want_model:
                    continue
                found = self._first_fit(self._buckets[(model, level)], request)
                if found is not None and (best is None or found < best):
                    best = found
            if best is not None:
                return best[1]
        return None

    def _first_fit(self, bucket: list[tuple[int, str]], request: Resources) -> tuple[int, str] | None:
        # Least CPU left over first; walk on only while memory is what is missing.
        for i in range(bisect.bisect_left(bucket, (request.cpu_millis, "")), len(bucket)):
            cpu, node_id = bucket[i]
            if self._free[node_id].memory_bytes >= request.memory_bytes:
                return cpu - request.cpu_millis, node_id
        return None

    def largest(self, request: Resources) -> Resources | None:
        """The roomiest free resources among nodes relevant to ``request`` (for reason texts)."""
        want_model = request.gpu_model if request.gpus > 0 else ""
        best: Resources | None = None
        for level in reversed(self._sorted_levels):
            for model in self._levels[level]:
                if want_model and model != want_model:
                    continue
                bucket = self._buckets[(model, level)]
                cand = self._free[bucket[-1][1]]
                if best is None or (cand.gpus, cand.cpu_millis, cand.memory_bytes) > (
                    best.gpus,
                    best.cpu_millis,
                    best.memory_bytes,
                ):
                    best = cand
            if best is not None:
                return best
        return None

    def validate(self) -> None:
        """Buckets, levels and the per-node map agree."""
        count = 0
        for (model, level), bucket in self._buckets.items():
            assert bucket, f"empty bucket {(model, level)} kept"
            assert bucket == sorted(bucket), f"bucket {(model, level)} not sorted"
            assert model in self._levels.get(level, set()), f"level {level} misses model {model!r}"
            for cpu, node_id in bucket:
                free = self._free[node_id]
                assert free.cpu_millis == cpu and max(free.gpus, 0) == level, f"stale entry for {node_id}"
                assert self._model[node_id] == model
            count += len(bucket)
        assert count == len(self._free), "index entries and node map disagree"
        assert self._sorted_levels == sorted(self._levels), "level list out of sync"


def pick_gpus(free: Iterable[int], nvlink: Mapping[int, frozenset[int]], n: int) -> tuple[int, ...] | None:
    """Choose ``n`` of the ``free`` GPU indexes, preferring sets joined by NVLink.

    Greedy from every start GPU: add the free GPU with the most NVLink peers already chosen
    (lowest index on ties); keep the set with the most internal NVLink links. ``None`` when
    fewer than ``n`` are free.
    """
    pool = sorted(set(free))
    if n <= 0:
        return ()
    if n > len(pool):
        return None
    if n == len(pool):
        return tuple(pool)
    best: tuple[int, tuple[int, ...]] | None = None
    for start in pool:
        chosen = [start]
        links = 0
        rest = [g for g in pool if g != start]
        while len(chosen) < n:
            scored = [(sum(1 for c in chosen if c in nvlink.get(g, ())), -g) for g in rest]
            score, neg = max(scored)
            chosen.append(-neg)
            rest.remove(-neg)
            links += score
        cand = tuple(sorted(chosen))
        if best is None or links > best[0] or (links == best[0] and cand < best[1]):
            best = (links, cand)
    assert best is not None
    return best[1]


def reject_reason(request: Resources, largest: Resources | None, *, ready: int, registered: int) -> str:
    """Why nothing fits, in words a person can act on."""
    want = request.describe()
    if largest is None:
        if ready == 0:
            return f"no ready node has {want} free; no node is ready ({registered} registered)"
        model = f" with {request.gpu_model} GPUs" if request.gpus and request.gpu_model else ""
        return f"no ready node has {want} free; no ready node{model} ({ready} ready)"
    return f"no ready node has {want} free; largest free: {largest.describe()}"
