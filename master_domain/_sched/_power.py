"""Region power budgets: what a placement draws, whether a region can take it, where to spill.

Units: budgets in kW (as the topology file declares them, ``power_budget_kw``), every draw and
charge in watts (whole watts, so sums are exact and a release restores a region exactly).

**Draw of a placement** (:class:`PowerModel`)::

    draw_w = Σ_models tdp_w(model) × gpus(model) + nodes × node_baseline_w

``tdp_w`` is a table by GPU model (board power, e.g. H100 SXM 700 W, A100 SXM 400 W, unknown 500 W);
a model name matches the longest table key whose words it contains, ignoring case, spaces, ``-``
and ``_`` (``NVIDIA H100 80GB HBM3`` → ``H100``, ``NVIDIA A100 80GB PCIe`` → ``A100 PCIe``). ``node_baseline_w`` (CPUs,
memory, NICs, fans; off by default) is charged per node a placement occupies.

**A region's draw in use** (:class:`PowerBook`)::

    in_use_w(region) = max(charged_w, measured_w + unmetered_w)

``charged_w`` is the sum of the charges (estimates) of the placements there, by allocation id;
``measured_w`` the sum of the draws its sub-domains last reported in their summaries
(``power_draw_w``); ``unmetered_w`` the charges those summaries cannot show yet. A charge is
*unmetered* until its sub-domain has sent two summaries after it (the first may predate the tasks'
start); a charge made with no sub-domain is metered by any two summaries of its region. So the
estimate covers what the meters have not seen, the meters cover what draws more than its estimate
(and load this master did not place), and a placement made between two summaries is never hidden
under a larger measured figure.

**Admission**: ``in_use_w + added_w <= budget_w`` fits (:class:`Fits`); otherwise the placement is
:class:`Over` with the numbers (``region east: 1,960 kW in use + 448 kW asked > budget 2,000 kW``).
:meth:`PowerBook.charge` admits by the same rule, so charges made through it never push a region's
charged draw past its budget (``force=True`` records a placement that already runs, e.g. after a
master restart, whatever the budget says). A budget of ``math.inf`` is no cap.

**Spill and split**: :meth:`PowerBook.spill` picks the first region, in the caller's preference
order, with room for the whole demand. :meth:`PowerBook.split_by_power` spreads a data-parallel job's
replicas over regions in preference order, each taking as many as its headroom holds
(``floor(headroom_w / replica_w)``), all or nothing — so the job spans as few regions as the power
allows (fewest cross-region links; whether the split is acceptable is the loss model's call).

Cost: every call is O(1) or O(regions), never O(nodes) or O(allocations).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from domainos.errors import InvalidArgument, NotFound
from domainos.resources import Resources
from domainos.topology import Region

#: Board power (W) by GPU model. A key matches a model name that contains each of its words
#: (case, spaces, '-' and '_' ignored); the longest matching key wins.
DEFAULT_TDP_W: Mapping[str, int] = MappingProxyType(
    {
        "B200": 1000,
        "B100": 700,
        "GB200": 1200,
        "H200": 700,
        "H100": 700,
        "H100 PCIe": 350,
        "H100 NVL": 400,
        "H800": 700,
        "H20": 400,
        "A100": 400,
        "A100 PCIe": 250,
        "A800": 400,
        "A40": 300,
        "A30": 165,
        "A10": 150,
        "L40S": 350,
        "L40": 300,
        "L4": 72,
        "V100": 300,
        "T4": 70,
        "MI300X": 750,
        "MI250X": 560,
        "MI210": 300,
        "GAUDI2": 600,
        "GAUDI3": 900,
    }
)
#: Board power assumed for a model the table does not know (W).
UNKNOWN_GPU_W = 500

_SEP = re.compile(r"[\s\-_]+")


def _norm(model: str) -> str:
    return _SEP.sub("", model).upper()


def format_kw(watts: float) -> str:
    """Watts as kW for people: ``1,960``, ``448``, ``5.6``, ``0.07`` (no unit)."""
    if math.isinf(watts):
        return "unlimited"
    return f"{watts / 1000:,.2f}".rstrip("0").rstrip(".")


def _watts(value: float, fld: str) -> int:
    """A draw in watts, validated and rounded up to whole watts."""
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgument(f"must be a finite number of watts >= 0, got {value}", field=fld)
    return math.ceil(value)


@dataclass(frozen=True, slots=True)
class PowerModel:
    """Estimated draw of placements: GPU board power × count, plus an optional per-node baseline.

    ``tdp_w``: watts by GPU model key; ``unknown_gpu_w``: watts of a model not in the table;
    ``node_baseline_w``: watts per node a placement occupies (0 = not counted).
    """

    tdp_w: Mapping[str, int] = field(default_factory=lambda: DEFAULT_TDP_W)
    unknown_gpu_w: int = UNKNOWN_GPU_W
    node_baseline_w: int = 0
    _keys: tuple[tuple[tuple[str, ...], int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for model, w in self.tdp_w.items():
            if not model or not (isinstance(w, int) and w >= 0):
                raise InvalidArgument(
                    f"needs a model name and watts >= 0, got {model!r}: {w!r}", field="tdp_w"
                )
        for name in ("unknown_gpu_w", "node_baseline_w"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"must be >= 0, got {getattr(self, name)}", field=name)
        # Longest key first, so "H100 PCIe" wins over "H100" and "A100" over "A10".
        keys = [(tuple(t for t in _SEP.split(k.upper()) if t), w) for k, w in self.tdp_w.items()]
        keys.sort(key=lambda kw: -sum(map(len, kw[0])))
        object.__setattr__(self, "_keys", tuple(keys))

    def tdp(self, model: str) -> int:
        """Board power of one GPU of ``model`` (W): the longest table key whose words it contains."""
        name = _norm(model)
        if name:
            for words, w in self._keys:
                if words and all(word in name for word in words):
                    return w
        return self.unknown_gpu_w

    def draw_w(self, gpus_by_model: Mapping[str, int], nodes: float = 0) -> int:
        """``Σ tdp(model) × count + nodes × node_baseline_w`` in watts."""
        total = 0.0
        for model, count in gpus_by_model.items():
            if count < 0:
                raise InvalidArgument(f"must be >= 0, got {count}", field=f"gpus_by_model[{model!r}]")
            total += self.tdp(model) * count
        if nodes < 0:
            raise InvalidArgument(f"must be >= 0, got {nodes}", field="nodes")
        return math.ceil(total + nodes * self.node_baseline_w)

    def task_w(self, request: Resources, nodes: float = 0) -> int:
        """Draw of one task of ``request`` (its GPUs; ``nodes``: the share of nodes it occupies)."""
        return self.draw_w({request.gpu_model: request.gpus} if request.gpus else {}, nodes)


@dataclass(frozen=True, slots=True)
class RegionPower:
    """A region's power budget in kW (``math.inf``: no cap)."""

    region: str
    budget_kw: float

    def __post_init__(self) -> None:
        if not self.region:
            raise InvalidArgument("a region needs a name", field="region")
        if math.isnan(self.budget_kw) or self.budget_kw < 0:
            raise InvalidArgument(f"must be >= 0 kW, got {self.budget_kw}", field="budget_kw")

    @classmethod
    def from_topology(cls, region: Region) -> RegionPower:
        """From the topology file, where ``power_budget_kw: 0`` (the default) means not declared: no cap."""
        return cls(region.name, region.power_budget_kw if region.power_budget_kw > 0 else math.inf)

    @property
    def budget_w(self) -> float:
        return self.budget_kw * 1000


