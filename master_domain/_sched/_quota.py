"""Tenant quotas: resource classes, quotas per region / sub-domain, usage accounting, admission.

Resource classes (the vocabulary the whole scheduler core shares) and their units:

* ``cpu``: millicores (1000 = one core);
* ``memory``: bytes;
* ``gpu:<model>``: whole GPUs of that model (e.g. ``gpu:H100-SXM-80GB``);
* ``gpu-share:<model>``: fractional GPU compute in 1% units (100 = one full card's compute);
* ``gpu:*`` / ``gpu-share:*``: the same, any model. As a *limit* these cap the sum over every model;
  as a *demand* or a *charge* they mean "model not chosen / not known".

Whole GPUs and fractional shares are separate classes: a quota that should cap both sets both.

A :class:`Quota` is ``(tenant, region, subdomain, limits)`` where ``region`` and ``subdomain`` are
names or ``"*"`` (all). Every quota whose scope matches a request applies — the most specific and
the general ones alike: ``east/east-1``, ``*/east-1``, ``east/*`` and ``*/*``. A class that a
matching quota does not list is not limited by that quota (Kubernetes ``ResourceQuota`` semantics).
Where *no* matching quota limits a class the request asks for, the book's :class:`DefaultPolicy`
decides: ``unlimited`` (the default, so a federation without quotas behaves as before) or ``deny``.

Usage is charged per allocation (an id the caller chooses, e.g. ``<job>/<sub-domain>``) at a concrete
``(region, subdomain)``; :meth:`QuotaBook.charge` and :meth:`QuotaBook.release` are idempotent by that
id, so a retried reservation or a replayed release never counts twice. The usage of a quota is the
sum of the charges inside its scope; it is kept per scope so :meth:`QuotaBook.admit` costs
O(quotas of the tenant x classes), independent of the number of allocations, nodes or jobs.

The admission rule, for every matching quota ``q`` and every class ``c`` the demand asks for::

    used(q, c) + requested(q, c) <= q.limits[c]

where ``used`` is what is charged inside ``q``'s scope now (for ``gpu:*``: every model plus
unknown-model charges) and ``requested`` the demand inside ``q``'s scope. Charges are accounting,
not checks: a quota lowered below its usage stops new admissions in that class and stops nothing
that runs.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from domainos.errors import FailedPrecondition, InvalidArgument, NotFound
from domainos.resources import Resources, format_memory
from domainos.topology import check_name

CPU = "cpu"
MEMORY = "memory"
GPU_PREFIX = "gpu:"
SHARE_PREFIX = "gpu-share:"
ANY = "*"
GPU_ANY = GPU_PREFIX + ANY
SHARE_ANY = SHARE_PREFIX + ANY
#: One whole GPU in ``gpu-share`` units (1% steps).
SHARE_UNITS_PER_GPU = 100
#: Largest amount of any class in a quota, a demand or a charge (keeps JSON integers exact everywhere).
MAX_AMOUNT = 2**53
#: Version of :meth:`QuotaBook.to_dict`'s layout.
FORMAT_VERSION = 1

_MODEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 ._/()+-]{0,126}[A-Za-z0-9._/()+-])?$")


# -- resource classes --------------------------------------------------------------------------


def gpu_class(model: str = ANY) -> str:
    """``gpu:<model>``: whole GPUs of ``model`` (``"*"`` or ``""``: any model)."""
    return GPU_PREFIX + (model or ANY)


def gpu_share_class(model: str = ANY) -> str:
    """``gpu-share:<model>``: fractional GPU compute of ``model`` in 1% units."""
    return SHARE_PREFIX + (model or ANY)


def check_class(name: object, fld: str) -> str:
    """Validate a resource class name; InvalidArgument naming ``fld`` and the accepted forms."""
    if isinstance(name, str):
        if name in (CPU, MEMORY):
            return name
        for prefix in (GPU_PREFIX, SHARE_PREFIX):
            if name.startswith(prefix):
                model = name[len(prefix) :]
                if model == ANY or _MODEL_RE.match(model):
                    return name
                raise InvalidArgument(
                    f"{model[:80]!r} is not a valid GPU model: 1-128 letters, digits, spaces and "
                    "'._/()+-', starting and ending with a letter or digit, or '*' for any model",
                    field=fld,
                )
    raise InvalidArgument(
        f"unknown resource class {str(name)[:80]!r}; expected cpu (millicores), memory (bytes), "
        "gpu:<model> or gpu:* (whole GPUs), gpu-share:<model> or gpu-share:* (1% units of a GPU)",
        field=fld,
    )


def check_amount(value: object, fld: str) -> int:
    """A whole, non-negative amount no larger than :data:`MAX_AMOUNT`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"expected a whole number, got {value!r}", field=fld)
    if value < 0:
        raise InvalidArgument(f"must not be negative, got {value}", field=fld)
    if value > MAX_AMOUNT:
        raise InvalidArgument(f"must be at most {MAX_AMOUNT}, got {value}", field=fld)
    return value


