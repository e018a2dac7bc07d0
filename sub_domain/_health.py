"""The health policy: when a node is cordoned and drained on its own (no I/O; time comes in).

Two rules, fed by the signals agents already report (GPU ``usage`` with ECC counts, the worst
Xid and throttle reasons, see :mod:`domainos.health`; the node's ``health``; task failures seen
by the sub-domain):

* **Critical** -- a critical Xid (48, 79, ...) or an uncorrectable ECC error that this policy has
  not acted on yet: cordon and drain *now* (every task is stopped with a short grace and queued
  again elsewhere, no retry spent).
* **At risk** -- a score in [0, 1] that adds up signs of wear, each scaled to [0, 1] and weighted:

  ====================  ======  ==========================================================
  signal                weight  full at
  ====================  ======  ==========================================================
  corrected ECC growth   0.4    ``ecc_rate_per_h`` errors per hour (over the window)
  heat                   0.3    the temperature limit (90 C), from 80 C up
  throttling             0.3    any GPU throttled for trouble (hw slowdown, thermal, power brake)
  warning Xid            0.4    one in the window (63, 92, 94)
  task failures          0.6    ``failures_for_risk`` different jobs failing on the node
  ====================  ======  ==========================================================

  Summed and capped at 1. At ``risk_threshold`` (0.7: two strong signs, or failures plus one
  more) the node is cordoned and drained *gracefully*: tasks of checkpointing jobs move at once
  (they lose little), the others may finish for ``drain_timeout_s`` and are then moved too.

A node the policy cordoned stays cordoned until an admin uncordons it (``domainctl uncordon``);
the signals seen until then are *acknowledged* (an uncordoned node is cordoned again only for a
new critical event or a new rise of its score). Only nodes that showed a signal have state
here, so the policy costs nothing per heartbeat and O(GPUs) per usage report that changed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from domainos.health import (
    BAD_THROTTLE_MASK,
    GPU_TEMPERATURE_LIMIT_C,
    GPU_TEMPERATURE_WARN_C,
    WARNING_XIDS,
    critical_findings,
    throttle_text,
    xid_text,
)
from domainos.model import NodeUsage

W_ECC = 0.4
W_HEAT = 0.3
W_THROTTLE = 0.3
W_WARNING_XID = 0.4
W_FAILURES = 0.6
#: Most failures remembered per node (the window is also bounded in time).
MAX_FAILURES_KEPT = 64
#: Degrees from where heat starts to count to where it counts fully.
_HEAT_SPAN_C = GPU_TEMPERATURE_LIMIT_C - GPU_TEMPERATURE_WARN_C


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Knobs of the policy (``SubDomainConfig.health_*``)."""

    #: Act on the signals at all (False: only admins cordon and drain).
    auto: bool = True
    risk_threshold: float = 0.7
    #: How long a sign (an ECC rise, a warning Xid, a task failure) counts.
    window_s: float = 600.0
    ecc_rate_per_h: float = 1000.0
    failures_for_risk: int = 3


@dataclass(frozen=True, slots=True)
class Verdict:
    """Cordon the node: ``critical`` drains everything now, else drain gracefully."""

    node_id: str
    critical: bool
    risk: float
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        what = "critical" if self.critical else f"at risk ({self.risk:.2f})"
        return f"{what}: " + "; ".join(self.reasons)


@dataclass(slots=True)
class _NodeSigns:
    # Counters acknowledged (acted on, or seen when an admin uncordoned the node), per GPU.
    acked_xids: dict[int, int] = field(default_factory=dict)
    acked_dbe: dict[int, int] = field(default_factory=dict)
    # Corrected-ECC totals per GPU as last seen, and the rises inside the window.
    ecc_last: dict[int, int] = field(default_factory=dict)
    ecc_rises: deque[tuple[float, int]] = field(default_factory=deque)
    warning_xids: deque[tuple[float, str]] = field(default_factory=deque)
    xid_last: dict[int, int] = field(default_factory=dict)
    failures: deque[tuple[float, str]] = field(default_factory=deque)
    heat: float = 0.0
    throttled: str = ""
    risk: float = 0.0
    risk_acked: float = 0.0
    reasons: tuple[str, ...] = ()


