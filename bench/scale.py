"""Scale: one real sub-domain manager under a simulated fleet (issue 5, measurements 1, 2 and 5).

One sub-domain manager runs as its own process (``python -m sub_domain --config ...``, insecure,
standalone: no master), and a :class:`node_agent._sim.Fleet` of N simulated 8 × H100 nodes runs in
this process (on its own asyncio loop in a background thread), every node on its own real gRPC
stream to it. Per size N, ``runs_per_size`` times (a fresh sub-domain and fleet each run):

1. **Ingest**: wait until the sub-domain's ``/metrics`` says ``domainos_subdomain_nodes{state="ready"}``
   = N, let it settle, then over a steady-state window (as long as the full-sync interval, so it
   holds one full report per node besides the heartbeats) measure the sub-domain process alone
   (psutil on its pid): CPU cores used (user + system CPU seconds / wall seconds), RSS, the reports
   per second it ingests (``domainos_subdomain_reports_received`` delta / window), and the report
   lag p50/p99 read from the ``domainos_subdomain_report_lag_seconds`` histogram's bucket deltas
   over the window (receive time minus the agent's ``sent_at``: exact here, one machine, one
   clock; linear inside a bucket).
2. **Failure detection** (the largest N only): at one instant kill 1 % of the nodes (stream
   dropped) and silence another 1 % (stream open, nothing sent, probes unanswered). The sub-domain
   logs every transition (``node <id> suspect: ...`` / ``node <id> dead: ...``, JSON lines with a
   ``ts``), so the per-node detection latency is that ``ts`` minus the fault instant: p50/p99/max
   of the time to *suspect* and to *dead*, for killed and silenced nodes apart. ``/metrics`` is
   polled every 100 ms as well, for the time until the dead count reaches the expected number.
   False positives: nodes the sub-domain declared suspect (``false_suspects``: each cost a probe)
   or dead (``false_dead``: would have lost their tasks) that were not faulted, counted from the
   log over the whole run (which goes on for ``silent_after_s + probe_timeout_s`` after the last
   death), and from the metrics (suspect + dead beyond the faulted).
5. **Admission cap** (once): two sub-domains with ``max_nodes`` = 10,000 (smoke: 100) and a fleet of
   10,001 (101) nodes given both addresses in order. The first must hold exactly 10,000 ready
   nodes; the one node left over must have been refused by it with ``RESOURCE_EXHAUSTED`` and the
   sub-domain's message (the fleet records every refusal per node), and be ready in the second.

Figures in the JSON are medians over the runs (each run's own figures are kept under ``per_run``;
counts such as false positives are summed over runs). Every size uses the sub-domain's default
detection settings (the JSON records them). The smoke size (200 nodes, 3 s window, one run) stays
under 30 s.

Run it with ``python -m bench --only scale`` (full: 1,000 / 5,000 / 10,000 nodes, 3 runs each, about
10 minutes; run it under ``flock /tmp/bench.lock``) or ``python -m bench.scale --help``. Results go
to ``scale.json`` (``scale-smoke.json`` for ``--smoke``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.gang import scrape as scrape_metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROFILE = "h100x8"
#: Fraction of the nodes killed, and another fraction silenced, in the failure-detection run.
FAULT_FRACTION = 0.01
#: The sub-domain's detection defaults (``sub_domain._config.SubDomainConfig``), for the record.
_DETECTION_KEYS = (
    "report_interval_s",
    "full_sync_interval_s",
    "heartbeat_interval_s",
    "silent_after_s",
    "probe_timeout_s",
    "dead_after_s",
)
_STATE_LINE = re.compile(r"^node (\S+) (suspect|dead): ")
_LAG_BUCKET = re.compile(r'^domainos_subdomain_report_lag_seconds_bucket\{le="([^"]+)"\}$')


@dataclass(frozen=True)
class Size:
    """How big one benchmark is."""

    nodes: tuple[int, ...]
    window_s: float
    #: Wait after all nodes are ready before the window (the registration burst settles).
    settle_s: float
    #: Detection settings given to the sub-domain (empty: its defaults).
    detection: dict[str, float] = field(default_factory=dict)
    ready_timeout_s: float = 600.0
    seed: int = 5
    #: Runs per size (a fresh sub-domain and fleet each); the JSON gives medians.
    runs: int = 3
    #: ``max_nodes`` of the two sub-domains of the admission-cap measurement (the fleet has one more).
    cap_nodes: int = 10_000


SMOKE = Size(nodes=(200,), window_s=3.0, settle_s=1.0, ready_timeout_s=60.0, runs=1, cap_nodes=100)
FULL = Size(nodes=(1_000, 5_000, 10_000), window_s=30.0, settle_s=10.0)


def _detection_settings(overrides: dict[str, float]) -> dict[str, float]:
    from sub_domain._config import SubDomainConfig

    defaults = SubDomainConfig(id="x", region="x")
    return {k: float(overrides.get(k, getattr(defaults, k))) for k in _DETECTION_KEYS}


# -- the sub-domain process ------------------------------------------------------------------------


class SubDomain:
    """``python -m sub_domain`` in its own process, insecure, standalone unless given a ``master``,
    logging JSON to a file."""

    #: The daemon module started (a subclass starts another daemon the same way).
    module = "sub_domain"

    def __init__(
        self,
        workdir: pathlib.Path,
        max_nodes: int,
        detection: dict[str, float],
        master: str = "",
        ident: str = "scale-1",
    ) -> None:
        self.workdir = workdir
        self.config = workdir / "subdomain.yaml"
        self.ready_file = workdir / "ready.json"
        self.log_path = workdir / "subdomain.log"
        lines = [
            f"id: {ident}",
            "region: bench",
            "listen: 127.0.0.1:0",
            "metrics_listen: 127.0.0.1:0",
            "store: memory://",
            f"max_nodes: {max_nodes}",
            "insecure: true",
            "log_level: warning",  # per-node state transitions are warnings; no per-registration lines
            "log_format: json",
        ]
        lines += [f"{k}: {v}" for k, v in detection.items()]
        if master:  # connected to a master (else standalone)
            lines.append(f"master: {master}")
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.listen = ""
        self.metrics = ""
        self._log_pos = 0

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    "--config",
                    str(self.config),
                    "--ready-file",
                    str(self.ready_file),
                ],
                cwd=str(ROOT),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"sub-domain exited {self.proc.returncode}: {self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sub-domain not ready after {timeout:.0f} s: {self.log_path.read_text()}")
            time.sleep(0.05)
        info = json.loads(self.ready_file.read_text())
        self.listen, self.metrics = info["listen"], info["metrics"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def metrics_page(self) -> dict[str, float]:
        """Every sample of its ``/metrics`` page, ``{'name{label="v"}': value}``."""
        return scrape_metrics(f"http://{self.metrics}/metrics")

    def scrape(self) -> tuple[dict[str, int], int]:
        """Nodes by state and the reports-received counter, from ``/metrics``."""
        page = self.metrics_page()
        return _nodes(page), int(page.get("domainos_subdomain_reports_received_total", 0))

    def transitions(self) -> list[tuple[float, str, str]]:
        """``(ts, node_id, state)`` of every suspect/dead line logged so far."""
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                m = _STATE_LINE.match(str(rec.get("msg", "")))
                if m is not None:
                    out.append((float(rec["ts"]), m.group(1), m.group(2)))
        return out

    def problems(self) -> list[str]:
        """Error lines and tracebacks in its log (the first 20)."""
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("level") in ("error", "critical") or "exc" in rec:
                    out.append(str(rec.get("msg", ""))[:300])
                continue
            if line.strip():
                out.append(line[:300])  # not JSON: a crash or a stray print
        return out[:20]


# -- the fleet on its own loop ---------------------------------------------------------------------


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _fleet_loop() -> asyncio.AbstractEventLoop:
    """One asyncio loop in a daemon thread for every fleet of this process, never closed: grpc.aio
    binds its completion queue to the first loop that uses it, so a second loop would break it."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="sim-fleet", daemon=True).start()
        return _LOOP


