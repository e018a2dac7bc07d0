"""Scale: one real sub-domain manager under a simulated fleet (issue 5, measurements 1 and 2).

One sub-domain manager runs as its own process (``python -m sub_domain --config ...``, insecure,
standalone: no master), and a :class:`node_agent._sim.Fleet` of N simulated 8 × H100 nodes runs in
this process (on its own asyncio loop in a background thread), every node on its own real gRPC
stream to it. Per size N:

1. **Ingest**: wait until the sub-domain's ``/metrics`` says ``domainos_subdomain_nodes{state="ready"}``
   = N, let it settle, then over a steady-state window measure the sub-domain process alone
   (psutil on its pid): CPU cores used (user + system CPU seconds / wall seconds), RSS, and the
   reports per second it ingests (``domainos_subdomain_reports_received`` delta / window). The
   sub-domain exposes no report lag, so lag is *not measured* (the JSON says so).
2. **Failure detection** (the largest N only): at one instant kill 1 % of the nodes (stream
   dropped) and silence another 1 % (stream open, nothing sent). The sub-domain logs every
   transition (``node <id> suspect: ...`` / ``node <id> dead: ...``, JSON lines with a ``ts``),
   so the per-node detection latency is that ``ts`` minus the fault instant: p50/p99/max of the
   time to *suspect* and to *dead*, for killed and silenced nodes apart. ``/metrics`` is polled
   every 100 ms as well, for the time until the dead count reaches the expected number. False
   positives: nodes the sub-domain declared suspect or dead that were not faulted (must be 0),
   counted from the log over the whole run and from the metrics (suspect + dead beyond the faulted).

The full size uses the sub-domain's default detection settings (the JSON records them). The smoke
size (200 nodes, 3 s window) shortens them (full sync 1 s, silent after 2 s, dead after 1 s) so the
whole run stays under 30 s.

Run it with ``python -m bench --only scale`` (full: 1,000 / 5,000 / 10,000 nodes, one run each) or
``python -m bench.scale --help``. Results go to ``scale.json`` (``scale-smoke.json`` for ``--smoke``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROFILE = "h100x8"
#: Fraction of the nodes killed, and another fraction silenced, in the failure-detection run.
FAULT_FRACTION = 0.01
#: The sub-domain's detection defaults (``sub_domain._config.SubDomainConfig``), for the record.
_DETECTION_KEYS = ("report_interval_s", "full_sync_interval_s", "silent_after_s", "dead_after_s")
_STATE_LINE = re.compile(r"^node (\S+) (suspect|dead): ")
_METRIC_LINE = re.compile(r'^domainos_subdomain_(nodes|reports_received_total)(?:\{state="(\w+)"\})? (\S+)$')


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


SMOKE = Size(
    nodes=(200,),
    window_s=3.0,
    settle_s=1.0,
    detection={"full_sync_interval_s": 1.0, "silent_after_s": 2.0, "dead_after_s": 1.0},
    ready_timeout_s=60.0,
)
FULL = Size(nodes=(1_000, 5_000, 10_000), window_s=20.0, settle_s=10.0)


def _detection_settings(overrides: dict[str, float]) -> dict[str, float]:
    from sub_domain._config import SubDomainConfig

    defaults = SubDomainConfig(id="x", region="x")
    return {k: float(overrides.get(k, getattr(defaults, k))) for k in _DETECTION_KEYS}


# -- the sub-domain process ------------------------------------------------------------------------


class SubDomain:
    """``python -m sub_domain`` in its own process, standalone and insecure, logging JSON to a file."""

    def __init__(self, workdir: pathlib.Path, max_nodes: int, detection: dict[str, float]) -> None:
        self.workdir = workdir
        self.config = workdir / "subdomain.yaml"
        self.ready_file = workdir / "ready.json"
        self.log_path = workdir / "subdomain.log"
        lines = [
            "id: scale-1",
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
                    "sub_domain",
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

    def scrape(self) -> tuple[dict[str, int], int]:
        """Nodes by state and the reports-received counter, from ``/metrics``."""
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        nodes: dict[str, int] = {"ready": 0, "suspect": 0, "dead": 0}
        reports = 0
        for line in text.splitlines():
            m = _METRIC_LINE.match(line)
            if m is None:
                continue
            if m.group(1) == "nodes":
                nodes[m.group(2)] = int(float(m.group(3)))
            else:
                reports = int(float(m.group(3)))
        return nodes, reports

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

    def __init__(self, address: str, nodes: int, seed: int) -> None:
        self._address, self._nodes, self._seed = address, nodes, seed
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

        self.fleet = Fleet([self._address], self._nodes, PROFILE, prefix="n", seed=self._seed)
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
    _, reports0 = sd.scrape()
    sent0 = ft.run(lambda: ft.fleet.reports_sent_total)
    cpu0, fleet_cpu0, t0 = _cpu_s(sd_proc), _cpu_s(me), time.monotonic()
    rss_max = 0
    while time.monotonic() - t0 < size.window_s:
        rss_max = max(rss_max, sd_proc.memory_info().rss)
        time.sleep(min(0.5, max(0.0, size.window_s - (time.monotonic() - t0))))
    cpu1, fleet_cpu1, t1 = _cpu_s(sd_proc), _cpu_s(me), time.monotonic()
    nodes, reports1 = sd.scrape()
    sent1 = ft.run(lambda: ft.fleet.reports_sent_total)
    wall = t1 - t0
    rss = sd_proc.memory_info().rss
    return {
        "nodes": n,
        "ready_after_s": round(ready_s, 2),
        "window_s": round(wall, 2),
        "subdomain_cpu_cores": round((cpu1 - cpu0) / wall, 3),
        "subdomain_rss_mib": round(rss / 2**20, 1),
        "subdomain_rss_max_mib": round(max(rss, rss_max) / 2**20, 1),
        "reports_per_s": round((reports1 - reports0) / wall, 1),
        "fleet_reports_sent_per_s": round((sent1 - sent0) / wall, 1),
        "report_lag": "not measured: the sub-domain exposes no report lag",
        "fleet_cpu_cores": round((fleet_cpu1 - fleet_cpu0) / wall, 3),
        "states_at_end": nodes,
    }


def _detection(sd: SubDomain, ft: FleetThread, n: int, settings: dict[str, float]) -> dict[str, Any]:
    fleet = ft.fleet
    rng_pick: Callable[[], tuple[list[str], list[str]]] = lambda: _pick(fleet)  # noqa: E731
    killed, silenced = ft.run(rng_pick)
    faulted = set(killed) | set(silenced)
    expected = len(faulted)

    def _inject() -> float:
        at = time.time()
        fleet.kill(killed)
        fleet.silence(silenced)
        return at

    fault_at = ft.run(_inject)
    t0 = time.monotonic()
    limit = settings["silent_after_s"] + settings["dead_after_s"] + 30.0
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
    time.sleep(0.5)  # the last log lines
    first: dict[tuple[str, str], float] = {}
    for ts, node_id, state in sd.transitions():
        first.setdefault((node_id, state), ts)
    false_pos = sorted({node for node, _ in first if node not in faulted})
    out: dict[str, Any] = {
        "nodes": n,
        "killed": len(killed),
        "silenced": len(silenced),
        "settings": settings,
        "poll_interval_s": 0.1,
        "polls": polls,
        "all_dead_after_s": None if all_dead_s is None else round(all_dead_s, 2),
        "states_at_end": nodes,
        "false_positives": len(false_pos),
        "false_positive_nodes": false_pos[:20],
        "metrics_excess_suspect_or_dead": max(0, max_other),
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


@contextlib.contextmanager
def _setup(tmp: pathlib.Path, n: int, size: Size) -> Iterator[tuple[SubDomain, FleetThread]]:
    workdir = tmp / f"n{n}"
    workdir.mkdir()
    sd = SubDomain(workdir, max(n, 10_000), size.detection)
    sd.start()
    try:
        with FleetThread(sd.listen, n, size.seed) as ft:
            yield sd, ft
    finally:
        sd.stop()


def run(*, smoke: bool, out: pathlib.Path, size: Size | None = None) -> dict[str, Any]:
    size = size or (SMOKE if smoke else FULL)
    settings = _detection_settings(size.detection)
    results: dict[str, Any] = {
        "benchmark": "scale",
        "smoke": smoke,
        "config": {**asdict(size), "profile": PROFILE, "fault_fraction": FAULT_FRACTION, "runs_per_size": 1},
        "detection_settings": settings,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "ingest": [],
        "detection": None,
        "problems": [],
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="domainos-scale-") as tmpdir:
        tmp = pathlib.Path(tmpdir)
        for n in size.nodes:
            with _setup(tmp, n, size) as (sd, ft):
                row = _ingest(sd, ft, n, size)
                fp = sum(1 for _ in sd.transitions())
                row["transitions_before_faults"] = fp
                results["ingest"].append(row)
                print(
                    f"N={n:>6}  ready in {row['ready_after_s']:6.1f} s  sub-domain "
                    f"{row['subdomain_cpu_cores']:.3f} cores  RSS {row['subdomain_rss_mib']:7.1f} MiB  "
                    f"{row['reports_per_s']:8.1f} reports/s  (fleet {row['fleet_cpu_cores']:.2f} cores)",
                    flush=True,
                )
                if n == max(size.nodes):
                    det = _detection(sd, ft, n, settings)
                    results["detection"] = det
                    for key in ("killed_to_suspect_s", "killed_to_dead_s", "silenced_to_suspect_s",
                                "silenced_to_dead_s", "all_to_dead_s"):  # fmt: skip
                        lat = det[key]
                        print(
                            f"  {key:<22} n={lat['n']:>4}/{lat['expected']:<4} "
                            f"p50 {lat.get('p50_s', float('nan')):6.2f} s  "
                            f"p99 {lat.get('p99_s', float('nan')):6.2f} s",
                            flush=True,
                        )
                    print(
                        f"  all dead (metrics, 100 ms polls) after {det['all_dead_after_s']} s; "
                        f"false positives {det['false_positives']}",
                        flush=True,
                    )
                results["problems"] += [f"N={n}: {p}" for p in sd.problems()]
    results["wall_s"] = round(time.monotonic() - started, 1)
    path = out / ("scale-smoke.json" if smoke else "scale.json")
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    p.add_argument("--nodes", type=int, action="append", help="a size (repeatable; default 1k, 5k, 10k)")
    p.add_argument("--window", type=float, help="steady-state window (s)")
    ns = p.parse_args(argv)
    base = SMOKE if ns.smoke else FULL
    size = Size(
        nodes=tuple(ns.nodes) if ns.nodes else base.nodes,
        window_s=ns.window or base.window_s,
        settle_s=base.settle_s,
        detection=base.detection,
        ready_timeout_s=base.ready_timeout_s,
    )
    ns.out.mkdir(parents=True, exist_ok=True)
    run(smoke=ns.smoke, out=ns.out, size=size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