@dataclass(frozen=True, slots=True)
class Fits:
    """The region can take ``added_w`` more (all in watts)."""

    region: str
    in_use_w: int
    added_w: int
    budget_w: float

    @property
    def headroom_w(self) -> float:
        """What is left after adding this placement."""
        return self.budget_w - self.in_use_w - self.added_w


@dataclass(frozen=True, slots=True)
class Over:
    """The placement would push the region(s) past the budget; ``reason`` says by how much."""

    region: str
    reason: str
    in_use_w: int = 0
    added_w: int = 0
    budget_w: float = 0.0


@dataclass(frozen=True, slots=True)
class Split:
    """Replicas per region (``parts``: ``(region, replicas)`` in preference order), ``replica_w`` each."""

    parts: tuple[tuple[str, int], ...]
    replica_w: int
    reason: str

    @property
    def replicas(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def total_w(self) -> int:
        return self.replicas * self.replica_w


@dataclass(frozen=True, slots=True)
class _Charge:
    region: str
    subdomain: str
    watts: int
    forced: bool
    #: The generation of its meter, ``(region, subdomain)``, when it was charged.
    gen: int


class PowerBook:
    """Power in use per region against its budget; charges by allocation id (idempotent).

    Pure: no I/O and no clock. Feed it the regions, each sub-domain's measured draw from its
    summaries (:meth:`observe`), and a charge per placement (:meth:`charge` / :meth:`release`).
    """

    def __init__(self, regions: Iterable[RegionPower], model: PowerModel | None = None) -> None:
        self.model = model if model is not None else PowerModel()
        self._budget_w: dict[str, float] = {}
        self._charged: dict[str, int] = {}
        self._measured: dict[str, dict[str, int]] = {}
        self._measured_total: dict[str, int] = {}
        self._unmetered: dict[str, int] = {}
        for r in regions:
            if r.region in self._budget_w:
                raise InvalidArgument(f"region {r.region!r} is listed twice", field="regions")
            self._add_region(r)
        self._charges: dict[str, _Charge] = {}
        # Meters: each observation of a sub-domain bumps its generation (and its region's, key
        # ""); unmetered charges are summed per meter by the generation they were made in.
        self._gen: dict[tuple[str, str], int] = defaultdict(int)
        self._fresh: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
        # Where the charged draw may exceed the budget: forced charges or a lowered budget.
        self._relaxed: set[str] = set()

    def _add_region(self, r: RegionPower) -> None:
        self._budget_w[r.region] = r.budget_w
        self._charged[r.region] = 0
        self._measured[r.region] = {}
        self._measured_total[r.region] = 0
        self._unmetered[r.region] = 0

    # -- reads -------------------------------------------------------------------------------

    def regions(self) -> list[str]:
        return list(self._budget_w)

    def _known(self, region: str) -> None:
        if region not in self._budget_w:
            raise NotFound(f"region {region!r} has no power budget (known: {', '.join(self._budget_w)})")

    def budget_w(self, region: str) -> float:
        self._known(region)
        return self._budget_w[region]

    def charged_w(self, region: str) -> int:
        """Sum of the charges (estimates) in the region (W)."""
        self._known(region)
        return self._charged[region]

    def measured_w(self, region: str) -> int:
        """Sum of the sub-domains' last measured draws (W)."""
        self._known(region)
        return self._measured_total[region]

    def unmetered_w(self, region: str) -> int:
        """Charges the summaries cannot show yet (W)."""
        self._known(region)
        return self._unmetered[region]

    def in_use_w(self, region: str) -> int:
        """``max(charged, measured + unmetered)`` in watts."""
        self._known(region)
        return max(self._charged[region], self._measured_total[region] + self._unmetered[region])

    def headroom_w(self, region: str) -> float:
        """``budget − in use`` in watts (0 when over; ``inf`` when uncapped)."""
        return max(0.0, self.budget_w(region) - self.in_use_w(region))

    def charge_of(self, allocation_id: str) -> tuple[str, int] | None:
        """``(region, watts)`` charged for the allocation, or None."""
        c = self._charges.get(allocation_id)
        return (c.region, c.watts) if c is not None else None

    def describe(self, region: str) -> str:
        """E.g. ``region east: 1,960 kW in use (charged 1,900 kW, measured 1,960 kW) of 2,000 kW``."""
        unmetered = self.unmetered_w(region)
        return (
            f"region {region}: {format_kw(self.in_use_w(region))} kW in use (charged "
            f"{format_kw(self._charged[region])} kW, measured {format_kw(self._measured_total[region])} kW"
            + (f" + {format_kw(unmetered)} kW not yet metered" if unmetered else "")
            + f") of {format_kw(self._budget_w[region])} kW"
        )

    # -- decisions ---------------------------------------------------------------------------

    def check(self, region: str, added_w: float) -> Fits | Over:
        """Would ``added_w`` more watts fit under the region's budget?"""
        added = _watts(added_w, "added_w")
        if region not in self._budget_w:
            return Over(region, f"region {region} has no power budget declared", 0, added, 0.0)
        return self._check(region, added, self._charged[region], self._unmetered[region])

    def _check(self, region: str, added: int, charged: int, unmetered: int) -> Fits | Over:
        measured = self._measured_total[region]
        in_use = max(charged, measured + unmetered)
        budget = self._budget_w[region]
        if in_use + added <= budget:
            return Fits(region, in_use, added, budget)
        reason = (
            f"region {region}: {format_kw(in_use)} kW in use + {format_kw(added)} kW asked "
            f"> budget {format_kw(budget)} kW"
        )
        if measured + unmetered > charged:
            reason += (
                f" (measured {format_kw(measured)} kW"
                + (f" + {format_kw(unmetered)} kW placed since the last summaries" if unmetered else "")
                + f"; placements charge {format_kw(charged)} kW)"
            )
        return Over(region, reason, in_use, added, budget)

    def spill(self, demand_w: float, regions: Sequence[str]) -> str | None:
        """The first region in ``regions`` (preference order) where ``demand_w`` fits, or None."""
        for region in regions:
            if isinstance(self.check(region, demand_w), Fits):
                return region
        return None

    def why_not(self, demand_w: float, regions: Sequence[str]) -> list[str]:
        """The reasons ``demand_w`` fits in none of ``regions`` (empty when one fits)."""
        out: list[str] = []
        for region in regions:
            result = self.check(region, demand_w)
            if isinstance(result, Fits):
                return []
            out.append(result.reason)
        return out

    def split_by_power(
        self, replica_w: float, replicas: int, regions: Sequence[str], *, max_regions: int | None = None
    ) -> Split | Over:
        """Spread ``replicas`` of ``replica_w`` watts each over ``regions`` by power headroom.

        Greedy in preference order: each region takes ``min(left, floor(headroom_w / replica_w))``
        replicas. All or nothing: :class:`Over` (with every region's headroom) when the regions
        together (at most ``max_regions`` of them) cannot hold all the replicas.
        """
        per = _watts(replica_w, "replica_w")
        if replicas < 1:
            raise InvalidArgument(f"must be at least 1, got {replicas}", field="replicas")
        if max_regions is not None and max_regions < 1:
            raise InvalidArgument(f"must be at least 1, got {max_regions}", field="max_regions")
        parts: list[tuple[str, int]] = []
        notes: list[str] = []
        left = replicas
        for region in regions:
            if left == 0 or (max_regions is not None and len(parts) == max_regions):
                break
            if region not in self._budget_w:
                notes.append(f"{region}: no power budget declared")
                continue
            room = self.headroom_w(region)
            if per == 0:  # nothing to add, but a region already over its budget takes nothing
                can = left if isinstance(self.check(region, 0), Fits) else 0
            else:
                can = left if math.isinf(room) else min(left, int(room // per))
            notes.append(f"{region}: {format_kw(room)} kW headroom holds {can}")
            if can > 0:
                parts.append((region, can))
                left -= can
        total = f"{replicas} replicas × {format_kw(per)} kW = {format_kw(replicas * per)} kW"
        if left > 0:
            cap = f" in at most {max_regions} region(s)" if max_regions is not None else ""
            return Over(
                ", ".join(regions),
                f"{total} do not fit{cap}: {replicas - left} of {replicas} placed; " + "; ".join(notes),
                0,
                replicas * per,
                0.0,
            )
        placed = ", ".join(f"{r} {n} ({format_kw(n * per)} kW)" for r, n in parts)
        return Split(tuple(parts), per, f"{total} split by power headroom: {placed}")

    # -- changes -----------------------------------------------------------------------------

    def charge(
        self, allocation_id: str, region: str, watts: float, *, subdomain: str = "", force: bool = False
    ) -> Fits | Over:
        """Charge ``watts`` to ``region`` (placed in ``subdomain``) for the allocation, if it fits.

        Admits exactly what :meth:`check` admits; with ``force`` it charges whatever the budget
        says (a placement that already runs, e.g. found after a master restart). Idempotent:
        charging the same id again replaces its charge (the check excludes the old one); a repeat
        with the same region, sub-domain and watts changes nothing.
        """
        if not allocation_id:
            raise InvalidArgument("an allocation id is required", field="allocation_id")
        added = _watts(watts, "watts")
        self._known(region)
        old = self._charges.get(allocation_id)
        if old is not None and (old.region, old.subdomain, old.watts) == (region, subdomain, added):
            return Fits(region, self.in_use_w(region) - added, added, self._budget_w[region])
        charged, unmetered = self._charged[region], self._unmetered[region]
        if old is not None and old.region == region:
            charged -= old.watts
            if old.watts and self._is_fresh(old):
                unmetered -= old.watts
        result = self._check(region, added, charged, unmetered)
        if isinstance(result, Over) and not force:
            return result
        if old is not None:
            self.release(allocation_id)
        key = (region, subdomain)
        c = _Charge(region, subdomain, added, force, self._gen[key])
        self._charges[allocation_id] = c
        self._charged[region] += added
        if added:
            bucket = self._fresh[key]
            bucket[c.gen] = bucket.get(c.gen, 0) + added
            self._unmetered[region] += added
        if isinstance(result, Over):
            self._relaxed.add(region)
            return Fits(region, result.in_use_w, added, result.budget_w)
        return result

    def _is_fresh(self, c: _Charge) -> bool:
        return c.gen > self._gen[(c.region, c.subdomain)] - 2

    def release(self, allocation_id: str) -> int:
        """Drop the allocation's charge; return the watts freed (0 when unknown: idempotent)."""
        c = self._charges.pop(allocation_id, None)
        if c is None:
            return 0
        self._charged[c.region] -= c.watts
        if c.watts and self._is_fresh(c):
            bucket = self._fresh[(c.region, c.subdomain)]
            bucket[c.gen] -= c.watts
            if not bucket[c.gen]:
                del bucket[c.gen]
            self._unmetered[c.region] -= c.watts
        if self._charged[c.region] <= self._budget_w[c.region]:
            self._relaxed.discard(c.region)
        return c.watts

    def observe(self, region: str, subdomain: str, measured_w: float) -> None:
        """The measured draw of one sub-domain (its summary's ``power_draw_w``); replaces the last one.

        It also ages that sub-domain's charges (and the region's charges made without one): those
        made two observations ago are now part of the measured draw.
        """
        self._known(region)
        w = _watts(measured_w, "measured_w")
        per = self._measured[region]
        self._measured_total[region] += w - per.get(subdomain, 0)
        if w:
            per[subdomain] = w
        else:
            per.pop(subdomain, None)
        for key in {(region, subdomain), (region, "")}:
            self._gen[key] += 1
            bucket = self._fresh[key]
            for gen in [g for g in bucket if g <= self._gen[key] - 2]:
                self._unmetered[region] -= bucket.pop(gen)

    def forget(self, region: str, subdomain: str) -> None:
        """The sub-domain is gone: its measured draw no longer counts."""
        self.observe(region, subdomain, 0)

    def set_budget(self, region: str, budget_kw: float) -> None:
        """Change (or add) a region's budget; charges above a lowered budget stay, new ones wait."""
        rp = RegionPower(region, budget_kw)
        if region not in self._budget_w:
            self._add_region(rp)
        self._budget_w[region] = rp.budget_w
        if self._charged[region] > rp.budget_w:
            self._relaxed.add(region)
        else:
            self._relaxed.discard(region)

    # -- invariants --------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant (for tests; O(allocations + sub-domains))."""
        keys = self._budget_w.keys()
        assert keys == self._charged.keys() == self._measured.keys() == self._measured_total.keys()
        assert keys == self._unmetered.keys()
        sums = dict.fromkeys(keys, 0)
        fresh: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
        for c in self._charges.values():
            assert c.watts >= 0 and c.region in sums
            sums[c.region] += c.watts
            if self._is_fresh(c) and c.watts:
                b = fresh[(c.region, c.subdomain)]
                b[c.gen] = b.get(c.gen, 0) + c.watts
        assert sums == self._charged, (sums, self._charged)
        assert {k: v for k, v in fresh.items() if v} == {k: v for k, v in self._fresh.items() if v}
        unmetered = dict.fromkeys(keys, 0)
        for (region, _), bucket in self._fresh.items():
            assert all(w > 0 for w in bucket.values())
            unmetered[region] += sum(bucket.values())
        assert unmetered == self._unmetered, (unmetered, self._unmetered)
        for region, per in self._measured.items():
            assert all(w > 0 for w in per.values())
            assert sum(per.values()) == self._measured_total[region]
        for region, budget in self._budget_w.items():
            assert budget >= 0
            if region not in self._relaxed:
                # Charges admitted through check never exceed the budget.
                assert self._charged[region] <= budget, (
                    f"region {region}: {self._charged[region]} W > {budget} W"
                )
