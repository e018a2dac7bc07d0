"""Gang placement through the real daemons: mis-dispatch rate and placement latency under churn.

A ``domainctl up`` federation on loopback (1 master, 2 regions × 2 sub-domains, simulated 8 × H100
agents, every node's 8 GPUs in one NVLink domain, a 400 Gbit/s, 100 km link between the regions and
a power budget per region) takes a seeded, open-loop stream of jobs submitted through the DSDK at a
fixed rate:

* plain gangs: 2–8 tasks of 1, 2, 4 or 8 GPUs, ``gang.min`` = every task (all or nothing);
* training jobs: TP 8 × PP 1–2 × DP 1–4 with a model size and an iteration time (so some may split
  their DP replicas over regions, and some may not), always a gang of all their tasks;
* plain 1-GPU tasks (placed task by task, as before gangs existed).

Every task sleeps for a short, seeded time; the durations are scaled so that the offered GPU load
(GPU-seconds asked per second over the federation's GPUs) is ``load`` (1.2 by default: the cluster
is oversubscribed somewhat, tasks queue, the cluster churns and the 1 s summaries the master plans
from go stale).

Reported per run (and the median over the runs):

* reservations sent / accepted / refused / expired (the master's ``domainos_master_reservations``
  counters, deltas over the run) and the **mis-dispatch rate** = refused for capacity / sent: the
  fraction of the master's reservations a sub-domain had to refuse because the summary it was
  planned from no longer held; the sub-domains' own reservation counters beside them;
  ``task_misdispatch``: one-task placements a sub-domain rejected (the master's
  ``domainos_master_misdispatch_total`` less the refused reservations, floored at 0);
* gangs placed / failed tries (``domainos_master_gangs``);
* gang placement latency p50/p99: submit (the job's ``created_at``) → every gang task RUNNING (the
  latest ``started_at`` of its tasks), for plain gangs and training jobs together and apart;
* plain-task placement latency p50/p99: ``created_at`` → the task's ``started_at``;
* jobs succeeded / failed / cancelled / stuck (not finished by the drain deadline: cancelled, and
  their ``explain`` kept in the JSON), wall time, and CPU seconds of the master, of the sub-domains
  and of the agents (psutil, deltas over the run);
* problems seen: error lines and tracebacks in the daemons' logs, warnings counted by message.

Run it with ``python -m bench --only gang`` (full size: 4 × 50 agents = 200 nodes / 1,600 GPUs,
300 jobs, 3 runs on one federation) or ``python -m bench.gang --help`` for the sizes; ``--smoke``
is 4 × 4 agents, 20 jobs, one run. Results go to ``gang.json`` (``gang-smoke.json`` for
``--smoke``, so CI never overwrites the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = "H100-SXM-80GB"
GPUS_PER_NODE = 8
REGIONS = ("east", "west")
SUBDOMAINS_PER_REGION = 2
#: The mix of the stream: plain gangs, training jobs, plain 1-GPU tasks.
MIX = {"gang": 0.35, "training": 0.25, "plain": 0.40}
#: Region power budget as a multiple of what its GPUs draw at full power (>1: checked, not binding).
POWER_HEADROOM = 1.1


@dataclass(frozen=True)
class Size:
    """How big one benchmark is."""

    agents_per_subdomain: int
    jobs: int
    rate_per_s: float
    runs: int
    load: float = 1.2
    seed: int = 7
    #: Shortest task duration (s); the durations are uniform in [min, 2 × mean − min].
    min_duration_s: float = 0.2

    @property
    def subdomains(self) -> int:
        return len(REGIONS) * SUBDOMAINS_PER_REGION

    @property
    def nodes(self) -> int:
        return self.subdomains * self.agents_per_subdomain

    @property
    def gpus(self) -> int:
        return self.nodes * GPUS_PER_NODE


SMOKE = Size(agents_per_subdomain=4, jobs=20, rate_per_s=4.0, runs=1)
FULL = Size(agents_per_subdomain=50, jobs=300, rate_per_s=3.0, runs=3)


# -- the federation ------------------------------------------------------------------------------


def topology_text(size: Size) -> str:
    """The topology file: 2 regions × 2 sub-domains of ``agents_per_subdomain`` 8 × H100 nodes."""
    node = f"{{cpus: 64, memory: 512Gi, gpus: {GPUS_PER_NODE}, gpu_model: {MODEL}}}"
    region_gpus = SUBDOMAINS_PER_REGION * size.agents_per_subdomain * GPUS_PER_NODE
    budget_kw = round(region_gpus * 0.7 * POWER_HEADROOM, 1)
    lines = ["version: 1", "name: gangbench", "regions:"]
    for region in REGIONS:
        lines += [f"  - name: {region}", f"    power_budget_kw: {budget_kw}", "    subdomains:"]
        for k in range(1, SUBDOMAINS_PER_REGION + 1):
            lines += [
                f"      - id: {region}-{k}",
                "        agents:",
                f"          - count: {size.agents_per_subdomain}",
                "            simulated: true",
                f"            inventory: {node}",
            ]
    lines += ["links:", "  - between: [east, west]", "    bandwidth_gbps: 400", "    distance_km: 100", ""]
    return "\n".join(lines)


class Federation:
    """A ``domainctl up --detach`` federation in a private home."""

    def __init__(self, home: pathlib.Path, size: Size) -> None:
        self.home = home
        self.size = size
        self.env = {**os.environ, "DOMAINOS_HOME": str(home), "PYTHONPATH": str(ROOT)}
        self.env.pop("DOMAINOS_MASTER", None)
        self.state: dict[str, Any] = {}
        self.up_s = 0.0

    def ctl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "domainctl", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
        )  # fmt: skip

    def up(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        topo = self.home / "topology.yaml"
        topo.write_text(topology_text(self.size))
        # Agents register at a bounded rate per sub-domain: allow for it, then some.
        timeout = 60 + 2 * self.size.agents_per_subdomain
        started = time.perf_counter()
        proc = self.ctl(
            "up", "--detach", "--home", str(self.home), "--topology", str(topo), "--timeout", str(timeout),
            timeout=timeout + 60,
        )  # fmt: skip
        self.up_s = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"domainctl up failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
        self.state = json.loads((self.home / "local" / "cluster.json").read_text())

    def down(self) -> None:
        self.ctl("down", "--home", str(self.home), timeout=180)

    @property
    def master(self) -> str:
        return str(self.state["master"])

    def components(self, kind: str) -> list[Mapping[str, Any]]:
        return [c for c in self.state["components"] if c["kind"] == kind]

    def metrics_url(self, name: str) -> str:
        comp = next(c for c in self.state["components"] if c["name"] == name)
        return f"http://{comp['metrics']}/metrics"

    def logs(self) -> list[pathlib.Path]:
        return sorted((self.home / "local" / "logs").glob("*.log"))


# -- counters and CPU --------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text page as ``{'name{label="v"}': value}`` (samples only, no comments)."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


@dataclass
class Counters:
    """What the benchmark reads from the daemons before and after a run."""

    master: dict[str, float] = field(default_factory=dict)
    subdomains: dict[str, float] = field(default_factory=dict)  # summed over the sub-domains
    cpu_s: dict[str, float] = field(default_factory=dict)  # by kind: master, subdomain, agent

    @classmethod
    def read(cls, fed: Federation) -> Counters:
        master = scrape(fed.metrics_url("master"))
        subs: Counter[str] = Counter()
        for comp in fed.components("subdomain"):
            for key, value in scrape(f"http://{comp['metrics']}/metrics").items():
                if key.startswith("domainos_subdomain_reservations_total") or key.startswith(
                    "domainos_subdomain_placements"
                ):
                    subs[key] += value  # type: ignore[assignment]
        cpu: Counter[str] = Counter()
        for comp in fed.state["components"]:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(int(comp["pid"])).cpu_times()
                cpu[str(comp["kind"])] += t.user + t.system  # type: ignore[assignment]
        return cls(master, dict(subs), dict(cpu))

    def minus(self, before: Counters) -> Counters:
        def sub(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
            return {k: v - b.get(k, 0.0) for k, v in a.items()}

        return Counters(
            sub(self.master, before.master),
            sub(self.subdomains, before.subdomains),
            sub(self.cpu_s, before.cpu_s),
        )


def _m(values: Mapping[str, float], name: str, outcome: str | None = None) -> int:
    key = name if outcome is None else f'{name}{{outcome="{outcome}"}}'
    return round(values.get(key, 0.0))


# -- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One job of the stream: what kind, when (seconds after the first), its spec for the DSDK."""

    kind: str
    at: float
    gpus: int
    spec: dict[str, Any]


