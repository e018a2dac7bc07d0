"""Plain-text tables and JSON for the CLI: pure functions of their inputs (no I/O, no clock).

The domain types come from :mod:`dsdk`, but are only read here (duck-typed), so importing this
module stays cheap: no gRPC, no protobuf.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import shlex
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from domainos.resources import Resources, format_cpus, format_memory

if TYPE_CHECKING:
    from dsdk import ClusterInfo, DatasetInfo, Explanation, Job, Node, Quota, Region, TaskLog

GAP = "  "
ELLIPSIS = "…"
MIN_COLUMN = 4
DASH = "-"


def _cell(value: object) -> str:
    if value is None:
        return DASH
    text = str(value)
    return " ".join(text.split()) if ("\n" in text or "\t" in text) else text


def _fit(widths: list[int], floors: list[int], max_width: int) -> list[int]:
    """Shrink the widest columns, one character at a time, until the row fits (or cannot shrink)."""
    widths = list(widths)
    total = sum(widths) + len(GAP) * (len(widths) - 1)
    while total > max_width:
        shrinkable = [i for i, w in enumerate(widths) if w > floors[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: (widths[i], i))
        widths[widest] -= 1
        total -= 1
    return widths


def _clip(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS if width > 0 else ""


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    right: Collection[int] = (),
    max_width: int | None = None,
) -> str:
    """Align ``rows`` under ``headers``; columns in ``right`` are right-aligned (numbers).

    With ``max_width`` the widest columns are truncated (with ``…``) so each line fits; a column
    never shrinks below its header or :data:`MIN_COLUMN` characters. The last column is not padded.
    """
    cells = [[_cell(v) for v in row] for row in rows]
    n = len(headers)
    for row in cells:
        if len(row) != n:
            raise ValueError(f"row has {len(row)} cells, expected {n}: {row!r}")
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if max_width is not None:
        floors = [min(widths[i], max(len(h), MIN_COLUMN)) for i, h in enumerate(headers)]
        widths = _fit(widths, floors, max_width)

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, v in enumerate(values):
            v = _clip(v, widths[i])
            last = i == n - 1
            if i in right:
                parts.append(v.rjust(widths[i]))
            else:
                parts.append(v if last else v.ljust(widths[i]))
        return GAP.join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def key_values(pairs: Iterable[tuple[str, object]]) -> str:
    """``key:   value`` lines with the values aligned."""
    items = [(k, _cell(v)) for k, v in pairs]
    if not items:
        return ""
    width = max(len(k) for k, _ in items) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {v}".rstrip() for k, v in items)


# -- small formatters --------------------------------------------------------------------------


def fmt_age(ts: float, now: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` since ``ts``; ``-`` when unknown."""
    if ts <= 0:
        return DASH
    return fmt_duration(max(now - ts, 0.0), coarse=True)


def fmt_duration(seconds: float, *, coarse: bool = False) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h01m`` (coarse: one unit)."""
    if seconds < 0:
        return DASH
    if seconds < 10 and not coarse:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m" if coarse else f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h" if coarse else f"{h}h{m:02d}m"
    return f"{h // 24}d"


def fmt_clock(ts: float, *, date: bool = False) -> str:
    """Local wall-clock time of ``ts`` (``-`` when 0)."""
    if ts <= 0:
        return DASH
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(ts))


def fmt_cpus(millis: int) -> str:
    return format_cpus(millis) if millis > 0 else "0"


def fmt_mem(n: int) -> str:
    return format_memory(n) if n > 0 else "0"


def fmt_ratio(free: str, total: str) -> str:
    return f"{free}/{total}"


def fmt_percent(p: float) -> str:
    return f"{p:.0f}%"


def fmt_gpus(free: int, total: int, models: Mapping[str, int] | None = None) -> str:
    if total <= 0:
        return DASH
    names = ",".join(sorted(m for m in (models or {}) if m))
    return f"{free}/{total}" + (f" {names}" if names else "")


def fmt_command(command: Sequence[str], limit: int = 80) -> str:
    text = shlex.join(command) if command else DASH
    # One line: show line breaks inside arguments (inline scripts) as "; " rather than dropping them.
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return _clip("; ".join(line for line in lines if line), limit)


def fmt_resources(
    cpu_millis: int,
    memory_bytes: int,
    gpus: int,
    gpu_model: str = "",
    gpu_share: int = 0,
    gpu_share_memory: int = 0,
) -> str:
    """``cpus=1 memory=256Mi gpus=2 (H100)``; a share of one GPU: ``gpus=0.25 gpu_memory=4Gi``."""
    parts = [f"cpus={fmt_cpus(cpu_millis)}", f"memory={fmt_mem(memory_bytes)}"]
    if gpus:
        parts.append(f"gpus={gpus}" + (f" ({gpu_model})" if gpu_model else ""))
    elif gpu_share:
        share = f"gpus=0.{gpu_share:02d}".rstrip("0")
        if gpu_share_memory:
            share += f" gpu_memory={fmt_mem(gpu_share_memory)}"
        parts.append(share + (f" ({gpu_model})" if gpu_model else ""))
    return " ".join(parts)


def fmt_count(n: float) -> str:
    """``7B``, ``1.5T``, ``350M``, ``20K``, ``999``."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            v = n / size
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{n:g}"


