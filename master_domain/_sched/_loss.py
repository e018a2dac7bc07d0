"""The cross-region loss model: what splitting data parallelism over a link costs per iteration.

A training job of TP × PP × DP ranks (one GPU each) all-reduces its gradients across the DP
replicas once per iteration. When the replicas sit in different sub-domains, that all-reduce
crosses the link between them. The model (DESIGN.md, Scheduling) estimates the time it adds::

    msg_bytes   = params · bytes_per_param / (tp · pp)       [B]   one DP rank's gradient shard
    pairs       = tp · pp                                     [-]   rank pairs crossing the link at once
    bw_per_pair = link_bw / pairs                             [B/s] link_bw = bandwidth_gbps · 10⁹ / 8
    t_transfer  = k · msg_bytes / bw_per_pair / α_LB          [s]
    RTT         = distance_km / 100 · 1 ms                    [s]   (1 ms per 100 km)
    t_cross     = t_transfer + RTT                            [s]
    loss        = t_cross / t_iteration                       [-]   fraction of an iteration lost

``k`` (default 1.2) covers protocol and collective overheads; ``α_LB`` (0 < α_LB ≤ 1, default 1)
is how evenly the pairs share the link (1 = perfectly balanced). Every rank of a DP replica holds
a different shard (TP splits layers, PP splits stages), so the ``tp · pp`` shards of a replica
cross the link in parallel, each on its share of the bandwidth; ``t_transfer`` therefore equals
``k · params · bytes_per_param / link_bw / α_LB`` — the whole gradient once over the link.

Units throughout: bandwidth in Gbit/s (decimal, 10⁹ bit/s), distance in km, bytes in bytes
(decimal prefixes in text: 1 GB = 10⁹ B), times in seconds, loss as a fraction (0.02 = 2%).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from domainos.errors import InvalidArgument

#: Overhead factor of the collective over the raw transfer time.
DEFAULT_K = 1.2
#: Load-balance factor: the share of the link the pairs achieve together (1 = all of it).
DEFAULT_ALPHA_LB = 1.0
#: Round-trip time per km of distance: 1 ms per 100 km.
RTT_S_PER_KM = 1e-3 / 100
#: The default budget of a job's per-iteration loss (2%).
DEFAULT_MAX_CROSS_DOMAIN_LOSS = 0.02


def _finite(value: float, fld: str, *, low: float, low_inclusive: bool, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"expected a number, got {value!r}", field=fld)
    ok = math.isfinite(value) and (value >= low if low_inclusive else value > low) and value <= high
    if not ok:
        bound = f">= {low:g}" if low_inclusive else f"> {low:g}"
        if high != math.inf:
            bound += f" and <= {high:g}"
        raise InvalidArgument(f"must be a finite number {bound}, got {value!r}", field=fld)


def _positive_int(value: int, fld: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"must be a whole number >= 1, got {value!r}", field=fld)


def format_bytes(n: float) -> str:
    """Decimal units, 3 significant digits: ``250 MB``, ``14 GB``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g} B"


def format_rate(bytes_per_s: float) -> str:
    """A byte rate in decimal units: ``1.56 GB/s``."""
    return f"{format_bytes(bytes_per_s)}/s"


def format_seconds(t: float) -> str:
    """3 significant digits: ``6.5 ms`` below a second, ``1.0 s``, ``1.35 s`` above."""
    if t < 1.0:
        return f"{t * 1000:.3g} ms"
    if t >= 100:
        return f"{t:.0f} s"
    text = f"{t:.3g}"
    return f"{text}.0 s" if "." not in text else f"{text} s"


def format_fraction(x: float) -> str:
    """A fraction as a percentage: ``7.3%``, ``0.65%``."""
    pct = x * 100
    return f"{pct:.1f}%" if pct >= 1 or pct == 0 else f"{pct:.2g}%"


def format_bandwidth(gbps: float) -> str:
    return f"{gbps / 1000:g} Tbit/s" if gbps >= 1000 else f"{gbps:g} Gbit/s"