def _shape(rng: random.Random, kind: str, size: Size) -> tuple[int, dict[str, Any]]:
    """GPUs of one job and its spec without the command (sized to fit in one sub-domain)."""
    sd_gpus = size.agents_per_subdomain * GPUS_PER_NODE
    if kind == "gang":
        per_task = rng.choice([g for g in (1, 2, 4, 8) if 2 * g <= sd_gpus])
        tasks = rng.randint(2, max(2, min(8, sd_gpus // per_task)))
        spec = {"replicas": tasks, "gang": {"min": tasks}, "resources": {"cpus": 1, "gpus": per_task}}
        return tasks * per_task, spec
    if kind == "training":
        while True:
            pp, dp = rng.randint(1, 2), rng.randint(1, 4)
            if pp * dp * 8 <= sd_gpus:
                break
        params = rng.choice([100_000_000, 1_000_000_000, 7_000_000_000])
        spec = {
            "parallelism": {"tp": 8, "pp": pp, "dp": dp},
            "model": {"parameters": params},
            "iteration_time": rng.choice(["1s", "2s", "5s"]),
            "resources": {"cpus": 4, "gpus": 8},
        }
        return 8 * pp * dp, spec
    return 1, {"resources": {"cpus": 1, "gpus": 1}}


def workload(size: Size, seed: int) -> tuple[list[Planned], float]:
    """The seeded stream and its mean task duration (s), scaled to the offered load."""
    rng = random.Random(seed)
    kinds = list(MIX)
    shapes = []
    for _ in range(size.jobs):
        kind = rng.choices(kinds, weights=[MIX[k] for k in kinds])[0]
        shapes.append((kind, *_shape(rng, kind, size)))
    mean_gpus = statistics.fmean(g for _, g, _ in shapes)
    # load = rate × mean GPUs × mean duration / GPUs of the federation.
    mean_s = max(size.min_duration_s, size.load * size.gpus / (size.rate_per_s * mean_gpus))
    high = 2 * mean_s - size.min_duration_s
    out = []
    for i, (kind, gpus, spec) in enumerate(shapes):
        seconds = round(rng.uniform(size.min_duration_s, high), 2)
        out.append(
            Planned(
                kind,
                i / size.rate_per_s,
                gpus,
                {"name": f"{kind}-{i}", "command": ["sleep", str(seconds)], **spec},
            )
        )
    return out, mean_s


# -- one run -------------------------------------------------------------------------------------


def _pct(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))]


def _latency(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    return {
        "n": len(samples),
        "p50_s": round(_pct(samples, 50), 3),
        "p99_s": round(_pct(samples, 99), 3),
        "max_s": round(max(samples), 3),
    }


@dataclass
class RunResult:
    figures: dict[str, Any]
    stuck: list[dict[str, Any]]
    failed: list[dict[str, Any]]


def run_once(fed: Federation, size: Size, seed: int, drain_s: float, say: Any) -> RunResult:
    import dsdk

    stream, mean_s = workload(size, seed)
    before = Counters.read(fed)
    kinds: dict[str, str] = {}
    started = time.monotonic()
    with dsdk.connect(fed.master, home=fed.home) as client:
        for planned in stream:
            delay = started + planned.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            kinds[client.submit(planned.spec).job_id] = planned.kind
        submit_span = time.monotonic() - started
        say(f"  submitted {len(kinds)} jobs in {submit_span:.1f}s; waiting for them to finish")
        final: dict[str, Any] = {}
        deadline = time.monotonic() + drain_s
        while len(final) < len(kinds) and time.monotonic() < deadline:
            done = [
                j.job_id for j in client.jobs() if j.job_id in kinds and j.terminal and j.job_id not in final
            ]
            for job_id in done:
                final[job_id] = client.job(job_id)
            if len(final) < len(kinds):
                time.sleep(0.5)
        wall = time.monotonic() - started
        stuck: list[dict[str, Any]] = []
        for job_id in sorted(set(kinds) - set(final)):  # not finished in time: say why, then cancel
            job = client.job(job_id)
            explained = ""
            with contextlib.suppress(Exception):
                explained = client.explain(job_id).text
            stuck.append(
                {
                    "job_id": job_id,
                    "kind": kinds[job_id],
                    "state": job.state.value,
                    "tasks": [f"{t.index}:{t.state.value}@{t.subdomain_id or '-'}" for t in job.tasks],
                    "message": job.message,
                    "explain": explained,
                }
            )
            with contextlib.suppress(Exception):
                client.cancel(job_id, reason="gang benchmark: not finished by the drain deadline")
        if stuck:  # let the cancels land, so the next run starts on an idle federation
            end = time.monotonic() + 60
            while time.monotonic() < end and any(not client.job(s["job_id"]).terminal for s in stuck):
                time.sleep(0.5)
    delta = Counters.read(fed).minus(before)

    gang_lat: dict[str, list[float]] = {"gang": [], "training": []}
    plain_lat: list[float] = []
    states: Counter[str] = Counter()
    failed = []
    for job_id, job in final.items():
        states[job.state.value.lower()] += 1
        kind = kinds[job_id]
        if job.state.value != "SUCCEEDED":
            failed.append({"job_id": job_id, "kind": kind, "state": job.state.value, "message": job.message})
            continue
        starts = [t.started_at for t in job.tasks if t.started_at > 0]
        if not starts or len(starts) < len(job.tasks):
            continue
        if kind == "plain":
            plain_lat.extend(s - job.created_at for s in starts)
        else:
            gang_lat[kind].append(max(starts) - job.created_at)
    states["stuck"] = len(stuck)

    m = delta.master
    name = "domainos_master_reservations_total"
    sent, accepted = _m(m, name, "sent"), _m(m, name, "accepted")
    refused, expired = _m(m, name, "refused"), _m(m, name, "expired")
    placed_tasks = _m(m, "domainos_master_tasks_placed_total")
    misdispatch_total = _m(m, "domainos_master_misdispatch_total")
    sd = delta.subdomains
    figures: dict[str, Any] = {
        "seed": seed,
        "jobs": {
            "submitted": len(kinds),
            **{k: states.get(k, 0) for k in ("succeeded", "failed", "cancelled", "stuck")},
        },
        "by_kind": dict(Counter(kinds.values())),
        "mean_task_s": round(mean_s, 2),
        "submit_rate_per_s": round(len(kinds) / submit_span, 2) if submit_span > 0 else 0.0,
        "reservations": {"sent": sent, "accepted": accepted, "refused": refused, "expired": expired},
        "misdispatch_rate": round(refused / sent, 4) if sent else 0.0,
        "expired_rate": round(expired / sent, 4) if sent else 0.0,
        "subdomain_reservations": {
            o: round(sd.get(f'domainos_subdomain_reservations_total{{outcome="{o}"}}', 0.0))
            for o in ("accepted", "refused", "committed", "expired")
        },
        "subdomain_placements": {
            "placed": _m(sd, "domainos_subdomain_placements_total"),
            "rejected": _m(sd, "domainos_subdomain_placements_rejected_total"),
        },
        "gangs": {
            "placed": _m(m, "domainos_master_gangs_total", "placed"),
            "failed_tries": _m(m, "domainos_master_gangs_total", "failed"),
        },
        "tasks_placed": placed_tasks,
        # The master's counter holds both refused reservations and rejected one-task placements.
        "misdispatch_total": misdispatch_total,
        "task_misdispatch": max(0, misdispatch_total - refused),
        "gang_latency_s": _latency(gang_lat["gang"] + gang_lat["training"]),
        "plain_gang_latency_s": _latency(gang_lat["gang"]),
        "training_latency_s": _latency(gang_lat["training"]),
        "plain_task_latency_s": _latency(plain_lat),
        "wall_s": round(wall, 2),
        "cpu_s": {k: round(v, 2) for k, v in sorted(delta.cpu_s.items())},
    }
    return RunResult(figures, stuck, failed)


# -- logs ----------------------------------------------------------------------------------------

_NUMBERS = re.compile(r"\b[0-9a-z]*\d[0-9a-z-]*\b")
#: The master's log line for a gang attempt a sub-domain refused (``_reserve``, level info).
_REFUSAL = re.compile(
    r"gang of job (?P<job>\S+) attempt \d+ failed: sub-domain (?P<sd>\S+) refused the reservation: "
    r"task \d+ \((?P<req>[^)]*gpus=(?P<gpus>\d+)[^)]*)\)[^:]*: (?P<why>.*)"
)


def refusal_kind(msg: str) -> str | None:
    """``"8-GPU task: no 8 free GPUs in one NVLink domain"``-style key of a refusal, or None."""
    m = _REFUSAL.search(msg)
    if m is None:
        return "other" if "refused the reservation" in msg else None
    why = m["why"]
    if "NVLink domain" in why:
        what = "no node with that many free GPUs in one NVLink domain"
    elif why.startswith("no ready node has"):
        what = "no node with that many free GPUs"
    else:
        what = _NUMBERS.sub("#", why)[:80]
    return f"{m['gpus']}-GPU task: {what}"


def scan_logs(paths: Sequence[pathlib.Path]) -> dict[str, Any]:
    """Error lines and tracebacks (first few, verbatim), warnings counted by message shape, and the
    sub-domains' reservation refusals counted by task size and reason."""
    errors: list[str] = []
    warnings: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    tracebacks = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("Traceback") or '"exc_info"' in line or '"exception"' in line:
                tracebacks += 1
            if not line.startswith("{"):
                if line.startswith("Traceback") and len(errors) < 20:
                    errors.append(f"{path.stem}: {line}")
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            level = str(rec.get("level", "")).lower()
            kind = refusal_kind(str(rec.get("msg", ""))) if path.stem == "master" else None
            if kind is not None:
                refusals[kind] += 1
            if level in ("error", "critical") and len(errors) < 20:
                errors.append(f"{path.stem}: {rec.get('msg', '')}"[:400])
            elif level == "warning":
                warnings[
                    f"{path.stem.split('-')[0]}: " + _NUMBERS.sub("#", str(rec.get("msg", "")))[:160]
                ] += 1
    return {
        "errors": errors,
        "tracebacks": tracebacks,
        "warnings": [{"n": n, "msg": msg} for msg, n in warnings.most_common(15)],
        # Why sub-domains refused reservations (the master's log, over every run).
        "refusals": dict(refusals.most_common()),
    }


# -- the benchmark -------------------------------------------------------------------------------


def _median_figures(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The median of every number over the runs (nested dicts kept)."""

    def med(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, Mapping):
            keys = [k for k in first if all(isinstance(v, Mapping) and k in v for v in values)]
            return {k: med([v[k] for v in values]) for k in keys}
        if isinstance(first, bool) or not isinstance(first, int | float):
            return first
        m = statistics.median(values)
        return round(m, 4) if isinstance(m, float) else m

    return med(list(runs)) if runs else {}


def _table(results: Mapping[str, Any]) -> Iterator[str]:
    cfg = results["config"]
    yield (
        f"gang benchmark: {cfg['nodes']} nodes / {cfg['gpus']} GPUs in {cfg['subdomains']} sub-domains, "
        f"{cfg['jobs']} jobs at {cfg['rate_per_s']}/s, offered load {cfg['load']}, {cfg['runs']} run(s)"
    )
    rows = [*results["runs"], results["median"]]
    labels = [f"run {i + 1}" for i in range(len(results["runs"]))] + ["median"]
    yield (
        f"{'':8} {'sent':>5} {'acc':>5} {'ref':>4} {'exp':>4} {'misdisp':>8} {'gangs':>6} {'failed':>6} "
        f"{'gang p50':>9} {'gang p99':>9} {'task p50':>9} {'task p99':>9} {'ok':>4} {'stuck':>5} "
        f"{'wall s':>7} {'master cpu s':>12}"
    )

    def lat(d: Mapping[str, Any], k: str) -> str:
        return f"{d[k]:9.2f}" if k in d else f"{'-':>9}"

    for label, r in zip(labels, rows, strict=True):
        res, g = r["reservations"], r["gangs"]
        yield (
            f"{label:8} {res['sent']:5} {res['accepted']:5} {res['refused']:4} {res['expired']:4} "
            f"{r['misdispatch_rate']:8.2%} {g['placed']:6} {g['failed_tries']:6} "
            f"{lat(r['gang_latency_s'], 'p50_s')} {lat(r['gang_latency_s'], 'p99_s')} "
            f"{lat(r['plain_task_latency_s'], 'p50_s')} {lat(r['plain_task_latency_s'], 'p99_s')} "
            f"{r['jobs']['succeeded']:4} {r['jobs']['stuck']:5} {r['wall_s']:7.1f} {r['cpu_s'].get('master', 0.0):12.1f}"
        )


def run(
    *,
    smoke: bool,
    out: pathlib.Path,
    size: Size | None = None,
    home: pathlib.Path | None = None,
    say: Any = None,
) -> dict[str, Any]:
    """Start the federation, run ``size.runs`` seeded streams on it, write and return the figures."""
    size = size or (SMOKE if smoke else FULL)
    say = say or (lambda line: print(line, flush=True))
    results: dict[str, Any] = {
        "benchmark": "gang",
        "smoke": smoke,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            **asdict(size),
            "regions": len(REGIONS),
            "subdomains": size.subdomains,
            "nodes": size.nodes,
            "gpus": size.gpus,
            "mix": MIX,
            "power_budget_kw_per_region": round(
                SUBDOMAINS_PER_REGION * size.agents_per_subdomain * 8 * 0.7 * POWER_HEADROOM, 1
            ),
            "link": "east-west 400 Gbit/s, 100 km",
        },
        "runs": [],
        "stuck_jobs": [],
        "failed_jobs": [],
    }
    tmp = None
    if home is None:
        tmp = tempfile.mkdtemp(prefix="domainos-gang-")
        os.chmod(tmp, 0o755)  # tasks may run as another user: let them reach their directories
        home = pathlib.Path(tmp) / "home"
    fed = Federation(home, size)
    started = time.perf_counter()
    try:
        say(f"gang benchmark: starting {size.nodes} agents in {size.subdomains} sub-domains ({home})")
        fed.up()
        results["up_s"] = round(fed.up_s, 1)
        mean_s = workload(size, size.seed)[1]
        drain = max(60.0, 4 * mean_s + 2 * size.jobs / size.rate_per_s)
        for r in range(size.runs):
            say(f"gang benchmark: run {r + 1}/{size.runs} (seed {size.seed + r})")
            res = run_once(fed, size, size.seed + r, drain, say)
            results["runs"].append(res.figures)
            results["stuck_jobs"].extend({"run": r + 1, **s} for s in res.stuck)
            results["failed_jobs"].extend({"run": r + 1, **f} for f in res.failed[:20])
        results["logs"] = scan_logs(fed.logs())
    finally:
        with contextlib.suppress(Exception):
            fed.down()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    results["median"] = _median_figures(results["runs"])
    results["total_s"] = round(time.perf_counter() - started, 1)
    path = out / ("gang-smoke.json" if smoke else "gang.json")
    path.write_text(json.dumps(results, indent=2))
    for line in _table(results):
        print(line)
    logs = results["logs"]
    print(
        f"daemon logs: {len(logs['errors'])} error lines, {logs['tracebacks']} tracebacks; stuck jobs: {len(results['stuck_jobs'])}"
    )
    print(f"wrote {path}")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gang", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="4 × 4 agents, 20 jobs, one run")
    p.add_argument("--agents", type=int, help="agents per sub-domain (4 sub-domains)")
    p.add_argument("--jobs", type=int, help="jobs per run")
    p.add_argument("--rate", type=float, help="jobs submitted per second")
    p.add_argument("--runs", type=int, help="runs on the one federation (the median is reported)")
    p.add_argument("--load", type=float, help="offered GPU load (1.2: oversubscribed by 20%%)")
    p.add_argument("--seed", type=int)
    p.add_argument("--home", type=pathlib.Path, help="keep the federation's home (logs) here")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    ns = p.parse_args(argv)
    base = SMOKE if ns.smoke else FULL
    changes = {
        k: v
        for k, v in {
            "agents_per_subdomain": ns.agents,
            "jobs": ns.jobs,
            "rate_per_s": ns.rate,
            "runs": ns.runs,
            "load": ns.load,
            "seed": ns.seed,
        }.items()
        if v is not None
    }
    size = Size(**{**asdict(base), **changes})
    ns.out.mkdir(parents=True, exist_ok=True)
    run(smoke=ns.smoke, out=ns.out, size=size, home=ns.home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