def fmt_shards(shards: Sequence[int]) -> str:
    """``0-3,8,10-11`` (runs of consecutive shards as ranges)."""
    parts: list[str] = []
    i = 0
    while i < len(shards):
        j = i
        while j + 1 < len(shards) and shards[j + 1] == shards[j] + 1:
            j += 1
        parts.append(str(shards[i]) if i == j else f"{shards[i]}-{shards[j]}")
        i = j + 1
    return ",".join(parts)


def spec_facts(spec: Any) -> list[tuple[str, object]]:
    """The scheduling fields of a job spec that are set, as ``(key, text)`` for ``domainctl job``."""
    facts: list[tuple[str, object]] = []
    if spec.exclude_gpu_models:
        facts.append(("not on", ", ".join(spec.exclude_gpu_models)))
    if spec.node_selector:
        facts.append(("nodes", ", ".join(f"{k}={v}" for k, v in sorted(spec.node_selector.items()))))
    if spec.is_gang:
        n, replicas = spec.gang_min, spec.replicas
        who = f"all {n} tasks" if n == replicas else f"the first {n} of {replicas} tasks"
        facts.append(("gang", f"{who} together (timeout {fmt_duration(spec.gang_timeout_s)})"))
    par = spec.parallelism
    if par is not None:
        ranks = par.tp * par.pp * par.dp
        facts.append(("training", f"tp {par.tp} x pp {par.pp} x dp {par.dp} = {ranks} GPUs"))
        model = spec.model
        if model is not None:
            size = fmt_count(model.parameters * model.bytes_per_parameter).replace("B", "G")
            facts.append(
                (
                    "model",
                    f"{fmt_count(model.parameters)} parameters x {model.bytes_per_parameter:g} bytes "
                    f"({size}B of gradients per iteration)",
                )
            )
        if spec.iteration_time_s:
            facts.append(("iteration", fmt_duration(spec.iteration_time_s)))
        span = (
            f"at most {spec.max_cross_domain_loss * 100:g}% of an iteration lost across sub-domains"
            if model is not None and spec.iteration_time_s
            else "one sub-domain (no model size and iteration time to weigh spanning)"
        )
        facts.append(("spanning", span))
    loc = spec.locality
    if loc is not None:
        shards = f"shards {fmt_shards(loc.shards)}" if loc.shards else "shard i for task i"
        facts.append(("locality", f"dataset {loc.dataset}, {shards}, wait {fmt_duration(loc.wait_s)}"))
    aff = spec.affinity
    if aff is not None:
        nodes = [str(n) for n in aff.nodes]
        shown = ", ".join(nodes[:6]) + (f", ... ({len(nodes)} in all)" if len(nodes) > 6 else "")
        facts.append(("affinity", f"task i on node i of [{shown}] ({'soft' if aff.soft else 'hard'})"))
    if spec.distinct_nodes:
        facts.append(("distinct nodes", "yes: no two tasks on one node"))
    return facts


#: Keys of :meth:`JobSpec.to_dict` every job has; the rest are the scheduling fields, set or not.
_BASE_SPEC_KEYS = frozenset(
    ("name", "replicas", "command", "env", "resources", "retry", "labels", "tenant", "priority")
)