class FleetThread:
    """A :class:`Fleet` on the fleet loop (a background thread); calls are run on that loop."""

    def __init__(self, address: str, nodes: int, seed: int, *, also: Sequence[str] = ()) -> None:
        self._address, self._nodes, self._seed = address, nodes, seed
        #: Further sub-domain addresses, tried in order after ``address`` (when it is full).
        self._also = tuple(also)
        self._loop = _fleet_loop()
        self.fleet: Any = None

    def __enter__(self) -> FleetThread:
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fleet is not None:
            self.call(self.fleet.shutdown(), timeout=120)

    async def _start(self) -> None:
        from node_agent._sim import Fleet

        self.fleet = Fleet([self._address, *self._also], self._nodes, PROFILE, prefix="n", seed=self._seed)
        await self.fleet.start()

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def run(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """``fn()`` on the fleet's loop (the fleet is not thread-safe)."""

        async def _call() -> Any:
            return fn()

        return self.call(_call(), timeout)


# -- measurements ----------------------------------------------------------------------------------


def _cpu_s(proc: Any) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 1)) - 1))]


def _lat(values: Sequence[float], expected: int) -> dict[str, Any]:
    if not values:
        return {"n": 0, "expected": expected}
    return {
        "n": len(values),
        "expected": expected,
        "p50_s": round(_pct(values, 0.50), 3),
        "p99_s": round(_pct(values, 0.99), 3),
        "max_s": round(max(values), 3),
    }