def check_vector(amounts: object, fld: str) -> dict[str, int]:
    """Validate ``{class: amount}``; zero amounts are dropped. Errors name ``fld[class]``."""
    if not isinstance(amounts, Mapping):
        raise InvalidArgument(f"expected a mapping of resource class to amount, got {amounts!r}", field=fld)
    out: dict[str, int] = {}
    for cls, amount in amounts.items():
        name = check_class(cls, f"{fld}[{str(cls)[:80]!r}]")
        n = check_amount(amount, f"{fld}[{name!r}]")
        if n:
            out[name] = n
    return out


def aggregate_of(cls: str) -> str | None:
    """The ``*`` class that sums ``cls`` (``gpu:H100`` -> ``gpu:*``), or None."""
    if cls.startswith(GPU_PREFIX) and cls != GPU_ANY:
        return GPU_ANY
    if cls.startswith(SHARE_PREFIX) and cls != SHARE_ANY:
        return SHARE_ANY
    return None


def expand(vector: Mapping[str, int]) -> dict[str, int]:
    """``vector`` plus its ``*`` aggregates: ``{gpu:A: 2, gpu:B: 1}`` -> ``{..., gpu:*: 3}``.

    Limits are compared with expanded vectors, so a ``gpu:*`` limit caps every model together.
    """
    out = dict(vector)
    for cls, n in vector.items():
        agg = aggregate_of(cls)
        if agg is not None:
            out[agg] = out.get(agg, 0) + n
    return out


def demand_of(resources: Resources, count: int = 1, gpu_share: int = 0) -> dict[str, int]:
    """The demand of ``count`` tasks of ``resources`` (``gpus`` of ``gpu_model``, ``""``: any model).

    ``gpu_share`` is each task's fractional GPU compute in 1% units (1..99) for tasks that do not
    take whole GPUs.
    """
    out: dict[str, int] = {}
    if resources.cpu_millis:
        out[CPU] = resources.cpu_millis * count
    if resources.memory_bytes:
        out[MEMORY] = resources.memory_bytes * count
    if resources.gpus:
        out[gpu_class(resources.gpu_model)] = resources.gpus * count
    if gpu_share:
        out[gpu_share_class(resources.gpu_model)] = gpu_share * count
    return out


def demand_of_tasks(tasks: Iterable[Resources]) -> dict[str, int]:
    """The summed demand of several task requests (e.g. a gang part's ``tasks``)."""
    out: dict[str, int] = {}
    for t in tasks:
        out = add_vectors(out, demand_of(t))
    return out


def add_vectors(a: Mapping[str, int], b: Mapping[str, int], sign: int = 1) -> dict[str, int]:
    """``a + sign * b`` by class, zero entries dropped."""
    out = dict(a)
    for cls, n in b.items():
        v = out.get(cls, 0) + sign * n
        if v:
            out[cls] = v
        else:
            out.pop(cls, None)
    return out


def format_amount(cls: str, amount: int) -> str:
    """An amount in the class's natural unit: CPUs, ``Gi``, GPUs, or percent of one GPU."""
    if cls == CPU:  # CPUs, exact to the millicore (1 -> "0.001", 4500 -> "4.5")
        return f"{amount / 1000:.3f}".rstrip("0").rstrip(".")
    if cls == MEMORY:
        return format_memory(amount) if amount else "0"
    if cls.startswith(SHARE_PREFIX):
        return f"{amount}%"
    return str(amount)