def spec_extras(spec: Any) -> dict[str, Any]:
    """The scheduling fields of a spec that are set, in the store form (``-o json`` of a job)."""
    data: dict[str, Any] = spec.to_dict()
    return {k: v for k, v in data.items() if k not in _BASE_SPEC_KEYS}


# -- views ------------------------------------------------------------------------------------

DOMAIN_HEADERS = ("REGION", "SUB-DOMAIN", "STATUS", "NODES", "CPUS", "MEMORY", "GPUS", "TASKS", "NOTE")


def domain_rows(regions: Sequence[Region]) -> list[list[str]]:
    """One row per sub-domain; the region is named on its first row only (a tree, read down)."""
    rows: list[list[str]] = []
    for region in regions:
        if not region.subdomains:
            rows.append([region.name, DASH, "no sub-domains", DASH, DASH, DASH, DASH, DASH, ""])
            continue
        for i, sd in enumerate(region.subdomains):
            notes = []
            if sd.nodes_simulated:
                notes.append(f"{sd.nodes_simulated} simulated")
            if sd.nodes_suspect:
                notes.append(f"{sd.nodes_suspect} suspect")
            if sd.nodes_dead:
                notes.append(f"{sd.nodes_dead} dead")
            rows.append(
                [
                    region.name if i == 0 else "",
                    sd.subdomain_id,
                    "connected" if sd.connected else "disconnected",
                    f"{sd.nodes_ready}/{sd.nodes_total} ready",
                    fmt_ratio(fmt_cpus(sd.free.cpu_millis), fmt_cpus(sd.capacity.cpu_millis)),
                    fmt_ratio(fmt_mem(sd.free.memory_bytes), fmt_mem(sd.capacity.memory_bytes)),
                    fmt_gpus(sd.free.gpus, sd.capacity.gpus, sd.gpus_by_model),
                    str(sd.running_tasks),
                    ", ".join(notes),
                ]
            )
    return rows


def render_domains(regions: Sequence[Region], max_width: int | None = None) -> str:
    """``domainctl domains``: regions -> sub-domains with nodes, free/total capacity, tasks."""
    if not regions:
        return "no sub-domains have registered with the master yet"
    body = table(DOMAIN_HEADERS, domain_rows(regions), right=(7,), max_width=max_width)
    return body + "\n(CPUS, MEMORY, GPUS: free/total over ready nodes)"


NODE_HEADERS = (
    "NODE",
    "SUB-DOMAIN",
    "REGION",
    "STATE",
    "CPUS",
    "CPU%",
    "MEMORY",
    "MEM USED",
    "GPUS",
    "GPU%",
    "TASKS",
    "TOPOLOGY",
)


def fmt_topology(n: Node) -> str:
    """Block, NVLink domain sizes and dataset shards of a node: ``block a1, nvlink 4+4, 2 shards``."""
    parts = []
    if n.block:
        parts.append(f"block {n.block}")
    if len(n.nvlink_domains) > 1 or (n.nvlink_domains and len(n.nvlink_domains[0]) > 1):
        parts.append("nvlink " + "+".join(str(len(d)) for d in n.nvlink_domains))
    if n.datasets:
        parts.append(f"{len(n.datasets)} shard" + ("s" if len(n.datasets) > 1 else ""))
    return ", ".join(parts) or DASH


def node_rows(nodes: Sequence[Node]) -> list[list[str]]:
    rows = []
    for n in nodes:
        total = n.allocatable
        rows.append(
            [
                n.node_id + (" (simulated)" if n.simulated else ""),
                n.subdomain_id,
                n.region,
                n.state
                + (" (draining)" if n.draining else "")
                + ("" if n.health in ("HEALTHY", "UNSPECIFIED") else f" ({n.health.lower()})"),
                fmt_ratio(fmt_cpus(n.free.cpu_millis), fmt_cpus(total.cpu_millis)),
                fmt_percent(n.cpu_percent),
                fmt_ratio(fmt_mem(n.free.memory_bytes), fmt_mem(total.memory_bytes)),
                fmt_mem(n.memory_used_bytes),
                fmt_gpus(n.free.gpus, total.gpus or n.gpus, {n.gpu_model: 1} if n.gpu_model else None),
                fmt_percent(n.gpu_utilization_percent) if (total.gpus or n.gpus) else DASH,
                str(n.running_tasks),
                fmt_topology(n),
            ]
        )
    return rows


