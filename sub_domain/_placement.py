"""Choosing a node for a task: pure, indexed, best fit.

Placeable nodes (ready, not cordoned) are bucketed by ``(gpu_model, free_gpus, free_nvlink)``
(``free_nvlink``: most free whole GPUs inside one NVLink domain of the node); inside a bucket they
are kept sorted by free CPU. A request walks the free-GPU levels upward from what it needs (least
leftover GPUs first, so whole GPU nodes are kept for GPU work) and, inside a level, bisects to the
node with the least CPU left over that also has the memory. A placement therefore touches a few
buckets, not every node, in the common case; only a memory-bound request walks a bucket further.

Constraints and what they cost:

* GPU model and ``exclude_gpu_models`` filter whole buckets (a bucket has one model): free.
* ``one_nvlink_domain`` skips buckets whose ``free_nvlink`` is below the request: free.
* A node-level predicate (labels of ``node_selector``, membership of a preferred block) makes the
  walk inside a bucket skip nodes that fail it: that *filtered walk* may look at every node of the
  buckets it visits (O(nodes) in the worst case, when almost no node passes). The registry avoids
  it when it can by scanning a small candidate set exactly instead (see ``NodeRegistry.place``).
* Fractional GPUs (shares) use a second index: partly used cards, per model, sorted by free
  percent; a share goes on the fullest card it fits (bisect, then a walk while memory, the node's
  CPU/memory or the predicate is what is missing), else takes a whole free card through the
  first index.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from domainos.model import PlacementConstraints
from domainos.resources import Resources

_Key = tuple[str, int, int]  # (gpu model, free whole GPUs, most free GPUs in one NVLink domain)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a task goes: the node and the concrete GPU indexes it gets.

    ``note`` says how a soft preference was resolved when that matters to people (e.g. the
    locality wait ran out and the task went to a node without its shard); "" otherwise.
    """

    node_id: str
    gpu_indexes: tuple[int, ...]
    note: str = ""


#: What a task without constraints asks for (the shared model type: the master builds it from the
#: job spec, the sub-domain reads it from the TaskSpec).
NO_CONSTRAINTS = PlacementConstraints()


@dataclass(frozen=True, slots=True)
class CardRoom:
    """What is left on one partly used (shared) GPU card."""

    card: int
    free_percent: int
    free_memory: int
    #: The card's memory (0 = unknown: then only percent is accounted).
    card_memory: int


def share_memory(request: Resources, card_memory: int) -> int:
    """The GPU memory a share takes on a card: asked explicitly, else the same fraction of it."""
    if request.gpu_share_memory:
        return request.gpu_share_memory
    return card_memory * request.gpu_share // 100


def share_fits(request: Resources, room: CardRoom) -> bool:
    """A share fits a card: percent within what is left, memory too (unknown memory: asked none)."""
    if request.gpu_share > room.free_percent:
        return False
    if room.card_memory == 0:
        return request.gpu_share_memory == 0
    return share_memory(request, room.card_memory) <= room.free_memory


NodeOk = Callable[[str], bool]
ModelOk = Callable[[str], bool]


def _any(_: str) -> bool:
    return True