@dataclass(frozen=True, slots=True)
class Link:
    """A network path between two regions (or inside one).

    ``bandwidth_gbps``: what the job's all-reduce may use, in Gbit/s (decimal); ``distance_km``:
    fibre distance, which sets the round-trip time (1 ms per 100 km).
    """

    bandwidth_gbps: float
    distance_km: float = 0.0

    def __post_init__(self) -> None:
        _finite(self.bandwidth_gbps, "link.bandwidth_gbps", low=0, low_inclusive=False)
        _finite(self.distance_km, "link.distance_km", low=0, low_inclusive=True)

    @property
    def bytes_per_s(self) -> float:
        """Bandwidth in bytes per second."""
        return self.bandwidth_gbps * 1e9 / 8

    @property
    def rtt_s(self) -> float:
        """Round-trip time in seconds: 1 ms per 100 km."""
        return self.distance_km * RTT_S_PER_KM

    def describe(self) -> str:
        return f"{format_bandwidth(self.bandwidth_gbps)}, {self.distance_km:g} km"


#: The default link between two sub-domains of the same region.
INTRA_REGION_LINK = Link(400.0, 0.0)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class LinkTable:
    """Links between regions, symmetric: ``link(a, b) == link(b, a)``.

    ``links`` maps region pairs to links (``{("east", "west"): Link(3200, 50)}``); a pair
    ``(r, r)`` overrides ``intra_region`` for region ``r``. Two sub-domains of the same region
    are joined by ``intra_region`` (default 400 Gbit/s, 0 km). A pair of different regions with
    no entry uses ``default``; when that is ``None`` the regions are not connected for
    training traffic (no split between them is allowed). Not hashable.
    """

    links: Mapping[tuple[str, str], Link] = field(default_factory=dict)
    intra_region: Link = INTRA_REGION_LINK
    default: Link | None = None

    def __post_init__(self) -> None:
        table: dict[tuple[str, str], Link] = {}
        for key, link in self.links.items():
            a, b = key
            if not a or not b:
                raise InvalidArgument(f"region names must not be empty, got {key!r}", field="links")
            if not isinstance(link, Link):
                raise InvalidArgument(f"expected a Link, got {type(link).__name__}", field=f"links[{key!r}]")
            pair = _pair(a, b)
            if pair in table and table[pair] != link:
                raise InvalidArgument(
                    f"{a}–{b} is declared twice with different links ({table[pair].describe()} "
                    f"and {link.describe()})",
                    field="links",
                )
            table[pair] = link
        object.__setattr__(self, "links", MappingProxyType(table))

    def link(self, a: str, b: str) -> Link | None:
        """The link between regions ``a`` and ``b`` (the intra-region link when equal)."""
        found = self.links.get(_pair(a, b))
        if found is not None:
            return found
        return self.intra_region if a == b else self.default

    def with_link(self, a: str, b: str, link: Link) -> LinkTable:
        """A copy with the ``a``–``b`` link set (replaced when present)."""
        table = dict(self.links)
        table[_pair(a, b)] = link
        return LinkTable(table, self.intra_region, self.default)