def render_nodes(nodes: Sequence[Node], max_width: int | None = None) -> str:
    """``domainctl nodes``: one line per node with free/total, usage, tasks; simulated ones marked."""
    if not nodes:
        return "no nodes"
    body = table(NODE_HEADERS, node_rows(nodes), right=(5, 7, 9, 10), max_width=max_width)
    notes = [
        f"{n.subdomain_id}/{n.node_id}: cordoned by {n.cordoned_by or 'health'}: {n.cordon_reason}"
        for n in nodes
        if n.cordon_reason
    ]
    notes += [
        f"{n.subdomain_id}/{n.node_id}: at risk {n.risk:.2f}" for n in nodes if n.risk and not n.cordon_reason
    ]
    return body + "\n(CPUS, MEMORY, GPUS: free/total allocatable)" + "".join("\n" + line for line in notes)


JOB_HEADERS = ("JOB", "NAME", "STATE", "REPLICAS", "RESOURCES", "AGE", "MESSAGE")


def render_jobs(jobs: Sequence[Job], now: float, max_width: int | None = None) -> str:
    """``domainctl jobs``: newest first."""
    if not jobs:
        return "no jobs"
    rows = [
        [
            j.job_id,
            j.name or DASH,
            j.state.value,
            str(j.replicas),
            fmt_resources(j.resources.cpu_millis, j.resources.memory_bytes, j.resources.gpus),
            fmt_age(j.created_at, now),
            j.message,
        ]
        for j in jobs
    ]
    return table(JOB_HEADERS, rows, right=(3,), max_width=max_width)


TASK_HEADERS = (
    "TASK",
    "ATTEMPT",
    "STATE",
    "NODE",
    "SUB-DOMAIN",
    "REGION",
    "EXIT",
    "STARTED",
    "TOOK",
    "MESSAGE",
)


def task_rows(job: Job, now: float) -> list[list[str]]:
    rows = []
    for t in job.tasks:
        took = DASH
        if t.started_at > 0:
            end = t.finished_at if t.finished_at > 0 else now
            took = fmt_duration(max(end - t.started_at, 0.0))
        rows.append(
            [
                str(t.index),
                str(t.attempt),
                t.state.value,
                t.node_id or DASH,
                t.subdomain_id or DASH,
                t.region or DASH,
                str(t.exit_code) if t.state.terminal and t.state.value != "LOST" else DASH,
                fmt_clock(t.started_at),
                took,
                t.message,
            ]
        )
    return rows


def render_job(job: Job, now: float, max_width: int | None = None, *, command_limit: int = 200) -> str:
    """``domainctl job ID``: the job's facts, then one line per task."""
    r = job.resources
    facts: list[tuple[str, object]] = [
        ("job", job.job_id),
        ("name", job.name or DASH),
        ("state", job.state.value),
        ("message", job.message or DASH),
        ("command", fmt_command(job.command, limit=command_limit)),
        ("replicas", job.replicas),
        (
            "resources",
            fmt_resources(r.cpu_millis, r.memory_bytes, r.gpus, r.gpu_model, r.gpu_share, r.gpu_share_memory)
            + " per task",
        ),
        ("priority", job.spec.priority if job.spec is not None else DASH),
        *(spec_facts(job.spec) if job.spec is not None else []),
        ("created", f"{fmt_clock(job.created_at, date=True)} ({fmt_age(job.created_at, now)} ago)"),
    ]
    if job.finished_at > 0:
        took = fmt_duration(max(job.finished_at - job.created_at, 0.0)) if job.created_at else DASH
        facts.append(("finished", f"{fmt_clock(job.finished_at, date=True)} (took {took})"))
    facts += stats_facts(job)
    facts += goodput_facts(job)
    out = key_values(facts)
    if job.tasks:
        out += "\n\n" + table(TASK_HEADERS, task_rows(job, now), right=(0, 1, 6), max_width=max_width)
    return out