class HealthPolicy:
    """Turns a node's signals into at most one :class:`Verdict` per new problem."""

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config or HealthConfig()
        self._nodes: dict[str, _NodeSigns] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def risk(self, node_id: str) -> float:
        signs = self._nodes.get(node_id)
        return signs.risk if signs is not None else 0.0

    def forget(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    # -- signals in ------------------------------------------------------------------------------

    def observe(self, node_id: str, usage: NodeUsage, now: float, *, cordoned: bool) -> Verdict | None:
        """A usage report with GPU readings. ``cordoned``: the node already is (no new verdict,
        but the signals are still tracked)."""
        signs = self._nodes.get(node_id)
        if signs is None:
            if not _has_signs(usage):
                return None
            signs = self._nodes[node_id] = _NodeSigns()
        critical: list[str] = []
        ecc_rise = 0
        throttled: list[str] = []
        throttle_bits = 0
        for g in usage.gpus:
            i = g.index
            if g.xid_count > signs.xid_last.get(i, 0):
                if g.last_xid in WARNING_XIDS:
                    signs.warning_xids.append((now, f"gpu{i}: {xid_text(g.last_xid)}"))
                signs.xid_last[i] = g.xid_count
            elif g.xid_count < signs.xid_last.get(i, 0):  # the agent restarted: counters start over
                signs.xid_last[i] = g.xid_count
                signs.acked_xids[i] = min(signs.acked_xids.get(i, 0), g.xid_count)
            last = signs.ecc_last.get(i)
            if last is not None and g.ecc_corrected > last:
                ecc_rise += g.ecc_corrected - last
            signs.ecc_last[i] = g.ecc_corrected
            if signs.acked_dbe.get(i, 0) > g.ecc_uncorrected:
                signs.acked_dbe[i] = g.ecc_uncorrected
            if g.throttle_reasons & BAD_THROTTLE_MASK:
                throttled.append(f"gpu{i}")
                throttle_bits |= g.throttle_reasons & BAD_THROTTLE_MASK
        if ecc_rise:  # one entry per report (not per GPU): the window's sum is all that is read
            signs.ecc_rises.append((now, ecc_rise))
        # Critical: a critical Xid or an uncorrectable ECC count beyond what was acknowledged.
        for f in critical_findings(usage.gpus):
            g = f.gpu
            seen, acked = (
                (g.xid_count, signs.acked_xids) if f.kind == "xid" else (g.ecc_uncorrected, signs.acked_dbe)
            )
            if seen > acked.get(g.index, 0):
                critical.append(f.text)
        hottest = max((g.temperature_c for g in usage.gpus), default=0.0)
        signs.heat = min(1.0, max(0.0, (hottest - GPU_TEMPERATURE_WARN_C) / _HEAT_SPAN_C))
        signs.throttled = (
            f"{', '.join(throttled)} throttled ({throttle_text(throttle_bits)})" if throttled else ""
        )
        if critical:
            self.acknowledge(node_id, usage)
            self._score(signs, now)
            if cordoned:
                return None
            return Verdict(node_id, True, signs.risk, tuple(critical))
        return self._maybe_at_risk(node_id, signs, now, cordoned)

    def task_failed(self, node_id: str, job_id: str, now: float, *, cordoned: bool) -> Verdict | None:
        """A task of ``job_id`` failed on the node (a non-zero exit, or it could not start)."""
        signs = self._nodes.setdefault(node_id, _NodeSigns())
        signs.failures.append((now, job_id))
        while len(signs.failures) > MAX_FAILURES_KEPT:
            signs.failures.popleft()
        return self._maybe_at_risk(node_id, signs, now, cordoned)

    def acknowledge(self, node_id: str, usage: NodeUsage | None) -> None:
        """The current signals were acted on (or an admin uncordoned the node): only new ones count."""
        signs = self._nodes.get(node_id)
        if signs is None:
            return
        if usage is not None:
            for g in usage.gpus:
                signs.acked_xids[g.index] = g.xid_count
                signs.acked_dbe[g.index] = g.ecc_uncorrected
        signs.risk_acked = signs.risk

    def uncordoned(self, node_id: str, usage: NodeUsage | None, now: float) -> None:
        """An admin put the node back in service: forget the signs that led here."""
        signs = self._nodes.get(node_id)
        if signs is None:
            return
        signs.ecc_rises.clear()
        signs.warning_xids.clear()
        signs.failures.clear()
        self._score(signs, now)
        self.acknowledge(node_id, usage)

    # -- scoring ---------------------------------------------------------------------------------

    def _maybe_at_risk(self, node_id: str, signs: _NodeSigns, now: float, cordoned: bool) -> Verdict | None:
        self._score(signs, now)
        if signs.risk < signs.risk_acked:
            signs.risk_acked = signs.risk  # falling: a later rise counts again
        cfg = self.config
        if signs.risk < cfg.risk_threshold or signs.risk <= signs.risk_acked or cordoned:
            return None
        signs.risk_acked = signs.risk
        return Verdict(node_id, False, signs.risk, signs.reasons)

    def _score(self, signs: _NodeSigns, now: float) -> None:
        cfg = self.config
        horizon = now - cfg.window_s
        for q in (signs.ecc_rises, signs.warning_xids, signs.failures):
            while q and q[0][0] < horizon:
                q.popleft()
        reasons: list[str] = []
        risk = 0.0
        ecc = sum(n for _, n in signs.ecc_rises)
        if ecc:
            rate = ecc * 3600.0 / cfg.window_s
            risk += W_ECC * min(1.0, rate / cfg.ecc_rate_per_h)
            reasons.append(f"{ecc} corrected ECC errors in {cfg.window_s:.0f}s")
        if signs.heat:
            risk += W_HEAT * signs.heat
            reasons.append(f"GPU temperature {GPU_TEMPERATURE_WARN_C + signs.heat * _HEAT_SPAN_C:.0f} C")
        if signs.throttled:
            risk += W_THROTTLE
            reasons.append(signs.throttled)
        if signs.warning_xids:
            risk += W_WARNING_XID
            reasons.append(signs.warning_xids[-1][1])
        jobs = {job for _, job in signs.failures}
        if jobs:
            risk += W_FAILURES * min(1.0, len(jobs) / max(1, cfg.failures_for_risk))
            reasons.append(f"tasks of {len(jobs)} jobs failed here in {cfg.window_s:.0f}s")
        signs.risk = round(min(1.0, risk), 3)
        signs.reasons = tuple(reasons)


def _has_signs(usage: NodeUsage) -> bool:
    return any(
        g.xid_count
        or g.ecc_uncorrected
        or g.ecc_corrected
        or g.throttle_reasons & BAD_THROTTLE_MASK
        or g.temperature_c > GPU_TEMPERATURE_WARN_C
        for g in usage.gpus
    )
