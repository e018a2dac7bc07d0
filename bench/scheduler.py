"""Scheduler figures on synthetic federations (pure code, no processes): what a decision costs and
how good it is.

* ``master_latency``: the master's decision cost, p50/p99 in µs, over federations of 100 / 1,000 /
  10,000 nodes in 1 / 2 / 10 sub-domains (and 10,000 nodes in 100). A *task* decision is the live
  path: :meth:`Admission.decide` (quota + power) over :meth:`Placer.choose`, then
  :meth:`Placer.commit` and :meth:`Admission.charge`. A *training* decision is
  :func:`plan_training` for TP 8 × PP 2 × DP 4 (64 GPUs) and TP 8 × PP 4 × DP 16 (512 GPUs).
  Summaries are built from node sets the way a sub-domain builds them (shape key: GPU model, free
  GPUs, CPU and memory buckets), so their size follows the number of distinct shapes, not nodes.
* ``index_throughput``: the sub-domain's :class:`PlacementIndex` (choose + re-index the node) in
  placements/s at 100 / 1,000 / 10,000 nodes for 1-GPU, 8-GPU (whole node) and CPU tasks: filling
  an empty sub-domain until nothing fits, then steady state (free a random task, place one).
* ``fragmentation``: 1,000 8-GPU nodes under one seeded stream of arrivals and departures (1, 2,
  4, 8-GPU and CPU tasks; offered GPU load 1.0 and 1.2): the index's best fit against a plain first-fit
  baseline written here (the first node in id order that fits). Reported after warm-up: the
  fraction of free GPUs stranded on nodes that cannot host an 8-GPU task, how many 8-GPU tasks
  would still fit, and the acceptance rates.
* ``misdispatch``: the real :class:`Placer` on summaries refreshed every S placements (S = 1, 10,
  100) choosing among sub-domains that each place with a real :class:`PlacementIndex`: the
  fraction of the master's decisions a sub-domain must refuse (the Placer's in-flight accounting
  included; departures reach the master only with the next summary), with every node stable and
  with 1% of the nodes out (cordoned or failed, ~500 ticks each) at any time.

Times are CPU time of the running thread (``time.thread_time``), not wall time, so other processes
on a shared machine do not show up as decision latency; they do not measure waiting for a CPU.
Each figure is the median of 3 runs (``--smoke``: 1 run, 100 nodes, short streams). Results go to
``scheduler.json`` (``scheduler-smoke.json`` for ``--smoke``, so CI never overwrites the figures).
"""

from __future__ import annotations

import gc
import heapq
import json
import os
import pathlib
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from domainos.resources import Resources
from master_domain._admission import Admission, Admitted
from master_domain._placement import NoFit, Placer
from master_domain._sched._loss import Link, LinkTable
from master_domain._sched._power import RegionPower
from master_domain._sched._topology import Placement, SubDomainView, TrainingShape, plan_training
from master_domain._summary import Shape, Summary
from sub_domain._placement import PlacementIndex
from sub_domain._registry import bucket

GIB = 2**30
H100 = "H100-SXM-80GB"
A100 = "A100-SXM-80GB"


# -- synthetic nodes and the summaries a sub-domain would send -----------------------------------


@dataclass(frozen=True, slots=True)
class Kind:
    """A node type: its capacity and its share of a heterogeneous federation."""

    name: str
    capacity: Resources
    weight: float


KINDS = (
    Kind("h100x8", Resources(192_000, 2048 * GIB, 8, H100), 0.4),
    Kind("a100x8", Resources(128_000, 1024 * GIB, 8, A100), 0.3),
    Kind("cpu", Resources(64_000, 256 * GIB, 0, ""), 0.3),
)


@dataclass(slots=True)
class Node:
    node_id: str
    capacity: Resources
    free: Resources