@dataclass(frozen=True, slots=True)
class LossEstimate:
    """One evaluation of the loss model, with every input and intermediate (units in names).

    ``msg_bytes``: one DP rank's gradient shard per iteration (B); ``pairs``: rank pairs crossing
    the link at once; ``bw_per_pair_bytes_s``: each pair's share of the link (B/s);
    ``t_transfer_s``, ``rtt_s``, ``t_cross_s``: seconds; ``loss``: ``t_cross_s / t_iter_s``.
    """

    params: int
    bytes_per_param: float
    tp: int
    pp: int
    link: Link
    t_iter_s: float
    k: float
    alpha_lb: float
    msg_bytes: float
    pairs: int
    bw_per_pair_bytes_s: float
    t_transfer_s: float
    rtt_s: float
    t_cross_s: float
    loss: float

    def within(self, budget: float) -> bool:
        """True when the loss stays within ``budget`` (a fraction: 0.02 = 2%)."""
        return self.loss <= budget

    def brief(self) -> str:
        """``7.3% per iteration (t_cross 73 ms / t_iter 1.0 s)``."""
        return (
            f"{format_fraction(self.loss)} per iteration "
            f"(t_cross {format_seconds(self.t_cross_s)} / t_iter {format_seconds(self.t_iter_s)})"
        )

    def explain(self) -> str:
        """The whole computation with its numbers, for ``domainctl explain``."""
        return (
            f"link {self.link.describe()}: "
            f"msg_bytes = {self.params:,} params × {self.bytes_per_param:g} B / "
            f"(TP {self.tp} × PP {self.pp}) = {format_bytes(self.msg_bytes)} per DP rank; "
            f"pairs = TP × PP = {self.pairs}; "
            f"bw per pair = {format_rate(self.link.bytes_per_s)} / {self.pairs} = "
            f"{format_rate(self.bw_per_pair_bytes_s)}; "
            f"t_transfer = k {self.k:g} × {format_bytes(self.msg_bytes)} / "
            f"{format_rate(self.bw_per_pair_bytes_s)} / α_LB {self.alpha_lb:g} = "
            f"{format_seconds(self.t_transfer_s)}; "
            f"RTT = {self.link.distance_km:g} km × 1 ms/100 km = {format_seconds(self.rtt_s)}; "
            f"t_cross = {format_seconds(self.t_cross_s)}; "
            f"loss = t_cross / t_iter = {format_seconds(self.t_cross_s)} / "
            f"{format_seconds(self.t_iter_s)} = {format_fraction(self.loss)} per iteration"
        )


def estimate_cross_loss(
    *,
    params: int,
    bytes_per_param: float,
    tp: int,
    pp: int,
    link: Link,
    t_iter_s: float,
    k: float = DEFAULT_K,
    alpha_lb: float = DEFAULT_ALPHA_LB,
) -> LossEstimate:
    """Estimate the per-iteration loss of all-reducing DP gradients over ``link``.

    ``params``: model parameters (count); ``bytes_per_param``: bytes per gradient element
    exchanged (2 for bf16, 4 for fp32); ``tp``, ``pp``: the job's tensor and pipeline degrees;
    ``t_iter_s``: one iteration's compute time in seconds; ``k`` > 0; 0 < ``alpha_lb`` ≤ 1.
    Raises :class:`InvalidArgument` naming the bad input.
    """
    _positive_int(params, "params")
    _finite(bytes_per_param, "bytes_per_param", low=0, low_inclusive=False)
    _positive_int(tp, "tp")
    _positive_int(pp, "pp")
    _finite(t_iter_s, "t_iter_s", low=0, low_inclusive=False)
    _finite(k, "k", low=0, low_inclusive=False)
    _finite(alpha_lb, "alpha_lb", low=0, low_inclusive=False, high=1.0)
    pairs, msg_bytes, bw_per_pair, t_transfer, rtt, t_cross, loss = loss_terms(
        params, bytes_per_param, tp, pp, link, t_iter_s, k, alpha_lb
    )
    return LossEstimate(
        params=params,
        bytes_per_param=bytes_per_param,
        tp=tp,
        pp=pp,
        link=link,
        t_iter_s=t_iter_s,
        k=k,
        alpha_lb=alpha_lb,
        msg_bytes=msg_bytes,
        pairs=pairs,
        bw_per_pair_bytes_s=bw_per_pair,
        t_transfer_s=t_transfer,
        rtt_s=rtt,
        t_cross_s=t_cross,
        loss=loss,
    )


def loss_terms(
    params: int,
    bytes_per_param: float,
    tp: int,
    pp: int,
    link: Link,
    t_iter_s: float,
    k: float,
    alpha_lb: float,
) -> tuple[int, float, float, float, float, float, float]:
    """The model's arithmetic on inputs already validated (the planner's inner loop).

    Returns ``(pairs, msg_bytes, bw_per_pair, t_transfer, rtt, t_cross, loss)``; the one place the
    equation is computed, so a search and the estimate it reports agree to the last bit.
    """
    pairs = tp * pp
    msg_bytes = params * bytes_per_param / pairs
    bw_per_pair = link.bytes_per_s / pairs
    t_transfer = k * msg_bytes / bw_per_pair / alpha_lb
    rtt = link.rtt_s
    t_cross = t_transfer + rtt
    return pairs, msg_bytes, bw_per_pair, t_transfer, rtt, t_cross, t_cross / t_iter_s