class PlacementIndex:
    """Placeable nodes by (GPU model, free GPUs, free NVLink GPUs), each bucket sorted by free CPU;
    plus partly used GPU cards by model, sorted by free percent."""

    def __init__(self) -> None:
        self._buckets: dict[_Key, list[tuple[int, str]]] = {}
        # free-GPU level -> (model, free_nvlink) pairs that have a non-empty bucket at that level
        self._levels: dict[int, set[tuple[str, int]]] = {}
        self._sorted_levels: list[int] = []
        self._free: dict[str, Resources] = {}
        self._key: dict[str, _Key] = {}
        # shares: model -> sorted (free percent, free memory, node id, card, card memory)
        self._cards: dict[str, list[tuple[int, int, str, int, int]]] = {}
        self._node_cards: dict[str, tuple[tuple[int, int, str, int, int], ...]] = {}

    def __len__(self) -> int:
        return len(self._free)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._free

    def free(self, node_id: str) -> Resources | None:
        return self._free.get(node_id)

    def put(
        self,
        node_id: str,
        model: str,
        free: Resources,
        free_nvlink: int | None = None,
        cards: Sequence[CardRoom] = (),
    ) -> None:
        """Add a node, or move it after its free resources changed.

        ``free_nvlink`` defaults to ``free.gpus`` (every free GPU in one domain); ``cards`` are the
        node's partly used cards with room left.
        """
        level = max(free.gpus, 0)
        nvl = level if free_nvlink is None else max(0, min(free_nvlink, level))
        key = (model, level, nvl)
        card_entries = tuple(
            sorted((c.free_percent, c.free_memory, node_id, c.card, c.card_memory) for c in cards)
        )
        old = self._free.get(node_id)
        if old is not None:
            if (
                old == free
                and self._key[node_id] == key
                and self._node_cards.get(node_id, ()) == card_entries
            ):
                return
            self.remove(node_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = []
            pairs = self._levels.get(level)
            if pairs is None:
                pairs = self._levels[level] = set()
                bisect.insort(self._sorted_levels, level)
            pairs.add((model, nvl))
        bisect.insort(bucket, (free.cpu_millis, node_id))
        self._free[node_id] = free
        self._key[node_id] = key
        if card_entries:
            self._node_cards[node_id] = card_entries
            lst = self._cards.setdefault(model, [])
            for e in card_entries:
                bisect.insort(lst, e)

    def remove(self, node_id: str) -> None:
        """Drop a node (no longer placeable). Unknown ids are ignored."""
        free = self._free.pop(node_id, None)
        if free is None:
            return
        key = self._key.pop(node_id)
        model, level, nvl = key
        bucket = self._buckets[key]
        entry = (free.cpu_millis, node_id)
        i = bisect.bisect_left(bucket, entry)
        assert i < len(bucket) and bucket[i] == entry, f"placement index out of sync for {node_id}"
        del bucket[i]
        if not bucket:
            del self._buckets[key]
            pairs = self._levels[level]
            pairs.discard((model, nvl))
            if not pairs:
                del self._levels[level]
                j = bisect.bisect_left(self._sorted_levels, level)
                del self._sorted_levels[j]
        for e in self._node_cards.pop(node_id, ()):
            lst = self._cards[model]
            k = bisect.bisect_left(lst, e)
            assert k < len(lst) and lst[k] == e, f"card index out of sync for {node_id}"
            del lst[k]
            if not lst:
                del self._cards[model]

    # -- whole GPUs and CPU-only --------------------------------------------------------------------

    def choose(
        self,
        request: Resources,
        *,
        model_ok: ModelOk | None = None,
        nvlink: bool = False,
        node_ok: NodeOk = _any,
    ) -> str | None:
        """The best-fitting node for ``request`` (whole GPUs or none), or None when nothing fits.

        ``model_ok`` (default: the request's ``gpu_model`` when it asks for GPUs) filters buckets;
        ``nvlink`` asks for every requested GPU in one NVLink domain; ``node_ok`` filters nodes
        (a filtered walk: see the module docstring).
        """
        want = max(request.gpus, 0)
        if model_ok is None:
            want_model = request.gpu_model if want > 0 else ""
            model_ok = (lambda m: m == want_model) if want_model else _any
        start = bisect.bisect_left(self._sorted_levels, want)
        for level in self._sorted_levels[start:]:
            best: tuple[int, str] | None = None
            for model, nvl in self._levels[level]:
                if want > 0 and not model_ok(model):
                    continue
                if nvlink and nvl < want:
                    continue
                found = self._first_fit(self._buckets[(model, level, nvl)], request, node_ok)
                if found is not None and (best is None or found < best):
                    best = found
            if best is not None:
                return best[1]
        return None

    def _first_fit(
        self, bucket: list[tuple[int, str]], request: Resources, node_ok: NodeOk
    ) -> tuple[int, str] | None:
        # Least CPU left over first; walk on only while memory (or the predicate) is what is missing.
        for i in range(bisect.bisect_left(bucket, (request.cpu_millis, "")), len(bucket)):
            cpu, node_id = bucket[i]
            if self._free[node_id].memory_bytes >= request.memory_bytes and node_ok(node_id):
                return cpu - request.cpu_millis, node_id
        return None

    # -- shares -----------------------------------------------------------------------------------

    def choose_card(
        self, request: Resources, *, model_ok: ModelOk, node_ok: NodeOk = _any
    ) -> tuple[str, int] | None:
        """The fullest partly used card the share fits on, on a node with the CPU/memory: (node, card)."""
        best: tuple[int, int, str, int] | None = None
        for model, lst in self._cards.items():
            if not model_ok(model):
                continue
            for free_pct, free_mem, node_id, card, card_mem in lst[
                bisect.bisect_left(lst, (request.gpu_share, -1, "", -1, -1)) :
            ]:
                if best is not None and free_pct > best[0]:
                    break
                room = CardRoom(card, free_pct, free_mem, card_mem)
                f = self._free[node_id]
                if (
                    share_fits(request, room)
                    and f.cpu_millis >= request.cpu_millis
                    and f.memory_bytes >= request.memory_bytes
                    and node_ok(node_id)
                ):
                    cand = (free_pct, free_mem, node_id, card)
                    if best is None or cand < best:
                        best = cand
                    break
        return None if best is None else (best[2], best[3])

    def fullest_card_room(self, model_ok: ModelOk) -> tuple[str, CardRoom] | None:
        """The partly used card with the most room left among allowed models (for reason texts)."""
        best: tuple[int, int, str, int, int] | None = None
        for model, lst in self._cards.items():
            if model_ok(model) and lst and (best is None or lst[-1][:2] > best[:2]):
                best = lst[-1]
        if best is None:
            return None
        return best[2], CardRoom(best[3], best[0], best[1], best[4])

    # -- reason texts -----------------------------------------------------------------------------

    def largest(self, request: Resources, model_ok: ModelOk | None = None) -> Resources | None:
        """The roomiest free resources among nodes relevant to ``request`` (for reason texts)."""
        if model_ok is None:
            want_model = request.gpu_model if request.gpus > 0 else ""
            model_ok = (lambda m: m == want_model) if want_model else _any
        best: Resources | None = None
        for level in reversed(self._sorted_levels):
            for model, nvl in self._levels[level]:
                if request.gpus > 0 and not model_ok(model):
                    continue
                bucket = self._buckets[(model, level, nvl)]
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

    def best_nvlink(self, model_ok: ModelOk) -> tuple[int, str] | None:
        """Most free GPUs in one NVLink domain among allowed models, and a node that has them."""
        best: tuple[int, str] | None = None
        for (model, _level, nvl), bucket in self._buckets.items():
            if model and model_ok(model) and (best is None or nvl > best[0]):
                best = (nvl, bucket[0][1])
        return best

    def has_model(self, model_ok: ModelOk) -> bool:
        """Some placeable node has GPUs of an allowed model (free or not)."""
        return any(model and model_ok(model) for model, _, _ in self._buckets)

    def validate(self) -> None:
        """Buckets, levels, cards and the per-node maps agree."""
        count = 0
        for (model, level, nvl), bucket in self._buckets.items():
            assert bucket, f"empty bucket {(model, level, nvl)} kept"
            assert bucket == sorted(bucket), f"bucket {(model, level, nvl)} not sorted"
            assert (model, nvl) in self._levels.get(level, set()), f"level {level} misses {(model, nvl)}"
            assert nvl <= level, f"bucket {(model, level, nvl)}: more NVLink GPUs than free GPUs"
            for cpu, node_id in bucket:
                free = self._free[node_id]
                assert free.cpu_millis == cpu and max(free.gpus, 0) == level, f"stale entry for {node_id}"
                assert self._key[node_id] == (model, level, nvl)
            count += len(bucket)
        assert count == len(self._free) == len(self._key), "index entries and node map disagree"
        assert self._sorted_levels == sorted(self._levels), "level list out of sync"
        cards = 0
        for model, lst in self._cards.items():
            assert lst and lst == sorted(lst), f"card list of {model!r} empty or unsorted"
            for e in lst:
                assert e in self._node_cards.get(e[2], ()), f"card entry {e} not owned"
                assert self._key[e[2]][0] == model
            cards += len(lst)
        assert cards == sum(len(v) for v in self._node_cards.values()), "card index out of sync"


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


def pick_gpus_in_domain(
    free: Iterable[int], domain_of: Mapping[int, int], nvlink: Mapping[int, frozenset[int]], n: int
) -> tuple[int, ...] | None:
    """``n`` free GPUs all inside one NVLink domain: the domain with the fewest free GPUs that
    still has ``n`` (best fit, keeping big domains whole), lowest domain on ties."""
    by_domain: dict[int, list[int]] = {}
    for g in free:
        by_domain.setdefault(domain_of.get(g, g), []).append(g)
    fits = sorted((len(gs), d) for d, gs in by_domain.items() if len(gs) >= n)
    if not fits:
        return None
    return pick_gpus(by_domain[fits[0][1]], nvlink, n)


def reject_reason(request: Resources, largest: Resources | None, *, ready: int, registered: int) -> str:
    """Why nothing fits, in words a person can act on."""
    want = request.describe()
    if largest is None:
        if ready == 0:
            return f"no ready node has {want} free; no node is ready ({registered} registered)"
        model = f" with {request.gpu_model} GPUs" if request.gpus and request.gpu_model else ""
        return f"no ready node has {want} free; no ready node{model} ({ready} ready)"
    return f"no ready node has {want} free; largest free: {largest.describe()}"