def make_nodes(prefix: str, n: int, rnd: random.Random, *, used: bool) -> list[Node]:
    """``n`` heterogeneous nodes; with ``used``, each partly busy (varied shapes, as in production)."""
    out = []
    kinds = rnd.choices(KINDS, weights=[k.weight for k in KINDS], k=n)
    for i, kind in enumerate(kinds):
        cap = kind.capacity
        free = cap
        if used:
            g = rnd.choice((0, 0, 0, 1, 2, 4, 6, 7, 8)) if cap.gpus else 0
            share = rnd.random() * 0.8
            free = Resources(
                cap.cpu_millis - min(cap.cpu_millis, g * 12_000 + int(share * cap.cpu_millis * 0.3)),
                cap.memory_bytes - min(cap.memory_bytes, g * 96 * GIB + int(share * cap.memory_bytes * 0.2)),
                cap.gpus - g,
                cap.gpu_model,
            )
        out.append(Node(f"{prefix}-n{i:05d}", cap, free))
    return out


def summarize(nodes: Sequence[Node]) -> Summary:
    """The summary a sub-domain sends for these (ready, placeable) nodes: shapes, not nodes.

    Shape key as the sub-domain's registry: ``(GPU model, free GPUs, CPU bucket, memory bucket)``,
    the roomiest node's free vector as ``best``.
    """
    groups: dict[tuple[str, int, int, int], tuple[int, Resources]] = {}
    cap_cpu = cap_mem = cap_gpu = free_cpu = free_mem = free_gpu = 0
    gpus_by_model: dict[str, int] = {}
    free_by_model: dict[str, int] = {}
    largest = Resources()
    for node in nodes:
        c, f = node.capacity, node.free
        cap_cpu, cap_mem, cap_gpu = cap_cpu + c.cpu_millis, cap_mem + c.memory_bytes, cap_gpu + c.gpus
        free_cpu, free_mem, free_gpu = free_cpu + f.cpu_millis, free_mem + f.memory_bytes, free_gpu + f.gpus
        if c.gpus:
            gpus_by_model[c.gpu_model] = gpus_by_model.get(c.gpu_model, 0) + c.gpus
            free_by_model[c.gpu_model] = free_by_model.get(c.gpu_model, 0) + f.gpus
        if (c.gpus, c.cpu_millis, c.memory_bytes) > (largest.gpus, largest.cpu_millis, largest.memory_bytes):
            largest = c
        key = (c.gpu_model, f.gpus, bucket(f.cpu_millis), bucket(f.memory_bytes))
        prev = groups.get(key)
        if prev is None:
            groups[key] = (1, f)
        else:
            best = (
                f if (f.cpu_millis, f.memory_bytes) > (prev[1].cpu_millis, prev[1].memory_bytes) else prev[1]
            )
            groups[key] = (prev[0] + 1, best)
    return Summary(
        nodes_total=len(nodes),
        nodes_ready=len(nodes),
        capacity=Resources(cap_cpu, cap_mem, cap_gpu),
        free=Resources(free_cpu, free_mem, free_gpu),
        shapes=tuple(Shape(k[0], k[1], n, b) for k, (n, b) in sorted(groups.items())),
        gpus_by_model=dict(sorted(gpus_by_model.items())),
        free_gpus_by_model=dict(sorted(free_by_model.items())),
        largest_node=largest,
    )


