"""Goodput: the effective training time of a 16,384-GPU training job at Llama-3 failure rates.

A discrete-event simulation in virtual time (:mod:`bench._goodput_model`) of one training job of
2,048 tasks x 8 H100s (TP 8 x PP 16 x DP 128, a gang of every task) running for ``--days``
simulated days while its nodes fail. Per scenario and seed it reports the **effective training
time ratio** (productive training time / wall time) and where the rest went: checkpoint overhead,
lost work (training since the latest complete checkpoint, rolled back by a failure), detection,
rescheduling (the gang's reservation), restart (process start, rendezvous, framework and NCCL
initialisation), checkpoint load, warm-up, drain, waiting for spares, resubmission. The figures are
medians over ``--seeds`` seeds; the same seed gives the same failures in every scenario.

**Real code**: the master's job state machine (``master_domain._jobs.JobTable``) decides what
happens to the job: a lost or failed task requeues the whole gang as a new attempt, retries come
out of one budget per gang (``retry.on_lost`` / ``on_exit``, at most 100 each) and a job whose budget
is spent FAILS (a job controller then resubmits it, restarting from its checkpoint), a drain is a
``Preempt`` (no retry spent), a reservation that loses a node fails whole and is retried after the
master's ``GANG_RETRY_S``. **Measured in this repository** (docs/scaling.md, docs/dsdk.md): node
failure detection, the report of a process exit, the gang reservation (extrapolated to 2,048 tasks),
process start and rendezvous. **Chosen** (stated in the JSON and the printout, to be replaced by
measurements on real hardware): framework and NCCL initialisation, warm-up, the collective
timeout of a hang, the checkpoint sizes and storage bandwidths, spares and repair time, the share
of failures a health signal predicts and how far ahead. **From the literature**: the failure rate
and its causes (Llama 3 paper: 466 interruptions in 54 days on 16,384 H100s, table 5 for the
causes; Meta, HPCA'25 "Revisiting Reliability in Large-Scale ML Research Clusters": a 16k-GPU job's
MTTF ~1.8 h).

Checkpoint intervals are Young's optimum ``sqrt(2 * C * MTTF)`` (C: the blocking cost; MTTF of
the failures that roll work back), rounded to whole training steps; Daly's higher-order optimum is
reported beside it, and a first-order estimate ``C/(T+C) + (T/2 + R)/M`` of the whole overhead as a
check of the simulation.

Run it with ``python -m bench.goodput`` (54 days, 5 seeds, 12 scenarios: a few minutes on two
cores; ``--jobs`` processes in parallel) or ``--smoke`` (2 days, 1 seed, 4 scenarios, a few
seconds). Results go to ``goodput.json`` (``goodput-smoke.json`` for ``--smoke``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench._goodput_model import (
    DAY_S,
    OVERHEADS,
    Checkpointing,
    Cluster,
    Drain,
    Failures,
    Restart,
    Scenario,
    daly_interval,
    first_order_overhead,
    simulate,
    young_interval,
)

GOAL = 0.99

# -- the job and its checkpoint (chosen: a Llama-3-405B-like job) ---------------------------------

PARAMETERS = 405e9
#: bf16 weights (2) + fp32 master weights (4) + Adam moments (4 + 4).
BYTES_PER_PARAMETER = 14
CLUSTER = Cluster()
STATE_BYTES = PARAMETERS * BYTES_PER_PARAMETER
PER_NODE_BYTES = STATE_BYTES / CLUSTER.nodes
PER_GPU_BYTES = PER_NODE_BYTES / CLUSTER.gpus_per_node
#: Shared storage, aggregate and effective (metadata, many files, stragglers): an eighth and a quarter
#: of the 2 TB/s Llama 3's storage sustained (chosen).
SHARED_WRITE_BPS = 250e9
SHARED_READ_BPS = 500e9
#: GPU -> pinned host memory per GPU, and node -> peer node (one 200 Gb/s NIC), effective (chosen).
D2H_BPS = 25e9
PEER_BPS = 25e9

CHECKPOINTING = {
    "sync-shared": Checkpointing(
        "sync-shared",
        blocking_s=round(STATE_BYTES / SHARED_WRITE_BPS, 1),
        persist_s=0.0,
        load_s=round(STATE_BYTES / SHARED_READ_BPS, 1),
        note=(
            f"training waits while {STATE_BYTES / 1e12:.2f} TB are written to shared storage at "
            f"{SHARED_WRITE_BPS / 1e9:.0f} GB/s; restart loads it at {SHARED_READ_BPS / 1e9:.0f} GB/s"
        ),
    ),
    "async-shared": Checkpointing(
        "async-shared",
        blocking_s=2.0,
        persist_s=round(STATE_BYTES / SHARED_WRITE_BPS, 1),
        load_s=round(STATE_BYTES / SHARED_READ_BPS, 1),
        note=(
            "2 s snapshot to host memory (the staging and planning of an async save, as PyTorch "
            "DCP's async_save; chosen), written to shared storage in the background "
            "(dsdk Checkpointer.save_async); restart loads from shared storage"
        ),
    ),
    "in-memory": Checkpointing(
        "in-memory",
        blocking_s=0.05,
        persist_s=1.0,
        load_s=2.0,
        note=(
            f"{PER_GPU_BYTES / 1e6:.0f} MB per GPU copied to pinned host memory "
            f"({PER_GPU_BYTES / D2H_BPS * 1e3:.0f} ms at {D2H_BPS / 1e9:.0f} GB/s, plus agreeing on the "
            f"step: 0.05 s), complete once copied to a peer node's memory ({PER_NODE_BYTES / 1e9:.2f} GB, "
            f"{PER_NODE_BYTES / PEER_BPS:.2f} s at {PEER_BPS / 1e9:.0f} GB/s: 1 s); restart loads from "
            "host memory, the replacement node from its peer (2 s); shared storage written in the "
            "background now and then (not on any critical path; a node and its peer lost together "
            "is not modelled)"
        ),
    ),
}

STANDARD = Restart()
FAST = dataclasses.replace(
    Restart(),
    name="fast",
    framework_init_s=5.0,
    nccl_init_s=5.0,
    warmup_s=6.0,
    hang_timeout_s=30.0,
)

FAILURES = {
    "llama3": Failures(
        "llama3",
        job_mttf_s=54 * DAY_S / 466,
        source="Llama 3 paper: 466 interruptions (419 unexpected, 47 planned) in 54 days, 16,384 H100s",
    ),
    "hpca25": Failures(
        "hpca25",
        job_mttf_s=1.8 * 3600,
        source="Meta, HPCA'25: MTTF ~1.8 h for a 16,384-GPU job (causes mixed as in Llama 3)",
    ),
}

SOURCES = {
    "real code": {
        "job state machine": "master_domain._jobs.JobTable (gang requeue, retry budgets, Preempt, GangNotPlaced)",
        "job spec": "domainos.jobspec.parse_spec: parallelism tp 8 x pp 16 x dp 128, retry on_lost/on_exit 100 (the maximum)",
        "gang retry back-off": "master_domain._master.GANG_RETRY_S",
    },
    "measured here": {
        "node failure detection": "docs/scaling.md s2, 10,000 nodes: silenced -> dead p50 3.25 s, p99 4.16 s",
        "process exit report": "docs/scaling.md s1: a busy node reports deltas at most once a second (<= 1 s)",
        "gang reservation": "docs/scaling.md s3: ~180 ms per 64-task gang, ~1.2 ms sub-domain CPU per placed "
        "task -> 0.18 s + 2,048 x 1.2 ms = 2.6 s (extrapolated)",
        "process start": "docs/dsdk.md (cold): starting a job's processes with rendezvous ~0.35 s (4 tasks)",
    },
    "chosen": {
        "rendezvous of 2,048 tasks": "1 s",
        "framework init / NCCL init / warm-up (standard)": "30 s / 20 s / 15 s",
        "framework init / NCCL init / warm-up (fast)": "5 s / 5 s / 6 s: a warm, pre-imported process per node and "
        "NCCL's scalable init; one step of warm-up",
        "hang detection (collective timeout)": "120 s standard, 30 s fast (PyTorch's default is 600 s)",
        "detection by cause": "GPU/HBM/SRAM/software: the process dies; host, PSU, CPU, memory...: the node "
        "stops answering; network, NIC, NCCL timeouts, silent data corruption: a hang",
        "resubmission of a FAILED job": "60 s",
        "spares / repair": f"{CLUSTER.spares} hot spare nodes; a swapped node is back after {CLUSTER.repair_s / DAY_S:.0f} days",
        "training step": f"{CLUSTER.step_s:.0f} s (405B parameters, 16M tokens per step)",
        "checkpoint state": f"{PARAMETERS / 1e9:.0f}B parameters x {BYTES_PER_PARAMETER} bytes = {STATE_BYTES / 1e12:.2f} TB",
        "drain": "30% of the predictable hardware failures and every planned maintenance signalled 10 min ahead",
    },
}


@dataclasses.dataclass(frozen=True)
class Size:
    days: float
    seeds: int
    #: (failures, checkpointing, restart) triples; each runs without and with drain.
    configs: tuple[tuple[str, str, str], ...]


_ALL = (
    ("llama3", "sync-shared", "standard"),
    ("llama3", "async-shared", "standard"),
    ("llama3", "in-memory", "standard"),
    ("llama3", "in-memory", "fast"),
    ("hpca25", "in-memory", "standard"),
    ("hpca25", "in-memory", "fast"),
)
FULL = Size(days=54.0, seeds=5, configs=_ALL)
SMOKE = Size(
    days=2.0, seeds=1, configs=(("llama3", "in-memory", "standard"), ("llama3", "in-memory", "fast"))
)


def scenarios(size: Size) -> list[Scenario]:
    out = []
    for fail, ck, rs in size.configs:
        for drain in (False, True):
            out.append(
                Scenario(
                    name=f"{fail}/{ck}/{rs}-restart/{'drain' if drain else 'no-drain'}",
                    failures=FAILURES[fail],
                    checkpointing=CHECKPOINTING[ck],
                    restart=FAST if rs == "fast" else STANDARD,
                    cluster=CLUSTER,
                    drain=Drain(enabled=drain),
                    days=size.days,
                )
            )
    return out


def mean_detection_s(sc: Scenario) -> float:
    """The mean detection delay over the failure mix (what the simulation draws)."""
    r = sc.restart
    total = sum(c.weight for c in sc.failures.categories)
    node = _mean_quantile(r.detect_node)
    per = {"node": node, "process": r.detect_process_s / 2, "hang": r.hang_timeout_s + r.detect_process_s / 2}
    return sum(c.weight * per[c.detect] for c in sc.failures.categories) / total


def _mean_quantile(points: Sequence[tuple[float, float]]) -> float:
    return sum((p1 - p0) * (v0 + v1) / 2 for (p0, v0), (p1, v1) in itertools.pairwise(points))


def restart_s(sc: Scenario) -> float:
    """Rescheduling + restart + load + warm-up: what every stop costs once detected or drained."""
    r = sc.restart
    return r.reservation_s(sc.cluster.nodes) + r.start_s() + r.init_s() + sc.checkpointing.load_s + r.warmup_s


def estimate(sc: Scenario) -> dict[str, float]:
    """First-order expected shares of wall time (the check of the simulation)."""
    ck = sc.checkpointing
    t = sc.interval_s
    m = sc.failures.job_mttf_s
    share = sc.failures.drainable_share(sc.drain.predictable_fraction) if sc.drain.enabled else 0.0
    m_lossy = sc.lossy_mttf_s
    lossy = first_order_overhead(
        t, ck.blocking_s, m_lossy, mean_detection_s(sc) + restart_s(sc) + ck.persist_s
    )
    drained = share * (restart_s(sc) + ck.persist_s) / m if share else 0.0
    overhead = lossy + drained
    return {"overhead": overhead, "ratio": 1.0 - overhead}


def _run_one(args: tuple[Scenario, int]) -> dict[str, Any]:
    sc, seed = args
    started = time.perf_counter()
    res = simulate(sc, seed).as_dict()
    res["cpu_s"] = round(time.perf_counter() - started, 2)
    return res


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    wall = statistics.median(r["wall_s"] for r in runs)
    med: dict[str, Any] = {
        "ratio": statistics.median(r["ratio"] for r in runs),
        "ratio_min": min(r["ratio"] for r in runs),
        "ratio_max": max(r["ratio"] for r in runs),
        "wall_h": wall / 3600,
        "productive_h": statistics.median(r["productive_s"] for r in runs) / 3600,
        "overheads_pct": {
            k: 100 * statistics.median(r["overheads_s"][k] / r["wall_s"] for r in runs) for k in OVERHEADS
        },
        "overheads_h": {k: statistics.median(r["overheads_s"][k] for r in runs) / 3600 for k in OVERHEADS},
    }
    for key in (
        "faults",
        "interruptions",
        "drains",
        "faults_avoided",
        "requeues",
        "resubmissions",
        "gang_retries",
        "spare_waits",
        "min_free_spares",
        "lost_max_s",
    ):
        med[key] = statistics.median(r[key] for r in runs)
    return med


def describe(sc: Scenario) -> dict[str, Any]:
    ck = sc.checkpointing
    m = sc.lossy_mttf_s
    return {
        "name": sc.name,
        "failures": {
            "name": sc.failures.name,
            "job_mttf_h": sc.failures.job_mttf_s / 3600,
            "source": sc.failures.source,
        },
        "checkpointing": dataclasses.asdict(ck),
        "restart": dataclasses.asdict(sc.restart),
        "restart_path_s": {
            "mean_detection": mean_detection_s(sc),
            "reservation": sc.restart.reservation_s(sc.cluster.nodes),
            "process_start_and_rendezvous": sc.restart.start_s(),
            "framework_and_nccl_init": sc.restart.init_s(),
            "load": ck.load_s,
            "warmup": sc.restart.warmup_s,
            "total_after_detection": restart_s(sc),
        },
        "cluster": dataclasses.asdict(sc.cluster),
        "drain": dataclasses.asdict(sc.drain),
        "drainable_share": sc.failures.drainable_share(sc.drain.predictable_fraction)
        if sc.drain.enabled
        else 0.0,
        "interval": {
            "used_s": sc.interval_s,
            "young_s": young_interval(ck.blocking_s, m),
            "daly_s": daly_interval(ck.blocking_s, m),
            "lossy_mttf_h": m / 3600,
        },
        "first_order_estimate": estimate(sc),
    }


def budget() -> list[dict[str, Any]]:
    """What a failure may cost at most for 99%: at the optimum interval, checkpointing and lost work
    take ``C/(T+C) + T/(2M)``; the rest of the 1% divided by the failure rate is the budget per
    failure for detection + restart (no drain)."""
    rows = []
    for fname, f in FAILURES.items():
        for c in (0.05, 0.5, 2.0, round(STATE_BYTES / SHARED_WRITE_BPS, 1)):
            t = young_interval(c, f.job_mttf_s)
            ckpt = first_order_overhead(t, c, f.job_mttf_s, 0.0)
            rows.append(
                {
                    "failures": fname,
                    "blocking_s": c,
                    "young_interval_s": t,
                    "checkpoint_and_lost_pct": 100 * ckpt,
                    "max_per_failure_s_for_99pct": max(0.0, (1 - GOAL - ckpt) * f.job_mttf_s),
                }
            )
    return rows


def table(results: dict[str, Any]) -> str:
    cols = ("checkpoint", "lost_work", "detection", "rescheduling", "restart", "load", "warmup", "drain")
    head = (
        f"{'scenario':52} {'ETTR':>7} {'range':>13} "
        + " ".join(f"{c[:7]:>7}" for c in cols)
        + f" {'other':>6} {'stops':>5} {'drain':>5} {'resub':>5} {'T(s)':>5}  >=99%"
    )
    lines = [
        f"goodput: {results['config']['days']:g} simulated days, median of {results['config']['seeds']} seed(s); "
        f"a {CLUSTER.nodes * CLUSTER.gpus_per_node:,}-GPU gang ({CLUSTER.nodes:,} nodes x {CLUSTER.gpus_per_node}); "
        "overheads in % of wall time",
        head,
    ]
    for s in results["scenarios"]:
        med = s["median"]
        pct = med["overheads_pct"]
        other = pct["spare_wait"] + pct["resubmit"]
        lines.append(
            f"{s['name']:52} {100 * med['ratio']:6.2f}% {100 * med['ratio_min']:5.2f}-{100 * med['ratio_max']:5.2f}% "
            + " ".join(f"{pct[c]:7.3f}" for c in cols)
            + f" {other:6.3f} {med['interruptions']:5.0f} {med['drains']:5.0f} {med['resubmissions']:5.0f} "
            f"{s['interval']['used_s']:5.0f}  {'yes' if med['ratio'] >= GOAL else 'no'}"
        )
    lines.append(
        "stops: failures that stopped the job; drain: drained before a predicted failure; resub: jobs FAILED "
        "(retry budget of 100 spent) and resubmitted; T: checkpoint interval (Young, whole steps)"
    )
    lines.append(
        "budget for 99% (no drain): blocking C -> Young T, checkpoint+lost share, max cost per failure"
    )
    for b in results["budget"]:
        lines.append(
            f"  {b['failures']:7} C={b['blocking_s']:5.2f}s T={b['young_interval_s']:6.0f}s "
            f"ckpt+lost={b['checkpoint_and_lost_pct']:.2f}%  per failure <= {b['max_per_failure_s_for_99pct']:.0f} s"
        )
    return "\n".join(lines)


def run(
    *,
    smoke: bool,
    out: pathlib.Path,
    days: float | None = None,
    seeds: int | None = None,
    jobs: int | None = None,
) -> dict[str, Any]:
    size = SMOKE if smoke else FULL
    if days is not None:
        size = dataclasses.replace(size, days=days)
    if seeds is not None:
        size = dataclasses.replace(size, seeds=seeds)
    started = time.monotonic()
    scs = scenarios(size)
    work = [(sc, seed) for sc in scs for seed in range(size.seeds)]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    if workers == 1:
        done = [_run_one(w) for w in work]
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(_run_one, work))
    by_name: dict[str, list[dict[str, Any]]] = {}
    for res in done:
        by_name.setdefault(res["scenario"], []).append(res)
    results: dict[str, Any] = {
        "benchmark": "goodput",
        "smoke": smoke,
        "config": {"days": size.days, "seeds": size.seeds, "goal": GOAL},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "what": "virtual-time simulation; the master's JobTable is the real code, the rest is modelled",
        "sources": SOURCES,
        "scenarios": [
            {**describe(sc), "median": _median(by_name[sc.name]), "runs": by_name[sc.name]} for sc in scs
        ],
        "budget": budget(),
    }
    results["reached_goal"] = [s["name"] for s in results["scenarios"] if s["median"]["ratio"] >= GOAL]
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["table"] = table(results).splitlines()
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("goodput-smoke.json" if smoke else "goodput.json")
    path.write_text(json.dumps(results, indent=2, default=_json_default))
    print(table(results))
    print(f"wrote {path} in {results['wall_s']} s")
    return results


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and math.isinf(obj):
        return None
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.goodput", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="2 days, 1 seed, 4 scenarios (a few seconds)")
    p.add_argument("--days", type=float, help="simulated days per run (default 54; smoke 2)")
    p.add_argument(
        "--seeds", type=int, help="runs per scenario, the figures are medians (default 5; smoke 1)"
    )
    p.add_argument("--jobs", type=int, help="processes in parallel (default: one per CPU)")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    ns = p.parse_args(argv)
    if ns.days is not None and ns.days <= 0:
        p.error("--days must be > 0")
    if ns.seeds is not None and ns.seeds < 1:
        p.error("--seeds must be at least 1")
    run(smoke=ns.smoke, out=ns.out, days=ns.days, seeds=ns.seeds, jobs=ns.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