def share_gpus(amount: int) -> float:
    """GPUs of compute in ``amount`` units of ``gpu-share`` (100 units = one GPU)."""
    return amount / SHARE_UNITS_PER_GPU


def finite_nonneg(value: float, fld: str) -> float:
    """Helper for callers validating floats (weights, times): finite and >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidArgument(f"must be a finite number >= 0, got {value!r}", field=fld)
    return float(value)


def _scope_text(region: str, subdomain: str) -> str:
    if region == ANY and subdomain == ANY:
        return "in all regions"
    if subdomain == ANY:
        return f"in region {region}"
    if region == ANY:
        return f"in sub-domain {subdomain}"
    return f"in sub-domain {subdomain} of region {region}"


def _check_scope_name(value: object, fld: str, wildcard: bool) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"expected a name, got {value!r}", field=fld)
    if wildcard and value == ANY:
        return value
    check_name(value, fld)
    return value


# -- quotas and decisions ----------------------------------------------------------------------


class DefaultPolicy(enum.StrEnum):
    """What a class gets where no matching quota of the tenant limits it."""

    #: Not limited (the default: a federation without quotas schedules as before).
    UNLIMITED = "unlimited"
    #: Refused: every tenant needs a quota for every class it uses.
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Quota:
    """Limits of one tenant in one scope: ``region`` / ``subdomain`` names or ``"*"`` for all.

    ``limits`` maps resource classes to amounts in their units (see the module docstring).
    """

    tenant: str
    region: str = ANY
    subdomain: str = ANY
    limits: Mapping[str, int] = field(default_factory=dict)

    @property
    def scope(self) -> tuple[str, str]:
        return (self.region, self.subdomain)

    @property
    def name(self) -> str:
        """``region/subdomain``, as shown in reasons (``east/*``)."""
        return f"{self.region}/{self.subdomain}"

    def matches(self, region: str, subdomain: str) -> bool:
        """True when a charge at ``(region, subdomain)`` counts against this quota."""
        return self.region in (ANY, region) and self.subdomain in (ANY, subdomain)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "region": self.region,
            "subdomain": self.subdomain,
            "limits": dict(self.limits),
        }

    @classmethod
    def from_dict(cls, data: object, fld: str = "quota") -> Quota:
        """Validated (InvalidArgument naming ``fld.<field>``): names, classes, amounts."""
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"expected a mapping, got {type(data).__name__}", field=fld)
        unknown = sorted(str(k) for k in data if k not in ("tenant", "region", "subdomain", "limits"))
        if unknown:
            raise InvalidArgument(
                "unknown field; allowed fields: tenant, region, subdomain, limits",
                field=f"{fld}.{unknown[0]}",
            )
        return validated_quota(
            data.get("tenant"),
            data.get("region", ANY),
            data.get("subdomain", ANY),
            data.get("limits", {}),
            fld,
        )


def validated_quota(
    tenant: object, region: object, subdomain: object, limits: object, fld: str = "quota"
) -> Quota:
    """A :class:`Quota` with every field checked; zero limits are kept (zero means "none allowed")."""
    t = _check_scope_name(tenant, f"{fld}.tenant", wildcard=False)
    r = _check_scope_name(region, f"{fld}.region", wildcard=True)
    s = _check_scope_name(subdomain, f"{fld}.subdomain", wildcard=True)
    if not isinstance(limits, Mapping):
        raise InvalidArgument(
            f"expected a mapping of resource class to amount, got {limits!r}", field=f"{fld}.limits"
        )
    checked: dict[str, int] = {}
    for cls, amount in limits.items():
        name = check_class(cls, f"{fld}.limits[{str(cls)[:80]!r}]")
        checked[name] = check_amount(amount, f"{fld}.limits[{name!r}]")
    return Quota(t, r, s, dict(sorted(checked.items())))


@dataclass(frozen=True, slots=True)
class Admit:
    """The demand fits every matching quota. ``quotas``: the ones that were checked."""

    quotas: tuple[Quota, ...] = ()


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One class over one quota (``quota`` None: no quota, refused by the default policy)."""

    quota: Quota | None
    resource_class: str
    used: int
    requested: int
    limit: int
    message: str


@dataclass(frozen=True, slots=True)
class Wait:
    """The demand would exceed a quota: the job waits (it never runs over quota).

    ``reason`` is the first violation's message (most specific quota first), ``violations`` all.
    """

    reason: str
    violations: tuple[QuotaViolation, ...]


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one allocation holds, charged at a concrete ``(region, subdomain)``."""

    allocation_id: str
    tenant: str
    region: str
    subdomain: str
    demand: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.allocation_id,
            "tenant": self.tenant,
            "region": self.region,
            "subdomain": self.subdomain,
            "demand": dict(self.demand),
        }


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """One line of ``domainctl quota ls``: a quota's class, what is used and the limit."""

    quota: Quota
    resource_class: str
    used: int
    limit: int

    def describe(self) -> str:
        return (
            f"{self.quota.tenant} {self.quota.name} {self.resource_class}: "
            f"{format_amount(self.resource_class, self.used)} of "
            f"{format_amount(self.resource_class, self.limit)}"
        )


Demand = Mapping[str, int]
Place = tuple[str, str]

# Specificity order of the scopes matching a concrete (region, subdomain), most specific first.
_SPECIFICITY = ((0, 0), (1, 0), (0, 1), (1, 1))  # (region is *, subdomain is *)


def _scopes(region: str, subdomain: str) -> Iterator[Place]:
    for r_any, s_any in _SPECIFICITY:
        yield (ANY if r_any else region, ANY if s_any else subdomain)


class QuotaBook:
    """Quotas and usage of every tenant: a pure state machine (no I/O, no clock).

    The master keeps one, loads it from the store at start (:meth:`from_dict`), calls
    :meth:`admit` before reserving, :meth:`charge` when it reserves and :meth:`release` on rollback,
    preemption or completion. Call :meth:`validate` in tests after every step.
    """

    def __init__(self, default_policy: DefaultPolicy | str = DefaultPolicy.UNLIMITED) -> None:
        try:
            self.default_policy = DefaultPolicy(default_policy)
        except ValueError:
            raise InvalidArgument(
                f"expected 'unlimited' or 'deny', got {default_policy!r}", field="default_policy"
            ) from None
        # tenant -> scope -> quota
        self._quotas: dict[str, dict[Place, Quota]] = {}
        # allocation id -> allocation
        self._allocs: dict[str, Allocation] = {}
        # (tenant, region|*, subdomain|*) -> expanded usage charged inside that scope
        self._used: dict[tuple[str, str, str], dict[str, int]] = {}
        # tenant -> raw (not expanded) usage summed over every scope
        self._tenant_used: dict[str, dict[str, int]] = {}

    # -- quotas ------------------------------------------------------------------------------

    def set_quota(
        self,
        tenant: str,
        limits: Mapping[str, int],
        region: str = ANY,
        subdomain: str = ANY,
    ) -> Quota:
        """Create or replace the quota of ``tenant`` in ``region/subdomain``; returns it validated."""
        q = validated_quota(tenant, region, subdomain, limits)
        self._quotas.setdefault(q.tenant, {})[q.scope] = q
        return q

    def put(self, quota: Quota) -> Quota:
        """:meth:`set_quota` from a :class:`Quota` (validated again)."""
        return self.set_quota(quota.tenant, quota.limits, quota.region, quota.subdomain)

    def remove_quota(self, tenant: str, region: str = ANY, subdomain: str = ANY) -> Quota:
        """Remove one quota; NotFound names it. Usage is kept (it belongs to allocations)."""
        scopes = self._quotas.get(tenant, {})
        q = scopes.pop((region, subdomain), None)
        if q is None:
            raise NotFound(
                f"tenant {tenant!r} has no quota {region}/{subdomain}; see `domainctl quota ls --tenant {tenant}`",
                field="quota",
            )
        if not scopes:
            del self._quotas[tenant]
        return q

    def quota(self, tenant: str, region: str = ANY, subdomain: str = ANY) -> Quota | None:
        return self._quotas.get(tenant, {}).get((region, subdomain))

    def quotas(self, tenant: str | None = None) -> list[Quota]:
        """Every quota (of ``tenant``), sorted by tenant, region, sub-domain."""
        tenants = [tenant] if tenant is not None else sorted(self._quotas)
        return [q for t in tenants for _, q in sorted(self._quotas.get(t, {}).items())]

    def matching(self, tenant: str, region: str, subdomain: str) -> list[Quota]:
        """The quotas that apply at ``(region, subdomain)``, most specific first."""
        scopes = self._quotas.get(tenant, {})
        return [scopes[s] for s in _scopes(region, subdomain) if s in scopes]

    # -- usage --------------------------------------------------------------------------------

    def charge(self, allocation_id: str, tenant: str, region: str, subdomain: str, demand: Demand) -> bool:
        """Count ``demand`` against ``tenant`` at ``(region, subdomain)`` under ``allocation_id``.

        Idempotent: charging the same id with the same content again changes nothing (returns
        False); the same id with other content is FailedPrecondition. Never refused for quota:
        admission is :meth:`admit`'s job, and a charge records what was reserved or is running.
        """
        alloc = self._allocation(allocation_id, tenant, region, subdomain, demand)
        old = self._allocs.get(allocation_id)
        if old is not None:
            if old == alloc:
                return False
            raise FailedPrecondition(
                f"allocation {allocation_id!r} is already charged to tenant {old.tenant} at "
                f"{old.region}/{old.subdomain} with {dict(old.demand)}; release it before charging "
                f"{dict(alloc.demand)} at {region}/{subdomain}",
                field="allocation_id",
            )
        self._allocs[allocation_id] = alloc
        self._apply(alloc, 1)
        return True

    def release(self, allocation_id: str) -> Allocation | None:
        """Undo a charge; releasing an unknown or already released id does nothing (None)."""
        alloc = self._allocs.pop(allocation_id, None)
        if alloc is not None:
            self._apply(alloc, -1)
        return alloc

    def allocation(self, allocation_id: str) -> Allocation | None:
        return self._allocs.get(allocation_id)

    def allocations(self) -> Iterable[Allocation]:
        return self._allocs.values()

    def used(self, tenant: str, region: str = ANY, subdomain: str = ANY) -> dict[str, int]:
        """What ``tenant`` has charged inside a scope, expanded with ``*`` aggregates."""
        return dict(self._used.get((tenant, region, subdomain), {}))

    def tenant_usage(self, tenant: str) -> dict[str, int]:
        """Everything ``tenant`` has charged, as charged (no aggregates): fair share's input."""
        return dict(self._tenant_used.get(tenant, {}))

    def tenants(self) -> list[str]:
        """Tenants with a quota or a charge."""
        return sorted(set(self._quotas) | set(self._tenant_used))

    def _allocation(
        self, allocation_id: str, tenant: str, region: str, subdomain: str, demand: Demand
    ) -> Allocation:
        if not isinstance(allocation_id, str) or not 1 <= len(allocation_id) <= 256:
            raise InvalidArgument(f"expected 1-256 characters, got {allocation_id!r}", field="allocation_id")
        _check_scope_name(tenant, "tenant", wildcard=False)
        _check_scope_name(region, "region", wildcard=False)
        _check_scope_name(subdomain, "subdomain", wildcard=False)
        vec = check_vector(demand, "demand")
        return Allocation(allocation_id, tenant, region, subdomain, dict(sorted(vec.items())))

    def _apply(self, alloc: Allocation, sign: int) -> None:
        expanded = expand(alloc.demand)
        for r, s in _scopes(alloc.region, alloc.subdomain):
            key = (alloc.tenant, r, s)
            new = add_vectors(self._used.get(key, {}), expanded, sign)
            if new:
                self._used[key] = new
            else:
                self._used.pop(key, None)
        raw = add_vectors(self._tenant_used.get(alloc.tenant, {}), alloc.demand, sign)
        if raw:
            self._tenant_used[alloc.tenant] = raw
        else:
            self._tenant_used.pop(alloc.tenant, None)

    # -- admission -----------------------------------------------------------------------------

    def admit(self, tenant: str, demand: Demand, region: str, subdomain: str) -> Admit | Wait:
        """May ``tenant`` take ``demand`` (classes -> amounts) at ``(region, subdomain)``?

        Checks every matching quota (most specific first); :class:`Wait` names the quota, the class
        and the used/requested/limit numbers. ``gpu:*`` in a demand (model not chosen yet) is
        checked against ``gpu:*`` limits only; check again with the model once placement picks it.
        """
        return self.admit_split(tenant, {(region, subdomain): demand})

    def admit_split(self, tenant: str, parts: Mapping[Place, Demand]) -> Admit | Wait:
        """:meth:`admit` for one gang split over several ``(region, subdomain)`` places.

        A quota whose scope covers several parts is checked against their sum, so a DP job spread
        over two sub-domains cannot pass a region quota that each half alone would pass.
        """
        _check_scope_name(tenant, "tenant", wildcard=False)
        raw: dict[Place, dict[str, int]] = {}
        for (region, subdomain), demand in parts.items():
            _check_scope_name(region, "region", wildcard=False)
            _check_scope_name(subdomain, "subdomain", wildcard=False)
            raw[(region, subdomain)] = check_vector(demand, "demand")
        expanded = {place: expand(vec) for place, vec in raw.items()}
        scopes = self._quotas.get(tenant, {})
        checked: dict[Place, Quota] = {}
        for region, subdomain in expanded:
            for s in _scopes(region, subdomain):
                if s in scopes:
                    checked.setdefault(s, scopes[s])
        # Most specific first, so `reason` names the tightest quota.
        order = sorted(checked.values(), key=lambda q: (q.region == ANY, q.subdomain == ANY, q.scope))
        violations: list[QuotaViolation] = []
        for q in order:
            requested: dict[str, int] = {}
            for place, vec in expanded.items():
                if q.matches(*place):
                    requested = add_vectors(requested, vec)
            used = self._used.get((tenant, q.region, q.subdomain), {})
            for cls, limit in q.limits.items():
                req = requested.get(cls, 0)
                if req and used.get(cls, 0) + req > limit:
                    violations.append(self._violation(tenant, q, cls, used.get(cls, 0), req, limit))
        if self.default_policy is DefaultPolicy.DENY:
            violations.extend(self._denied(tenant, raw, order))
        if violations:
            return Wait(violations[0].message, tuple(violations))
        return Admit(tuple(order))

    def _violation(self, tenant: str, q: Quota, cls: str, used: int, req: int, limit: int) -> QuotaViolation:
        f = format_amount
        message = (
            f"tenant {tenant} would use {f(cls, used + req)} of {f(cls, limit)} {cls} "
            f"{_scope_text(q.region, q.subdomain)} (quota {q.name}: {f(cls, used)} in use, "
            f"{f(cls, req)} requested)"
        )
        return QuotaViolation(q, cls, used, req, limit, message)

    def _denied(
        self, tenant: str, raw: Mapping[Place, Mapping[str, int]], quotas: list[Quota]
    ) -> list[QuotaViolation]:
        # A concrete class is covered by its own limit or its aggregate's; `gpu:*` only by `gpu:*`.
        out: list[QuotaViolation] = []
        for (region, subdomain), vec in raw.items():
            applying = [q for q in quotas if q.matches(region, subdomain)]
            for cls, n in sorted(vec.items()):
                agg = aggregate_of(cls)
                if any(cls in q.limits or (agg is not None and agg in q.limits) for q in applying):
                    continue
                message = (
                    f"tenant {tenant} has no quota for {cls} {_scope_text(region, subdomain)} and "
                    f"tenants without one are denied (default policy: deny); "
                    f"{format_amount(cls, n)} requested"
                )
                out.append(QuotaViolation(None, cls, 0, n, 0, message))
        return out

    def report(self, tenant: str | None = None) -> list[QuotaUsage]:
        """Every quota's classes with usage and limit (``domainctl quota ls``)."""
        return [
            QuotaUsage(q, cls, self._used.get((q.tenant, q.region, q.subdomain), {}).get(cls, 0), limit)
            for q in self.quotas(tenant)
            for cls, limit in q.limits.items()
        ]

    # -- invariants and persistence -------------------------------------------------------------

    def validate(self) -> None:
        """Invariants: usage never negative and equal to the sum of the charged allocations."""
        used: dict[tuple[str, str, str], dict[str, int]] = {}
        raw: dict[str, dict[str, int]] = {}
        for aid, a in self._allocs.items():
            assert aid == a.allocation_id, f"allocation {aid!r} stored as {a.allocation_id!r}"
            assert ANY not in (a.region, a.subdomain), f"allocation {aid!r} charged at a wildcard scope"
            assert all(n > 0 for n in a.demand.values()), f"allocation {aid!r} has a non-positive charge"
            for r, s in _scopes(a.region, a.subdomain):
                used[(a.tenant, r, s)] = add_vectors(used.get((a.tenant, r, s), {}), expand(a.demand))
            raw[a.tenant] = add_vectors(raw.get(a.tenant, {}), a.demand)
        for key, vec in self._used.items():
            assert all(n > 0 for n in vec.values()), f"usage of {key} is not positive: {vec}"
        for tenant, vec in self._tenant_used.items():
            assert all(n > 0 for n in vec.values()), f"usage of tenant {tenant} is not positive: {vec}"
        used = {k: v for k, v in used.items() if v}
        raw = {k: v for k, v in raw.items() if v}
        assert used == self._used, f"scope usage {self._used} != sum of allocations {used}"
        assert raw == self._tenant_used, f"tenant usage {self._tenant_used} != sum of allocations {raw}"
        for tenant, scopes in self._quotas.items():
            assert scopes, f"tenant {tenant} has an empty quota table"
            for scope, q in scopes.items():
                assert (q.tenant, q.scope) == (tenant, scope), f"quota {q} filed under {tenant} {scope}"
                assert all(n >= 0 for n in q.limits.values()), f"quota {q} has a negative limit"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the store's record); :meth:`from_dict` reads it back."""
        return {
            "version": FORMAT_VERSION,
            "default_policy": self.default_policy.value,
            "quotas": [q.to_dict() for q in self.quotas()],
            "allocations": [a.to_dict() for _, a in sorted(self._allocs.items())],
        }

    @classmethod
    def from_dict(cls, data: object) -> QuotaBook:
        """Validated: InvalidArgument with the field path of the first bad entry."""
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"expected a mapping, got {type(data).__name__}", field="quota_book")
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise InvalidArgument(
                f"unsupported version {version!r}, expected {FORMAT_VERSION}", field="version"
            )
        book = cls(data.get("default_policy", DefaultPolicy.UNLIMITED.value))
        quotas = data.get("quotas", [])
        allocs = data.get("allocations", [])
        if not isinstance(quotas, list):
            raise InvalidArgument("expected a list", field="quotas")
        if not isinstance(allocs, list):
            raise InvalidArgument("expected a list", field="allocations")
        for i, q in enumerate(quotas):
            quota = Quota.from_dict(q, f"quotas[{i}]")
            if book.quota(quota.tenant, quota.region, quota.subdomain) is not None:
                raise InvalidArgument(
                    f"a second quota {quota.name} for tenant {quota.tenant}", field=f"quotas[{i}]"
                )
            book.put(quota)
        for i, a in enumerate(allocs):
            fld = f"allocations[{i}]"
            if not isinstance(a, Mapping):
                raise InvalidArgument(f"expected a mapping, got {type(a).__name__}", field=fld)
            texts: list[str] = []
            for key in ("id", "tenant", "region", "subdomain"):
                value = a.get(key)
                if not isinstance(value, str):
                    raise InvalidArgument(f"expected a string, got {value!r}", field=f"{fld}.{key}")
                texts.append(value)
            demand = check_vector(a.get("demand"), f"{fld}.demand")
            try:
                book.charge(texts[0], texts[1], texts[2], texts[3], demand)
            except InvalidArgument as exc:
                raise InvalidArgument(exc.message, field=f"{fld}.{exc.field}") from None
            except FailedPrecondition:
                raise InvalidArgument(f"duplicate allocation id {texts[0]!r}", field=f"{fld}.id") from None
        return book