def goodput_facts(job: Job) -> list[tuple[str, object]]:
    """``goodput`` of ``domainctl job``: the effective ratio and where the rest went; stragglers."""
    g = job.goodput
    out: list[tuple[str, object]] = []
    if g.wall_s > 0:
        out.append(
            (
                "goodput",
                f"{100 * g.effective_ratio:.1f}% effective: {fmt_duration(g.productive_s)} productive of "
                f"{fmt_duration(g.wall_s)}; lost {fmt_duration(g.lost_s)} (work since the last checkpoint), "
                f"recovering {fmt_duration(g.recovery_s)}; {g.interruptions} interruptions (per task)",
            )
        )
    if job.stragglers:
        nodes = {t.index: t.node_id for t in job.tasks}
        out.append(("stragglers", ", ".join(f"task {i} on {nodes.get(i) or DASH}" for i in job.stragglers)))
    steps = [t for t in job.tasks if t.step >= 0]
    if steps:
        done = min(t.step for t in steps)
        total = max(t.total_steps for t in steps)
        ck = [t.checkpoint_step for t in steps if t.checkpoint_step >= 0]
        out.append(
            (
                "progress",
                f"step {done}"
                + (f" of {total}" if total else "")
                + " (slowest task)"
                + (f"; last checkpoint at step {min(ck)}" if ck else ""),
            )
        )
    return out


def fmt_bytes(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, as memory is shown)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def stats_facts(job: Job) -> list[tuple[str, object]]:
    """The data-plane lines of ``domainctl job`` (DSDK jobs): calls and bytes moved by distance."""
    st = job.stats
    if st.empty:
        return []
    local = f", {st.local_calls} where their data was" if st.local_calls else ""
    return [
        ("calls", f"{st.calls}{local}"),
        (
            "bytes moved",
            f"between nodes {fmt_bytes(st.bytes_between_nodes)} (same sub-domain {fmt_bytes(st.bytes_inter_node)}, "
            f"across sub-domains {fmt_bytes(st.bytes_inter_subdomain)}, across regions "
            f"{fmt_bytes(st.bytes_inter_region)}); with the client {fmt_bytes(st.bytes_client)}; "
            f"inside nodes {fmt_bytes(st.bytes_intra_node)}",
        ),
        ("between domains", fmt_bytes(st.bytes_between_domains)),
    ]


def render_datasets(datasets: Sequence[DatasetInfo], now: float) -> str:
    """``domainctl datasets``."""
    if not datasets:
        return "no datasets"
    rows = [
        [
            d.name,
            d.tenant or DASH,
            str(d.num_shards),
            str(d.replicas),
            fmt_bytes(d.size_bytes),
            fmt_age(d.created_at, now),
            d.job_id or DASH,
        ]
        for d in datasets
    ]
    return table(
        ("DATASET", "TENANT", "SHARDS", "COPIES", "SIZE", "AGE", "STORED BY JOB"), rows, right=(2, 3, 4)
    )


def render_dataset(d: DatasetInfo, now: float) -> str:
    """``domainctl dataset NAME``: its facts, then where each shard's copies are."""
    facts: list[tuple[str, object]] = [
        ("dataset", d.name),
        ("tenant", d.tenant or DASH),
        ("shards", d.num_shards),
        ("copies", d.replicas),
        ("size", f"{fmt_bytes(d.size_bytes)} (one copy of each shard)"),
        ("stored by job", d.job_id or DASH),
        ("created", f"{fmt_clock(d.created_at, date=True)} ({fmt_age(d.created_at, now)} ago)"),
    ]
    rows = [
        [
            str(s.shard),
            fmt_bytes(s.size_bytes),
            ", ".join(f"{r.node_id} ({r.subdomain_id})" for r in s.replicas),
        ]
        for s in d.shards
    ]
    return key_values(facts) + "\n\n" + table(("SHARD", "SIZE", "COPIES ON"), rows, right=(0, 1))


def job_line(job: Job) -> str:
    """``job j-… SUCCEEDED`` plus the message when there is one."""
    return f"job {job.job_id} {job.state.value}" + (f": {job.message}" if job.message else "")


def progress_line(job: Job, now: float) -> str:
    """One line of progress for ``--wait``: the job state and how many tasks are in each state."""
    counts = job.task_counts()
    detail = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    return f"[{fmt_clock(now)}] job {job.job_id} {job.state.value}" + (f" ({detail})" if detail else "")