def _pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _median_of(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median over runs of numbers (other values from the first run)."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            med = statistics.median(r[key] for r in runs)
            out[key] = round(med, 4) if isinstance(med, float) else med
        else:
            out[key] = value
    out["runs"] = len(runs)
    return out


# -- a. the master's decision latency ------------------------------------------------------------

TASK_MIX = (
    Resources(8_000, 64 * GIB, 1, H100),
    Resources(64_000, 512 * GIB, 8, ""),
    Resources(4_000, 16 * GIB, 0, ""),
    Resources(16_000, 128 * GIB, 2, A100),
)
TRAIN_JOBS = {
    "train_64gpu": TrainingShape(tp=8, pp=2, dp=4, params=7 * 10**9, bytes_per_param=2, t_iter_s=3.0),
    "train_512gpu": TrainingShape(tp=8, pp=4, dp=16, params=70 * 10**9, bytes_per_param=2, t_iter_s=10.0),
}


@dataclass(frozen=True, slots=True)
class Federation:
    nodes: int
    subdomains: int


def master_latency(fed: Federation, decisions: int, plans: int, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    per = fed.nodes // fed.subdomains
    n_regions = min(fed.subdomains, 10)
    regions = [f"region-{r}" for r in range(n_regions)]
    summaries: dict[str, tuple[str, Summary]] = {}
    for i in range(fed.subdomains):
        sd = f"sd-{i:03d}"
        summaries[sd] = (regions[i % n_regions], summarize(make_nodes(sd, per, rnd, used=True)))
    placer = Placer()
    admission = Admission([RegionPower(r, 10_000.0) for r in regions])
    admission.quotas.set_quota("acme", {"gpu:*": 10**6, "cpu": 10**12})
    for r in regions[:3]:
        admission.quotas.set_quota("acme", {"gpu:*": 10**6}, region=r)

    def refresh() -> None:
        for sd, (region, s) in summaries.items():
            placer.update(sd, region, s, 0.0)
        for alloc in list(charged):
            admission.release(alloc)
        charged.clear()

    charged: list[str] = []
    refresh()
    gc.collect()
    task_us: list[float] = []
    admitted = 0
    for i in range(decisions):
        if i % 100 == 0:
            refresh()  # back to the summaries' state (untimed), so the federation never fills up
        request = TASK_MIX[i % len(TASK_MIX)]
        t0 = time.thread_time_ns()
        verdict = admission.decide("acme", request, placer.choose, placer.slot_model)
        if isinstance(verdict, Admitted):
            placer.commit(verdict.subdomain_id, request, 0.0, verdict.gpu_model)
            alloc = f"job-{i}/0/1"
            admission.charge(
                alloc, "acme", verdict.region, verdict.subdomain_id, verdict.demand, verdict.watts
            )
        t1 = time.thread_time_ns()
        task_us.append((t1 - t0) / 1000)
        if isinstance(verdict, Admitted):
            charged.append(alloc)
            admitted += 1
    views = [SubDomainView.from_summary(sd, region, s) for sd, (region, s) in summaries.items()]
    links = LinkTable(default=Link(400, 500), intra_region=Link(3200, 0))
    out: dict[str, Any] = {
        "nodes": fed.nodes,
        "subdomains": fed.subdomains,
        "shapes": sum(len(s.shapes) for _, s in summaries.values()),
        "task_p50_us": round(_pct(task_us, 0.5), 1),
        "task_p99_us": round(_pct(task_us, 0.99), 1),
        "task_admitted_fraction": round(admitted / max(1, decisions), 3),
    }
    for name, job in TRAIN_JOBS.items():
        gc.collect()
        train_us = []
        placed = 0
        for _ in range(plans):
            t0 = time.thread_time_ns()
            result = plan_training(job, views, links)
            train_us.append((time.thread_time_ns() - t0) / 1000)
            placed += isinstance(result, Placement)
        out[f"{name}_p50_us"] = round(_pct(train_us, 0.5), 1)
        out[f"{name}_p99_us"] = round(_pct(train_us, 0.99), 1)
        out[f"{name}_placed"] = placed == plans
    return out


# -- b. the sub-domain's placement index -----------------------------------------------------------

INDEX_NODE = Resources(192_000, 2048 * GIB, 8, H100)
INDEX_TASKS = {
    "gpu1": Resources(8_000, 64 * GIB, 1, H100),
    "gpu8": Resources(96_000, 1024 * GIB, 8, H100),
    "cpu": Resources(16_000, 64 * GIB, 0, ""),
}


def index_throughput(nodes: int, task: Resources, churn: int, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    index = PlacementIndex()
    free: dict[str, Resources] = {}
    for i in range(nodes):
        node_id = f"n{i:05d}"
        free[node_id] = INDEX_NODE
        index.put(node_id, H100, INDEX_NODE)
    placed: list[str] = []
    t0 = time.thread_time()
    while True:
        found = index.choose(task)
        if found is None:
            break
        f = free[found] = free[found] - task
        index.put(found, H100, f)
        placed.append(found)
    fill_s = time.thread_time() - t0
    ops = min(churn, len(placed) * 4)
    t0 = time.thread_time()
    for _ in range(ops):
        k = rnd.randrange(len(placed))
        node_id = placed[k]
        placed[k] = placed[-1]
        placed.pop()
        f = free[node_id] = free[node_id] + task
        index.put(node_id, H100, f)
        chosen = index.choose(task)
        assert chosen is not None, "a freed slot must be found again"
        f = free[chosen] = free[chosen] - task
        index.put(chosen, H100, f)
        placed.append(chosen)
    churn_s = time.thread_time() - t0
    return {
        "nodes": nodes,
        "placed_when_full": len(placed),
        "fill_per_s": round(len(placed) / fill_s) if fill_s else 0,
        "steady_per_s": round(ops / churn_s) if churn_s else 0,
    }


# -- c. fragmentation: best fit vs a first-fit baseline --------------------------------------------

FRAG_NODE = Resources(128_000, 1024 * GIB, 8, H100)
FRAG_TASKS = (
    (Resources(12_000, 96 * GIB, 1, H100), 0.35),
    (Resources(24_000, 192 * GIB, 2, H100), 0.20),
    (Resources(48_000, 384 * GIB, 4, H100), 0.15),
    (Resources(96_000, 768 * GIB, 8, H100), 0.15),
    (Resources(8_000, 32 * GIB, 0, ""), 0.15),
)
EIGHT = FRAG_TASKS[3][0]


class FirstFit:
    """The baseline: the first node in id order with room (no index, no best fit)."""

    def __init__(self, n: int) -> None:
        self.g = [FRAG_NODE.gpus] * n
        self.c = [FRAG_NODE.cpu_millis] * n
        self.m = [FRAG_NODE.memory_bytes] * n

    def place(self, r: Resources) -> int | None:
        g, c, m = self.g, self.c, self.m
        for i in range(len(g)):
            if g[i] >= r.gpus and c[i] >= r.cpu_millis and m[i] >= r.memory_bytes:
                g[i] -= r.gpus
                c[i] -= r.cpu_millis
                m[i] -= r.memory_bytes
                return i
        return None

    def free(self, i: int, r: Resources) -> None:
        self.g[i] += r.gpus
        self.c[i] += r.cpu_millis
        self.m[i] += r.memory_bytes

    def state(self) -> list[tuple[int, int, int]]:
        return list(zip(self.g, self.c, self.m, strict=True))


class BestFit:
    """The sub-domain's :class:`PlacementIndex`, with the free vectors kept beside it."""

    def __init__(self, n: int) -> None:
        self.index = PlacementIndex()
        self.free_of: list[Resources] = [FRAG_NODE] * n
        for i in range(n):
            self.index.put(str(i), H100, FRAG_NODE)

    def place(self, r: Resources) -> int | None:
        chosen = self.index.choose(r)
        if chosen is None:
            return None
        i = int(chosen)
        self.free_of[i] = self.free_of[i] - r
        self.index.put(chosen, H100, self.free_of[i])
        return i

    def free(self, i: int, r: Resources) -> None:
        self.free_of[i] = self.free_of[i] + r
        self.index.put(str(i), H100, self.free_of[i])

    def state(self) -> list[tuple[int, int, int]]:
        return [(f.gpus, f.cpu_millis, f.memory_bytes) for f in self.free_of]


def _frag_sample(state: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """(free GPUs, free GPUs stranded on nodes that cannot host an 8-GPU task, 8-GPU tasks that fit)."""
    free = stranded = fits8 = 0
    for g, c, m in state:
        free += g
        if g >= EIGHT.gpus and c >= EIGHT.cpu_millis and m >= EIGHT.memory_bytes:
            fits8 += 1
        else:
            stranded += g
    return free, stranded, fits8


def fragmentation(
    nodes: int, arrivals: int, seed: int, policy: Callable[[int], FirstFit | BestFit], load: float = 1.0
) -> dict[str, Any]:
    """One seeded stream; ``load``: offered GPU-time over GPU capacity (1.0: exactly full on average)."""
    rnd = random.Random(seed)
    sizes = [t for t, _ in FRAG_TASKS]
    weights = [w for _, w in FRAG_TASKS]
    mean_gpus = sum(t.gpus * w for t, w in FRAG_TASKS)
    lifetime = load * nodes * FRAG_NODE.gpus / mean_gpus  # one arrival per tick
    warmup = int(3 * lifetime)
    sched = policy(nodes)
    ends: list[tuple[float, int, int, Resources]] = []
    seq = 0
    asked = accepted = asked8 = accepted8 = 0
    samples: list[tuple[int, int, int]] = []
    used_gpus = 0
    util: list[float] = []
    for t in range(warmup + arrivals):
        while ends and ends[0][0] <= t:
            _, _, gone, r = heapq.heappop(ends)
            sched.free(gone, r)
            used_gpus -= r.gpus
        r = rnd.choices(sizes, weights)[0]
        life = rnd.expovariate(1 / lifetime)
        node = sched.place(r)
        if node is not None:
            seq += 1
            heapq.heappush(ends, (t + life, seq, node, r))
            used_gpus += r.gpus
        if t < warmup:
            continue
        asked += 1
        accepted += node is not None
        if r.gpus == 8:
            asked8 += 1
            accepted8 += node is not None
        if (t - warmup) % 250 == 0:
            samples.append(_frag_sample(sched.state()))
            util.append(used_gpus / (nodes * FRAG_NODE.gpus))
    free = sum(s[0] for s in samples)
    return {
        "nodes": nodes,
        "arrivals": arrivals,
        "offered_load": load,
        "stranded_free_gpu_fraction": round(sum(s[1] for s in samples) / free, 4) if free else 0.0,
        "eight_gpu_tasks_placeable": round(statistics.mean(s[2] for s in samples), 1),
        "acceptance_rate": round(accepted / asked, 4),
        "acceptance_rate_8gpu": round(accepted8 / asked8, 4) if asked8 else 0.0,
        "gpu_utilization": round(statistics.mean(util), 4),
    }


# -- d. mis-dispatch under stale summaries ---------------------------------------------------------

MIS_TASKS = (
    (Resources(8_000, 64 * GIB, 1, H100), 0.3),
    (Resources(16_000, 128 * GIB, 2, ""), 0.2),
    (Resources(32_000, 256 * GIB, 4, A100), 0.15),
    (Resources(64_000, 512 * GIB, 8, ""), 0.1),
    (Resources(8_000, 32 * GIB, 0, ""), 0.25),
)


class SubDomainSim:
    """One sub-domain: its nodes, its real PlacementIndex, and what its summary would say."""

    def __init__(self, sd: str, nodes: list[Node]) -> None:
        self.sd = sd
        self.nodes = {n.node_id: n for n in nodes}
        self.index = PlacementIndex()
        for n in nodes:
            self.index.put(n.node_id, n.capacity.gpu_model, n.free)
        self.out: set[str] = set()  # cordoned or failed: not placeable, not in the summary
        self.handled = 0  # placements the master sent here (each answered at once)
        self.dirty = True

    def place(self, r: Resources) -> str | None:
        self.handled += 1
        node_id = self.index.choose(r)
        if node_id is None:
            return None
        n = self.nodes[node_id]
        n.free = n.free - r
        self.index.put(node_id, n.capacity.gpu_model, n.free)
        self.dirty = True
        return node_id

    def release(self, node_id: str, r: Resources) -> None:
        n = self.nodes[node_id]
        n.free = n.free + r
        if node_id not in self.out:
            self.index.put(node_id, n.capacity.gpu_model, n.free)
        self.dirty = True

    def set_out(self, node_id: str, out: bool) -> None:
        n = self.nodes[node_id]
        if out:
            self.out.add(node_id)
            self.index.remove(node_id)
        else:
            self.out.discard(node_id)
            self.index.put(node_id, n.capacity.gpu_model, n.free)
        self.dirty = True

    def summary(self) -> Summary:
        return summarize([n for n in self.nodes.values() if n.node_id not in self.out])


def misdispatch(
    subdomains: int, per: int, arrivals: int, every: int, seed: int, outage: float = 0.0
) -> dict[str, Any]:
    """``outage``: the fraction of nodes out (cordoned or failed) at any time, each out for ~500 ticks."""
    rnd = random.Random(seed)
    sims = {
        f"sd-{i:02d}": SubDomainSim(f"sd-{i:02d}", make_nodes(f"sd-{i:02d}", per, rnd, used=True))
        for i in range(subdomains)
    }
    all_nodes = [(sd, node_id) for sd, s in sims.items() for node_id in s.nodes]
    placer = Placer()
    sizes = [t for t, _ in MIS_TASKS]
    weights = [w for _, w in MIS_TASKS]
    total_gpus = sum(n.free.gpus for s in sims.values() for n in s.nodes.values())
    mean_gpus = sum(t.gpus * w for t, w in MIS_TASKS)
    lifetime = 0.9 * total_gpus / mean_gpus  # ~90% offered load on the GPUs left free
    outage_s = 500.0
    out_rate = outage * len(all_nodes) / outage_s  # nodes going out per tick
    ends: list[tuple[float, int, str, str, Resources]] = []
    back: list[tuple[float, str, str]] = []
    decisions = refused = placed = nofit = seq = 0
    since = every  # refresh at the start

    def refresh(now: float) -> None:
        for sd, s in sims.items():
            if s.dirty:
                placer.update(sd, "east", s.summary(), now, applied=s.handled)
                s.dirty = False

    warmup = int(2 * lifetime)
    for t in range(warmup + arrivals):
        now = float(t)
        while ends and ends[0][0] <= t:
            _, _, sd, where, r = heapq.heappop(ends)
            sims[sd].release(where, r)
        while back and back[0][0] <= t:
            _, sd, where = heapq.heappop(back)
            sims[sd].set_out(where, False)
        if out_rate and rnd.random() < out_rate:
            sd, where = rnd.choice(all_nodes)
            if where not in sims[sd].out:
                sims[sd].set_out(where, True)
                heapq.heappush(back, (t + rnd.expovariate(1 / outage_s), sd, where))
        r = rnd.choices(sizes, weights)[0]
        life = rnd.expovariate(1 / lifetime)
        avoid: dict[str, float] = {}
        for _ in range(3):  # the master re-places a rejected task (skipping who refused it)
            if since >= every:
                refresh(now)
                since = 0
            choice = placer.choose(r, avoid)
            if isinstance(choice, NoFit):
                nofit += t >= warmup
                break
            sd = choice.subdomain_id
            placer.commit(sd, r, now, choice.gpu_model)
            since += 1
            node_id = sims[sd].place(r)
            if t >= warmup:
                decisions += 1
                refused += node_id is None
            if node_id is not None:
                seq += 1
                heapq.heappush(ends, (t + life, seq, sd, node_id, r))
                placed += t >= warmup
                break
            avoid[sd] = now
    return {
        "summary_every": every,
        "nodes_out": outage,
        "subdomains": subdomains,
        "nodes": subdomains * per,
        "decisions": decisions,
        "refused": refused,
        "placed": placed,
        "master_nofit": nofit,
        "refused_per_decision": round(refused / decisions, 4) if decisions else 0.0,
        "refused_per_placed": round(refused / placed, 4) if placed else 0.0,
    }


# -- the run ---------------------------------------------------------------------------------------


def _table(title: str, rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str]]) -> None:
    print(f"\n{title}")
    widths = [max(len(head), *(len(str(r.get(key, ""))) for r in rows)) for key, head in cols]
    print("  ".join(head.rjust(w) for (_, head), w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(key, "")).rjust(w) for (key, _), w in zip(cols, widths, strict=True)))


def run(*, smoke: bool, out: pathlib.Path) -> dict[str, Any]:
    runs = 1 if smoke else 3
    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "scheduler",
        "smoke": smoke,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }

    feds = (
        [Federation(100, 1), Federation(100, 10)]
        if smoke
        else [
            Federation(100, 1),
            Federation(1_000, 2),
            Federation(1_000, 10),
            Federation(10_000, 10),
            Federation(10_000, 100),
        ]
    )
    decisions, plans = (200, 10) if smoke else (2_000, 100)
    results["master_latency"] = [
        _median_of([master_latency(f, decisions, plans, seed) for seed in range(runs)]) for f in feds
    ]

    sizes = [100] if smoke else [100, 1_000, 10_000]
    churn = 500 if smoke else 20_000
    rows = []
    for name, task in INDEX_TASKS.items():
        for n in sizes:
            row = _median_of([index_throughput(n, task, churn, seed) for seed in range(runs)])
            rows.append({"task": name, **row})
    results["index_throughput"] = rows

    frag_nodes, frag_arrivals = (100, 2_000) if smoke else (1_000, 20_000)
    results["fragmentation"] = [
        {
            "policy": name,
            **_median_of(
                [fragmentation(frag_nodes, frag_arrivals, seed, policy, load) for seed in range(runs)]
            ),
        }
        for load in (1.0, 1.2)
        for name, policy in (("best_fit_index", BestFit), ("first_fit_baseline", FirstFit))
    ]

    sds, per, mis_arrivals = (2, 50, 1_000) if smoke else (10, 100, 10_000)
    results["misdispatch"] = [
        _median_of([misdispatch(sds, per, mis_arrivals, every, seed, outage) for seed in range(runs)])
        for outage in (0.0, 0.01)
        for every in (1, 10, 100)
    ]
    results["wall_s"] = round(time.perf_counter() - started, 1)

    path = out / ("scheduler-smoke.json" if smoke else "scheduler.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    _table(
        "master decision latency (µs; task = Admission.decide + Placer, training = plan_training)",
        results["master_latency"],
        [
            ("nodes", "nodes"),
            ("subdomains", "sub-domains"),
            ("shapes", "shapes"),
            ("task_p50_us", "task p50"),
            ("task_p99_us", "task p99"),
            ("train_64gpu_p50_us", "train64 p50"),
            ("train_64gpu_p99_us", "train64 p99"),
            ("train_512gpu_p50_us", "train512 p50"),
            ("train_512gpu_p99_us", "train512 p99"),
        ],
    )
    _table(
        "sub-domain PlacementIndex throughput (placements/s)",
        results["index_throughput"],
        [
            ("task", "task"),
            ("nodes", "nodes"),
            ("placed_when_full", "placed"),
            ("fill_per_s", "fill/s"),
            ("steady_per_s", "steady/s"),
        ],
    )
    _table(
        f"GPU fragmentation, {frag_nodes} 8-GPU nodes, {frag_arrivals} arrivals after warm-up",
        results["fragmentation"],
        [
            ("offered_load", "load"),
            ("policy", "policy"),
            ("stranded_free_gpu_fraction", "stranded"),
            ("eight_gpu_tasks_placeable", "8-GPU fit"),
            ("acceptance_rate", "accepted"),
            ("acceptance_rate_8gpu", "accepted 8-GPU"),
            ("gpu_utilization", "GPU util"),
        ],
    )
    _table(
        f"mis-dispatch: {sds} sub-domains x {per} nodes, summaries every S placements",
        results["misdispatch"],
        [
            ("nodes_out", "nodes out"),
            ("summary_every", "S"),
            ("decisions", "decisions"),
            ("refused", "refused"),
            ("placed", "placed"),
            ("refused_per_decision", "refused/decision"),
            ("refused_per_placed", "refused/placed"),
            ("master_nofit", "master: no fit"),
        ],
    )
    print(f"wrote {path} ({results['wall_s']} s)")
    return results
