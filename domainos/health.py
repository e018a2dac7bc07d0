"""What GPU health signals mean: one table the agent (its node's health) and the sub-domain (its
cordon and drain policy, :mod:`sub_domain._health`) both read.

Signals come per GPU in :class:`~domainos.model.GpuUsage`: volatile ECC counts, the last Xid
error and how many were seen, and the NVML clocks-event (throttle) reasons. The Xid numbers are
NVIDIA's (the "Xid Errors" catalogue of the driver documentation):

* **critical** -- the GPU (or its memory, NVLink, GSP firmware) failed and needs a reset or
  repair; the node is cordoned and drained at once: 48 double-bit ECC, 61/62 internal
  micro-controller breakpoint/halt, 64 page retirement / row remapping failure, 74 NVLink error,
  79 fallen off the bus, 95 uncontained ECC error, 119/120 GSP timeout/error, 140 unrecovered
  ECC error. So is any uncorrectable (double-bit) ECC error counted by the volatile counter.
* **warning** -- a sign of wear that raises the node's risk score: 63 a page retirement / row
  remapping event, 92 a high single-bit ECC rate, 94 a contained ECC error.
* everything else (13, 31, 43, 45, ...) is normally the application's own fault and says
  nothing about the node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from domainos.model import GpuUsage

CRITICAL_XIDS: dict[int, str] = {
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint",
    62: "internal micro-controller halt",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}
WARNING_XIDS: dict[int, str] = {
    63: "ECC page retirement or row remapping event",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
}

#: NVML clocks-event (throttle) reasons that mean trouble (not idling or a set application clock).
THROTTLE_HW_SLOWDOWN = 0x8
THROTTLE_SW_THERMAL = 0x20
THROTTLE_HW_THERMAL = 0x40
THROTTLE_HW_POWER_BRAKE = 0x80
BAD_THROTTLE: dict[int, str] = {
    THROTTLE_HW_SLOWDOWN: "hw slowdown",
    THROTTLE_SW_THERMAL: "sw thermal slowdown",
    THROTTLE_HW_THERMAL: "hw thermal slowdown",
    THROTTLE_HW_POWER_BRAKE: "hw power brake",
}
BAD_THROTTLE_MASK = sum(BAD_THROTTLE)

#: A GPU hotter than this makes the node DEGRADED (and adds to its risk).
GPU_TEMPERATURE_LIMIT_C = 90.0
#: From here on heat adds to the risk score (scaled up to the limit).
GPU_TEMPERATURE_WARN_C = 80.0


def xid_text(xid: int) -> str:
    what = CRITICAL_XIDS.get(xid) or WARNING_XIDS.get(xid)
    return f"xid {xid} ({what})" if what else f"xid {xid}"


def throttle_text(reasons: int) -> str:
    return ", ".join(text for bit, text in BAD_THROTTLE.items() if reasons & bit)


@dataclass(frozen=True, slots=True)
class Finding:
    """One critical sign on one GPU: ``kind`` is ``"xid"`` or ``"ecc"`` (uncorrectable errors)."""

    gpu: GpuUsage
    kind: str
    text: str


def critical_findings(gpus: Iterable[GpuUsage]) -> list[Finding]:
    """Why the node must be cordoned and drained now ([] when nothing is critical)."""
    out: list[Finding] = []
    for g in gpus:
        if g.last_xid in CRITICAL_XIDS:
            out.append(Finding(g, "xid", f"gpu{g.index}: {xid_text(g.last_xid)}"))
        if g.ecc_uncorrected > 0:
            text = f"gpu{g.index}: {g.ecc_uncorrected} uncorrectable (double-bit) ECC errors"
            out.append(Finding(g, "ecc", text))
    return out


def critical_conditions(gpus: Iterable[GpuUsage]) -> list[str]:
    """The text of each :func:`critical_findings`."""
    return [f.text for f in critical_findings(gpus)]


def warning_conditions(gpus: Iterable[GpuUsage]) -> list[str]:
    """Signs of trouble that make the node DEGRADED (it still takes work)."""
    out: list[str] = []
    for g in gpus:
        if g.temperature_c > GPU_TEMPERATURE_LIMIT_C:
            out.append(f"gpu{g.index}: temperature {g.temperature_c:.0f} C > {GPU_TEMPERATURE_LIMIT_C:.0f} C")
        if g.throttle_reasons & BAD_THROTTLE_MASK:
            out.append(f"gpu{g.index}: throttled ({throttle_text(g.throttle_reasons)})")
        if g.last_xid in WARNING_XIDS:
            out.append(f"gpu{g.index}: {xid_text(g.last_xid)}")
    return out