def render_logs(logs: Sequence[TaskLog], *, headers: bool | None = None) -> str:
    """Each task's output; ``==> task N (node X) <==`` headers only when there is more than one task."""
    show = len(logs) > 1 if headers is None else headers
    parts: list[str] = []
    for log in logs:
        text = log.text
        if show:
            node = f" (node {log.node_id})" if log.node_id else ""
            parts.append(f"==> task {log.task_index}{node} <==\n")
        if text:
            parts.append(text if text.endswith("\n") else text + "\n")
    return "".join(parts)


def render_info(info: ClusterInfo, now: float) -> str:
    """``domainctl info``."""
    return key_values(
        [
            ("master", info.address or DASH),
            ("master id", info.master_id),
            ("version", info.version or DASH),
            ("store", info.store or DASH),
            ("started", f"{fmt_clock(info.started_at, date=True)} (up {fmt_age(info.started_at, now)})"),
            ("sub-domains", f"{info.subdomains_connected}/{info.subdomains_known} connected"),
            ("nodes ready", info.nodes_ready),
            ("active jobs", info.jobs_active),
        ]
    )


COMPONENT_HEADERS = ("NAME", "KIND", "PID", "STATUS", "LISTEN", "METRICS", "LOG")


def render_components(components: Sequence[Mapping[str, Any]], alive: Mapping[str, bool]) -> str:
    """``domainctl status``: the local federation's processes."""
    rows = [
        [
            str(c.get("name", "")),
            str(c.get("kind", "")),
            str(c.get("pid", "")),
            "running" if alive.get(str(c.get("name")), False) else "stopped",
            str(c.get("listen") or DASH),
            str(c.get("metrics") or DASH),
            str(c.get("log") or DASH),
        ]
        for c in components
    ]
    return table(COMPONENT_HEADERS, rows, right=(2,))


# -- scheduling: quotas and explain ------------------------------------------------------------

QUOTA_HEADERS = ("TENANT", "SCOPE", "CLASS", "USED/LIMIT", "USE")


def fmt_amount(resource_class: str, amount: int) -> str:
    """An amount in its class's unit: ``cpu`` millicores as cores, ``memory`` bytes as a size."""
    if resource_class == "cpu":
        return fmt_cpus(amount)
    if resource_class == "memory":
        return fmt_mem(amount)
    return str(amount)


def quota_rows(quotas: Sequence[Quota]) -> list[list[str]]:
    rows: list[list[str]] = []
    for q in quotas:
        for cls, limit in sorted(q.limits.items()):
            used = int(q.used.get(cls, 0))
            share = fmt_percent(100.0 * used / limit) if limit > 0 else ("0%" if not used else "over")
            rows.append(
                [q.tenant, q.scope, cls, fmt_ratio(fmt_amount(cls, used), fmt_amount(cls, limit)), share]
            )
        if not q.limits:
            rows.append([q.tenant, q.scope, DASH, DASH, DASH])
    return rows


def render_quotas(quotas: Sequence[Quota], max_width: int | None = None) -> str:
    """``domainctl quota ls``: one line per quota and resource class, with usage."""
    if not quotas:
        return "no quotas (tenants are not limited)"
    return table(QUOTA_HEADERS, quota_rows(quotas), max_width=max_width)


def render_explanation(explanation: Explanation) -> str:
    """``domainctl explain JOB``: the job and state, then the master's explanation."""
    head = f"job {explanation.job_id} {explanation.state}".rstrip()
    text = explanation.text.strip() or "(the master gave no explanation)"
    return f"{head}\n{text}"


# -- JSON -------------------------------------------------------------------------------------


def to_plain(obj: Any) -> Any:
    """Dataclasses, enums, bytes, tuples and mappings -> JSON-ready values."""
    if isinstance(obj, Resources):
        return obj.to_dict()  # share fields only when a share is asked for
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
        spec = getattr(obj, "spec", None)
        if "job_id" in out and spec is not None and hasattr(spec, "to_dict"):
            out.update(spec_extras(spec))  # a job's gang, training and locality fields, when set
        if hasattr(obj, "text") and isinstance(getattr(obj, "data", None), bytes):
            out.pop("data", None)
            out["text"] = obj.text
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """Indented, key-sorted JSON of :func:`to_plain` (``-o json``)."""
    return json.dumps(to_plain(obj), indent=2, sort_keys=True, ensure_ascii=False)