def _nodes(page: dict[str, float]) -> dict[str, int]:
    """Nodes by state from a ``/metrics`` page."""
    return {
        s: int(page.get(f'domainos_subdomain_nodes{{state="{s}"}}', 0)) for s in ("ready", "suspect", "dead")
    }


def _lag_buckets(page: dict[str, float]) -> list[tuple[float, float]]:
    """The report-lag histogram's cumulative buckets, ``(upper bound s, count)`` sorted."""
    out = []
    for key, value in page.items():
        m = _LAG_BUCKET.match(key)
        if m is not None:
            out.append((float(m.group(1)), value))
    return sorted(out)


def _lag_quantile(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """Quantile ``q`` (s) of the report lags observed between two scrapes, linear inside its bucket;
    None without observations (or when it falls in the +Inf bucket: over 10 s)."""
    b0 = dict(_lag_buckets(before))
    rows = [(le, n - b0.get(le, 0.0)) for le, n in _lag_buckets(after)]
    total = rows[-1][1] if rows else 0.0
    if total <= 0:
        return None
    want = q * total
    lo, below = 0.0, 0.0
    for le, cum in rows:
        if cum >= want:
            if math.isinf(le):
                return None
            inside = cum - below
            return lo + ((want - below) / inside if inside > 0 else 1.0) * (le - lo)
        lo, below = le, cum
    return None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def _wait_ready(sd: SubDomain, n: int, timeout: float) -> tuple[float, dict[str, int]]:
    started = time.monotonic()
    nodes: dict[str, int] = {}
    while time.monotonic() - started < timeout:
        nodes, _ = sd.scrape()
        if nodes["ready"] >= n:
            return time.monotonic() - started, nodes
        if sd.proc is not None and sd.proc.poll() is not None:
            raise RuntimeError(f"sub-domain exited {sd.proc.returncode} while {n} nodes connected")
        time.sleep(0.25)
    raise RuntimeError(f"only {nodes.get('ready', 0)}/{n} nodes ready after {timeout:.0f} s")


def _ingest(sd: SubDomain, ft: FleetThread, n: int, size: Size) -> dict[str, Any]:
    ready_s, _ = _wait_ready(sd, n, size.ready_timeout_s)
    time.sleep(size.settle_s)
    sd_proc = psutil.Process(sd.pid)
    me = psutil.Process()
    page0 = sd.metrics_page()
    sent0 = ft.run(lambda: ft.fleet.reports_sent_total)
    cpu0, fleet_cpu0, t0 = _cpu_s(sd_proc), _cpu_s(me), time.monotonic()
    rss_max = 0
    while time.monotonic() - t0 < size.window_s:
        rss_max = max(rss_max, sd_proc.memory_info().rss)
        time.sleep(min(0.5, max(0.0, size.window_s - (time.monotonic() - t0))))
    cpu1, fleet_cpu1, t1 = _cpu_s(sd_proc), _cpu_s(me), time.monotonic()
    page1 = sd.metrics_page()
    sent1 = ft.run(lambda: ft.fleet.reports_sent_total)
    wall = t1 - t0
    rss = sd_proc.memory_info().rss

    def delta(key: str) -> float:
        return page1.get(key, 0.0) - page0.get(key, 0.0)

    return {
        "nodes": n,
        "ready_after_s": round(ready_s, 2),
        "window_s": round(wall, 2),
        "subdomain_cpu_cores": round((cpu1 - cpu0) / wall, 3),
        "subdomain_rss_mib": round(rss / 2**20, 1),
        "subdomain_rss_max_mib": round(max(rss, rss_max) / 2**20, 1),
        "reports_per_s": round(delta("domainos_subdomain_reports_received_total") / wall, 1),
        "fleet_reports_sent_per_s": round((sent1 - sent0) / wall, 1),
        "report_lag_p50_ms": _ms(_lag_quantile(page0, page1, 0.50)),
        "report_lag_p99_ms": _ms(_lag_quantile(page0, page1, 0.99)),
        # A probe goes only to a node silent for silent_after_s: in steady state there should be none.
        "probes_sent": int(delta("domainos_subdomain_probes_total")),
        "fleet_cpu_cores": round((fleet_cpu1 - fleet_cpu0) / wall, 3),
        "states_at_end": _nodes(page1),
    }


def _detection(sd: SubDomain, ft: FleetThread, n: int, settings: dict[str, float]) -> dict[str, Any]:
    fleet = ft.fleet
    rng_pick: Callable[[], tuple[list[str], list[str]]] = lambda: _pick(fleet)  # noqa: E731
    killed, silenced = ft.run(rng_pick)
    faulted = set(killed) | set(silenced)
    expected = len(faulted)
    page0 = sd.metrics_page()

    def _inject() -> float:
        at = time.time()
        fleet.kill(killed)
        fleet.silence(silenced)
        return at

    fault_at = ft.run(_inject)
    t0 = time.monotonic()
    limit = settings["silent_after_s"] + settings["probe_timeout_s"] + settings["dead_after_s"] + 30.0
    polls = 0
    all_dead_s: float | None = None
    max_other = 0
    nodes: dict[str, int] = {}
    while time.monotonic() - t0 < limit:
        nodes, _ = sd.scrape()
        polls += 1
        max_other = max(max_other, nodes["suspect"] + nodes["dead"] - expected)
        if nodes["dead"] >= expected:
            all_dead_s = time.monotonic() - t0
            break
        time.sleep(0.1)
    # Keep watching as long again as a detection may take: a healthy node wrongly declared dead
    # late would show here.
    time.sleep(settings["silent_after_s"] + settings["probe_timeout_s"])
    page1 = sd.metrics_page()
    first: dict[tuple[str, str], float] = {}
    for ts, node_id, state in sd.transitions():
        first.setdefault((node_id, state), ts)
    false_suspect = sorted({node for node, state in first if node not in faulted and state == "suspect"})
    false_dead = sorted({node for node, state in first if node not in faulted and state == "dead"})
    false_pos = sorted(set(false_suspect) | set(false_dead))
    out: dict[str, Any] = {
        "nodes": n,
        "killed": len(killed),
        "silenced": len(silenced),
        "poll_interval_s": 0.1,
        "polls": polls,
        "all_dead_after_s": None if all_dead_s is None else round(all_dead_s, 2),
        "states_at_end": _nodes(page1),
        "false_positives": len(false_pos),
        "false_suspects": len(false_suspect),
        "false_dead": len(false_dead),
        "false_positive_nodes": false_pos[:20],
        "metrics_excess_suspect_or_dead": max(0, max_other),
        "probes_sent": int(
            page1.get("domainos_subdomain_probes_total", 0) - page0.get("domainos_subdomain_probes_total", 0)
        ),
        "probes_answered": int(
            page1.get("domainos_subdomain_probes_answered_total", 0)
            - page0.get("domainos_subdomain_probes_answered_total", 0)
        ),
    }
    for group, ids in (("killed", killed), ("silenced", silenced)):
        for state in ("suspect", "dead"):
            lat = [first[(i, state)] - fault_at for i in ids if (i, state) in first]
            out[f"{group}_to_{state}_s"] = _lat(lat, len(ids))
    every = [first[(i, "dead")] - fault_at for i in faulted if (i, "dead") in first]
    out["all_to_dead_s"] = _lat(every, expected)
    return out


def _pick(fleet: Any) -> tuple[list[str], list[str]]:
    both = fleet.pick(2 * FAULT_FRACTION)  # seeded; then alternate, so the two groups are equal
    return both[::2], both[1::2]


def _admission_cap(tmp: pathlib.Path, cap: int, size: Size) -> dict[str, Any]:
    """Two sub-domains of ``max_nodes=cap`` and a fleet of ``cap + 1`` nodes given both addresses
    in order: the first takes exactly ``cap``, refuses the last one with RESOURCE_EXHAUSTED and its
    message, and the second takes that one."""
    (tmp / "cap-1").mkdir()
    (tmp / "cap-2").mkdir()
    first = SubDomain(tmp / "cap-1", cap, size.detection, ident="cap-1")
    second = SubDomain(tmp / "cap-2", cap, size.detection, ident="cap-2")
    expected_message = (
        f"sub-domain cap-1 is full: max_nodes={cap} nodes are registered; try another sub-domain"
    )
    try:
        first.start()
        second.start()
        with FleetThread(first.listen, cap + 1, size.seed, also=[second.listen]) as ft:
            t0 = time.monotonic()
            while first.scrape()[0]["ready"] + second.scrape()[0]["ready"] < cap + 1:
                if time.monotonic() - t0 > size.ready_timeout_s:
                    break
                time.sleep(0.25)
            ready_s = time.monotonic() - t0
            time.sleep(1.0)  # a second refusal (there must be none) would show by now

            def refusals() -> list[dict[str, Any]]:
                out = []
                for agent in ft.fleet.agents.values():
                    for address, (code, message) in agent.refusals.items():
                        at = "cap-1" if address == first.listen else "cap-2"
                        where = "cap-1" if agent.address == first.listen else "cap-2"
                        out.append(
                            {"node": agent.node_id, "by": at, "code": code, "message": message,
                             "registered_in": where if agent.connected else None}
                        )  # fmt: skip
                return out

            refused = ft.run(refusals)
            # Streams that failed otherwise (not a refusal) also move an agent to the next address.
            errors = ft.run(
                lambda: Counter(
                    a.last_error for a in ft.fleet.agents.values() if a.last_error not in ("", "OK")
                )
            )
            samples = ft.run(
                lambda: Counter(
                    f"{a.last_error}: {a.last_message[:160]}"
                    for a in ft.fleet.agents.values()
                    if a.last_error not in ("", "OK")
                ).most_common(3)
            )
            n1, n2 = first.scrape()[0], second.scrape()[0]
            page1 = first.metrics_page()
    finally:
        first.stop()
        second.stop()
    return {
        "max_nodes": cap,
        "fleet_nodes": cap + 1,
        "first_ready": n1["ready"],
        "second_ready": n2["ready"],
        "first_refused_full": int(
            page1.get('domainos_subdomain_registrations_refused_total{reason="full"}', 0)
        ),
        "refusals": refused[:10],
        "expected_message": expected_message,
        "message_matches": bool(refused) and all(r["message"] == expected_message for r in refused),
        "exact": n1["ready"] == cap and n2["ready"] == 1 and len(refused) == 1,
        "stream_errors_by_code": dict(errors),
        "stream_error_samples": [{"error": e, "nodes": k} for e, k in samples],
        "ready_after_s": round(ready_s, 2),
        "problems": first.problems() + second.problems(),
    }


@contextlib.contextmanager
def _setup(tmp: pathlib.Path, n: int, size: Size, run_no: int = 0) -> Iterator[tuple[SubDomain, FleetThread]]:
    workdir = tmp / f"n{n}-run{run_no}"
    workdir.mkdir()
    sd = SubDomain(workdir, max(n, 10_000), size.detection)
    sd.start()
    try:
        with FleetThread(sd.listen, n, size.seed + run_no) as ft:
            yield sd, ft
    finally:
        sd.stop()


def _median(rows: Sequence[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


#: Figures of an ingest row given as the median of the runs.
_INGEST_MEDIANS = (
    "ready_after_s",
    "subdomain_cpu_cores",
    "subdomain_rss_mib",
    "subdomain_rss_max_mib",
    "reports_per_s",
    "fleet_reports_sent_per_s",
    "report_lag_p50_ms",
    "report_lag_p99_ms",
    "fleet_cpu_cores",
)
_LATENCIES = ("killed_to_suspect_s", "killed_to_dead_s", "silenced_to_suspect_s", "silenced_to_dead_s",
              "all_to_dead_s")  # fmt: skip


def _ingest_median(n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"nodes": n, "runs": len(runs)}
    row.update({k: _median(runs, k) for k in _INGEST_MEDIANS})
    row["probes_sent"] = sum(r["probes_sent"] for r in runs)
    row["transitions_before_faults"] = sum(r["transitions_before_faults"] for r in runs)
    row["states_at_end"] = runs[-1]["states_at_end"]
    row["per_run"] = runs
    return row


def _detection_median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Latencies: the median over runs of each run's p50 / p99 / max; counts: summed over runs."""
    last = runs[-1]
    out: dict[str, Any] = {
        "nodes": last["nodes"],
        "runs": len(runs),
        "killed": last["killed"],
        "silenced": last["silenced"],
        "all_dead_after_s": _median(runs, "all_dead_after_s"),
        "states_at_end": last["states_at_end"],
    }
    for key in ("false_positives", "false_suspects", "false_dead", "metrics_excess_suspect_or_dead",
                "probes_sent", "probes_answered"):  # fmt: skip
        out[key] = sum(r[key] for r in runs)
    out["false_positive_nodes"] = sorted({n for r in runs for n in r["false_positive_nodes"]})[:20]
    for key in _LATENCIES:
        lats = [r[key] for r in runs]
        out[key] = {
            "n": sum(x["n"] for x in lats),
            "expected": sum(x["expected"] for x in lats),
            **{q: _median([x for x in lats if q in x], q) for q in ("p50_s", "p99_s", "max_s")},
        }
    out["per_run"] = runs
    return out


def run(*, smoke: bool, out: pathlib.Path, size: Size | None = None) -> dict[str, Any]:
    size = size or (SMOKE if smoke else FULL)
    settings = _detection_settings(size.detection)
    results: dict[str, Any] = {
        "benchmark": "scale",
        "smoke": smoke,
        "config": {
            **asdict(size),
            "profile": PROFILE,
            "fault_fraction": FAULT_FRACTION,
            "runs_per_size": size.runs,
            "admission_cap_runs": 1,
        },
        "detection_settings": settings,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "ingest": [],
        "detection": None,
        "admission_cap": None,
        "problems": [],
    }
    started = time.monotonic()
    ingest: dict[int, list[dict[str, Any]]] = {n: [] for n in size.nodes}
    detections: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="domainos-scale-") as tmpdir:
        tmp = pathlib.Path(tmpdir)
        for run_no in range(size.runs):
            for n in size.nodes:
                with _setup(tmp, n, size, run_no) as (sd, ft):
                    row = _ingest(sd, ft, n, size)
                    row["transitions_before_faults"] = len(sd.transitions())
                    ingest[n].append(row)
                    lag = row["report_lag_p99_ms"]
                    print(
                        f"run {run_no + 1}/{size.runs} N={n:>6}  ready in {row['ready_after_s']:6.1f} s  "
                        f"sub-domain {row['subdomain_cpu_cores']:.3f} cores  RSS {row['subdomain_rss_mib']:7.1f} "
                        f"MiB  {row['reports_per_s']:8.1f} reports/s  lag p99 {lag} ms  "
                        f"(fleet {row['fleet_cpu_cores']:.2f} cores)",
                        flush=True,
                    )
                    if n == max(size.nodes):
                        det = _detection(sd, ft, n, settings)
                        detections.append(det)
                        for key in _LATENCIES:
                            lat = det[key]
                            print(
                                f"  {key:<22} n={lat['n']:>4}/{lat['expected']:<4} "
                                f"p50 {lat.get('p50_s', float('nan')):6.2f} s  "
                                f"p99 {lat.get('p99_s', float('nan')):6.2f} s",
                                flush=True,
                            )
                        print(
                            f"  all dead (metrics, 100 ms polls) after {det['all_dead_after_s']} s; "
                            f"false suspects {det['false_suspects']}, false dead {det['false_dead']}; "
                            f"probes {det['probes_sent']} sent, {det['probes_answered']} answered",
                            flush=True,
                        )
                    results["problems"] += [f"N={n} run {run_no + 1}: {p}" for p in sd.problems()]
        results["ingest"] = [_ingest_median(n, rows) for n, rows in ingest.items()]
        results["detection"] = _detection_median(detections)
        path = out / ("scale-smoke.json" if smoke else "scale.json")
        path.write_text(json.dumps(results, indent=2))  # the figures so far, should the cap fail
        cap = _admission_cap(tmp, size.cap_nodes, size)
        results["admission_cap"] = cap
        results["problems"] += [f"admission cap: {p}" for p in cap.pop("problems")]
        print(
            f"admission cap {cap['max_nodes']}: {cap['first_ready']} ready in cap-1, "
            f"{cap['second_ready']} in cap-2, refusals {[(r['node'], r['code']) for r in cap['refusals']]}; "
            f"message as expected: {cap['message_matches']}; other stream errors "
            f"{cap['stream_errors_by_code']}",
            flush=True,
        )
    results["wall_s"] = round(time.monotonic() - started, 1)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    p.add_argument("--nodes", type=int, action="append", help="a size (repeatable; default 1k, 5k, 10k)")
    p.add_argument("--window", type=float, help="steady-state window (s)")
    p.add_argument("--runs", type=int, help="runs per size (default 3; smoke 1)")
    p.add_argument("--cap", type=int, help="max_nodes of the admission-cap measurement (default 10000)")
    p.add_argument("--cap-only", action="store_true", help="only the admission-cap measurement, --runs times")
    ns = p.parse_args(argv)
    base = SMOKE if ns.smoke else FULL
    size = dataclasses.replace(
        base,
        nodes=tuple(ns.nodes) if ns.nodes else base.nodes,
        window_s=ns.window or base.window_s,
        runs=ns.runs or base.runs,
        cap_nodes=ns.cap or base.cap_nodes,
    )
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.cap_only:
        return 0 if run_cap_only(smoke=ns.smoke, out=ns.out, size=size)["all_exact"] else 1
    run(smoke=ns.smoke, out=ns.out, size=size)
    return 0


def run_cap_only(*, smoke: bool, out: pathlib.Path, size: Size) -> dict[str, Any]:
    """The admission-cap measurement alone, ``size.runs`` times (``scale-cap.json``)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="domainos-cap-") as tmpdir:
        for run_no in range(size.runs):
            tmp = pathlib.Path(tmpdir) / f"run{run_no}"
            tmp.mkdir()
            cap = _admission_cap(tmp, size.cap_nodes, size)
            rows.append(cap)
            print(
                f"run {run_no + 1}/{size.runs} admission cap {cap['max_nodes']}: {cap['first_ready']} ready "
                f"in cap-1, {cap['second_ready']} in cap-2, refusals "
                f"{[(r['node'], r['code']) for r in cap['refusals']]}; exact {cap['exact']}; message as "
                f"expected {cap['message_matches']}; other stream errors {cap['stream_errors_by_code']}",
                flush=True,
            )
    results = {
        "benchmark": "scale-cap",
        "smoke": smoke,
        "runs": rows,
        "all_exact": all(r["exact"] for r in rows),
    }
    path = out / ("scale-cap-smoke.json" if smoke else "scale-cap.json")
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    sys.exit(main())
