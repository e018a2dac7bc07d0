"""``domainctl top``: a live terminal view of the federation, like ``top``/``htop``/``nvidia-smi``.

Two halves, kept apart so the view can be tested without a master or a terminal:

* :func:`fetch` asks the master (one :class:`dsdk.Client`) for a :class:`Snapshot`: the cluster
  info (the leader), the regions and their sub-domains, the nodes and the running / waiting jobs.
* :func:`render` is a pure function from a :class:`Snapshot` (and :class:`View` options) to a
  ``rich`` renderable: a header of federation totals, the regions -> sub-domains table with
  utilisation bars, the busiest nodes and the running jobs. :func:`render_text` renders it to a
  string (tests, ``--once`` to a pipe).

:func:`cmd_top` refreshes every ``--interval`` seconds in a ``rich.live.Live`` (alternate screen on a
terminal; ``q`` or Ctrl-C quits and restores it), or prints frames separated by a blank line when
standard output is not a terminal; ``--once`` prints one frame.

Bounded fetches: ``ListNodes`` has no server-side sort and its only bound is the per sub-domain page
(the master's ``DEFAULT_NODE_PAGE``, 1000 nodes), so the busiest nodes are chosen among the
first page of each sub-domain; the frame says so when a sub-domain has more nodes than that.
``--nodes 0`` skips the node fan-out altogether. Jobs are listed with a limit (:data:`JOB_LIMIT`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import select
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TextIO

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from domainos.errors import DomainOSError, InvalidArgument

from . import _render

if TYPE_CHECKING:
    import dsdk
    from dsdk import ClusterInfo, Job, Node, Region, SubDomain

#: At most this many jobs are listed per state group (the counts show ``N+`` beyond).
JOB_LIMIT = 500
BAR_WIDTH = 10
CELL_BAR_WIDTH = 8
FULL, EMPTY = "█", "░"
#: Width of a frame when standard output is not a terminal (``$COLUMNS`` wins).
PIPE_WIDTH = 140


# -- the snapshot -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything one frame shows, as fetched at ``taken_at``."""

    taken_at: float
    master_address: str = ""
    info: ClusterInfo | None = None
    regions: tuple[Region, ...] = ()
    #: The nodes fetched (bounded: the first page of each sub-domain), in no particular order.
    nodes: tuple[Node, ...] = ()
    nodes_fetched: bool = True
    #: Sub-domains that did not answer the node fan-out.
    unreachable: tuple[str, ...] = ()
    running: tuple[Job, ...] = ()
    #: True when the running list hit :data:`JOB_LIMIT` (the count is then a lower bound).
    running_capped: bool = False
    pending: int = 0
    scheduled: int = 0
    pending_capped: bool = False
    #: A refresh that failed after the first (the frame shows the last good data and this).
    error: str = ""


@dataclass(frozen=True)
class View:
    """How much of a snapshot to show."""

    nodes: int = 10
    jobs: int = 10
    subdomains: int = 20
    interval: float = 2.0
    #: A live display (the header then says how to quit).
    live: bool = False


def fetch(client: dsdk.Client, *, want_nodes: bool = True) -> Snapshot:
    """One snapshot from the master; errors (unreachable, unauthenticated) propagate."""
    from dsdk import JobState

    info = client.info()
    regions = tuple(client.domains())
    nodes: tuple[Node, ...] = ()
    unreachable: tuple[str, ...] = ()
    if want_nodes:
        found = client.list_nodes()
        nodes, unreachable = found.nodes, found.unreachable
    running = client.jobs([JobState.RUNNING], JOB_LIMIT)
    waiting = client.jobs([JobState.PENDING, JobState.SCHEDULED], JOB_LIMIT)
    return Snapshot(
        taken_at=time.time(),
        master_address=str(getattr(client, "target", "") or info.address),
        info=info,
        regions=regions,
        nodes=nodes,
        nodes_fetched=want_nodes,
        unreachable=unreachable,
        running=tuple(running),
        running_capped=len(running) >= JOB_LIMIT,
        pending=sum(1 for j in waiting if j.state is JobState.PENDING),
        scheduled=sum(1 for j in waiting if j.state is JobState.SCHEDULED),
        pending_capped=len(waiting) >= JOB_LIMIT,
    )


# -- small pieces -------------------------------------------------------------------------------


def share(used: float, total: float) -> float:
    """``used / total`` as a percentage in [0, 100]; 0 when there is no total."""
    if total <= 0:
        return 0.0
    return max(0.0, min(100.0, 100.0 * used / total))


def level_style(percent: float) -> str:
    return "green" if percent < 60 else "yellow" if percent < 85 else "red"


def bar(percent: float, width: int = BAR_WIDTH) -> Text:
    """``████░░░░░░`` filled to ``percent``, coloured by level (plain when colour is off)."""
    filled = round(width * max(0.0, min(100.0, percent)) / 100.0)
    if percent > 0 and filled == 0:
        filled = 1  # any use at all shows
    out = Text(FULL * filled, style=level_style(percent))
    out.append(EMPTY * (width - filled), style="bright_black")
    return out


def meter(used: float, total: float, label: str, *, percent: bool = True, width: int = BAR_WIDTH) -> Text:
    """A bar, the percentage and ``used/total``; ``-`` when there is nothing of this kind."""
    if total <= 0:
        return Text(_render.DASH, style="bright_black")
    p = share(used, total)
    out = bar(p, width)
    if percent:
        out.append(f" {p:3.0f}%", style=level_style(p))
    out.append(" " + label)
    return out


def cell_meter(used: float, total: float, label: str) -> Text:
    """A narrower meter for table cells: the bar and ``used/total``."""
    return meter(used, total, label, percent=False, width=CELL_BAR_WIDTH)


def _used(sd: SubDomain) -> tuple[int, int, int]:
    """(GPUs, CPU millicores, memory bytes) allocated on a sub-domain's ready nodes."""
    c, f = sd.capacity, sd.free
    return (
        max(c.gpus - f.gpus, 0),
        max(c.cpu_millis - f.cpu_millis, 0),
        max(c.memory_bytes - f.memory_bytes, 0),
    )


@dataclass
class _Totals:
    gpus: int = 0
    gpus_used: int = 0
    cpu: int = 0
    cpu_used: int = 0
    mem: int = 0
    mem_used: int = 0
    nodes_ready: int = 0
    nodes_total: int = 0
    tasks: int = 0
    power_w: float = 0.0
    connected: int = 0
    subdomains: int = 0
    models: dict[str, int] = field(default_factory=dict)

    def add(self, sd: SubDomain) -> None:
        g, c, m = _used(sd)
        self.gpus += sd.capacity.gpus
        self.gpus_used += g
        self.cpu += sd.capacity.cpu_millis
        self.cpu_used += c
        self.mem += sd.capacity.memory_bytes
        self.mem_used += m
        self.nodes_ready += sd.nodes_ready
        self.nodes_total += sd.nodes_total
        self.tasks += sd.running_tasks
        self.power_w += sd.power_draw_w
        self.connected += 1 if sd.connected else 0
        self.subdomains += 1
        for model, n in sd.gpus_by_model.items():
            if model:
                self.models[model] = self.models.get(model, 0) + n

    @property
    def gpu_share(self) -> float:
        return share(self.gpus_used, self.gpus)


def _totals(subdomains: Sequence[SubDomain]) -> _Totals:
    t = _Totals()
    for sd in subdomains:
        t.add(sd)
    return t


def _cpus(millis: int) -> str:
    return _render.fmt_cpus(millis)


def _mem(n: int) -> str:
    return _render.fmt_mem(n)


def _power(watts: float) -> str:
    return f"{watts / 1000:.1f} kW" if watts >= 1000 else f"{watts:.0f} W"


def _count(n: int, capped: bool) -> str:
    return f"{n}+" if capped else str(n)


# -- the header ---------------------------------------------------------------------------------


def render_header(snap: Snapshot, view: View) -> Text:
    subs = [sd for r in snap.regions for sd in r.subdomains]
    t = _totals(subs)
    info = snap.info
    out = Text()
    out.append("DomainOS", style="bold")
    if info is not None:
        out.append(f" {info.version}" if info.version else "")
        out.append("  leader ")
        out.append(info.master_id or _render.DASH, style="bold cyan")
        if snap.master_address:
            out.append(f" at {snap.master_address}")
        if info.started_at > 0:
            out.append(f", up {_render.fmt_age(info.started_at, snap.taken_at)}")
        if info.store:
            out.append(f", store {info.store.partition(':')[0]}")  # the kind: sqlite, etcd, memory
    out.append(f"  {_render.fmt_clock(snap.taken_at)}", style="bright_black")
    if view.live:
        out.append(f"  every {view.interval:g}s, q quits", style="bright_black")
    out.append("\n")

    def row(name: str, used: float, total: float, label: str) -> None:
        out.append(f"{name:<7}")
        out.append_text(meter(used, total, label))

    models = ", ".join(f"{n} {m}" for m, n in sorted(t.models.items()))
    row("GPUs", t.gpus_used, t.gpus, f"{t.gpus_used}/{t.gpus} used" + (f"  ({models})" if models else ""))
    out.append("\n")
    row("CPUs", t.cpu_used, t.cpu, f"{_cpus(t.cpu_used)}/{_cpus(t.cpu)} used")
    out.append("\n")
    row("Memory", t.mem_used, t.mem, f"{_mem(t.mem_used)}/{_mem(t.mem)} used")
    out.append("\n")
    out.append(f"Nodes   {t.nodes_ready}/{t.nodes_total} ready")
    out.append(
        f"   Sub-domains {t.connected}/{t.subdomains} connected",
        style="" if t.connected == t.subdomains else "bold red",
    )
    out.append(f"   Regions {len(snap.regions)}")
    if t.power_w > 0:
        out.append(f"   Power {_power(t.power_w)}")
    out.append("\n")
    out.append(f"Jobs    {_count(len(snap.running), snap.running_capped)} running")
    out.append(f", {_count(snap.pending, snap.pending_capped)} pending")
    if snap.scheduled:
        out.append(f", {snap.scheduled} starting")
    out.append(f"   Tasks {t.tasks} running")
    if snap.error:
        out.append("\n")
        out.append(
            f"refresh failed: {snap.error} (showing data from {_render.fmt_clock(snap.taken_at)})",
            style="bold red",
        )
    return out


# -- regions -> sub-domains ---------------------------------------------------------------------


def _status(sd: SubDomain, now: float) -> Text:
    if sd.connected:
        return Text("connected", style="green")
    since = f" {_render.fmt_age(sd.last_seen_at, now)}" if sd.last_seen_at > 0 else ""
    return Text(f"LOST{since}", style="bold red")


def _free(sd: SubDomain) -> str:
    f = sd.free
    parts = []
    if sd.capacity.gpus:
        parts.append(f"{f.gpus} GPU")
    parts.append(f"{_cpus(f.cpu_millis)} CPU")
    parts.append(_mem(f.memory_bytes))
    return " ".join(parts)


def choose_subdomains(regions: Sequence[Region], limit: int) -> tuple[set[str], int]:
    """Which sub-domains get a row when there are more than ``limit``: lost ones first, then the
    busiest (GPU, then CPU share); returns (their ids, how many are left out)."""
    subs = [sd for r in regions for sd in r.subdomains]
    if len(subs) <= limit:
        return {sd.subdomain_id for sd in subs}, 0

    def key(sd: SubDomain) -> tuple[bool, float, float, str]:
        g, c, _ = _used(sd)
        return (
            sd.connected,
            -share(g, sd.capacity.gpus),
            -share(c, sd.capacity.cpu_millis),
            sd.subdomain_id,
        )

    chosen = sorted(subs, key=key)[: max(limit, 0)]
    return {sd.subdomain_id for sd in chosen}, len(subs) - len(chosen)


def _table(title: str, columns: Sequence[str], *, right: Collection[str] = ()) -> Table:
    """A borderless table with a rule under the headers; columns in ``right`` right-aligned."""
    tbl = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        expand=False,
        show_edge=False,
    )
    for name in columns:
        tbl.add_column(
            name,
            justify="right" if name in right else "left",
            no_wrap=True,
            min_width=len(name) if name in right else None,
        )
    return tbl


@dataclass
class FitTable:
    """A table that drops its ``optional`` columns, in that order, until it fits the width it is
    given (rather than squeezing every column to ``…``)."""

    title: str
    columns: tuple[str, ...]
    right: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    rows: list[tuple[tuple[RenderableType, ...], str]] = field(default_factory=list)

    def add_row(self, *cells: RenderableType, style: str = "") -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, expected {len(self.columns)}")
        self.rows.append((cells, style))

    def build(self, dropped: Collection[str] = ()) -> Table:
        keep = [i for i, name in enumerate(self.columns) if name not in dropped]
        tbl = _table(self.title, [self.columns[i] for i in keep], right=self.right)
        for cells, style in self.rows:
            tbl.add_row(*(cells[i] for i in keep), style=style or None)
        return tbl

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for n in range(len(self.optional) + 1):
            tbl = self.build(self.optional[:n])
            natural = console.measure(tbl, options=options.update_width(10_000)).maximum
            if n == len(self.optional) or natural <= options.max_width:
                yield tbl
                return


def render_domains(snap: Snapshot, view: View) -> RenderableType:
    """One row per region (its totals, bold), then one per sub-domain shown."""
    if not snap.regions:
        return Text("no sub-domains have registered with the master yet", style="yellow")
    shown, left_out = choose_subdomains(snap.regions, view.subdomains)
    tbl = FitTable(
        "Regions and sub-domains",
        ("REGION/SUB-DOMAIN", "STATUS", "NODES", "GPU", "CPU", "MEMORY", "FREE", "TASKS", "POWER"),
        right=("NODES", "TASKS", "POWER"),
        optional=("FREE", "POWER", "TASKS", "MEMORY"),
    )
    for region in snap.regions:
        t = _totals(region.subdomains)
        status = Text(
            f"{t.connected}/{t.subdomains} connected", style="" if t.connected == t.subdomains else "red"
        )
        tbl.add_row(
            Text(region.name, style="bold"),
            status,
            f"{t.nodes_ready}/{t.nodes_total}",
            cell_meter(t.gpus_used, t.gpus, f"{t.gpus_used}/{t.gpus}"),
            cell_meter(t.cpu_used, t.cpu, f"{_cpus(t.cpu_used)}/{_cpus(t.cpu)}"),
            cell_meter(t.mem_used, t.mem, f"{_mem(t.mem_used)}/{_mem(t.mem)}"),
            "",
            str(t.tasks),
            _power(t.power_w) if t.power_w > 0 else _render.DASH,
            style="bold",
        )
        for sd in region.subdomains:
            if sd.subdomain_id not in shown:
                continue
            g, c, m = _used(sd)
            cap = sd.capacity
            tbl.add_row(
                "  " + sd.subdomain_id,
                _status(sd, snap.taken_at),
                f"{sd.nodes_ready}/{sd.nodes_total}",
                cell_meter(g, cap.gpus, f"{g}/{cap.gpus}"),
                cell_meter(c, cap.cpu_millis, f"{_cpus(c)}/{_cpus(cap.cpu_millis)}"),
                cell_meter(m, cap.memory_bytes, f"{_mem(m)}/{_mem(cap.memory_bytes)}"),
                _free(sd),
                str(sd.running_tasks),
                _power(sd.power_draw_w) if sd.power_draw_w > 0 else _render.DASH,
            )
    parts: list[RenderableType] = [tbl]
    if left_out:
        parts.append(Text(f"… and {left_out} more sub-domains (connected, less busy)", style="bright_black"))
    return Group(*parts)


# -- the busiest nodes --------------------------------------------------------------------------


def node_busy_key(n: Node) -> tuple[float, float, float, float, int, str, str]:
    """Sort key, busiest first: measured GPU utilisation, GPUs allocated, measured CPU
    utilisation, CPUs allocated, running tasks; then by sub-domain and node id."""
    alloc = n.allocatable
    gpus = alloc.gpus or n.gpus
    gpu_alloc = share(alloc.gpus - n.free.gpus, alloc.gpus) if alloc.gpus else 0.0
    cpu_alloc = share(alloc.cpu_millis - n.free.cpu_millis, alloc.cpu_millis)
    return (
        -(n.gpu_utilization_percent if gpus else 0.0),
        -gpu_alloc,
        -n.cpu_percent,
        -cpu_alloc,
        -n.running_tasks,
        n.subdomain_id,
        n.node_id,
    )


def busiest(nodes: Sequence[Node], limit: int) -> list[Node]:
    """The ``limit`` busiest nodes (see :func:`node_busy_key`)."""
    return sorted(nodes, key=node_busy_key)[: max(limit, 0)]


def _node_state(n: Node) -> Text:
    state = n.state + (" draining" if n.draining else "")
    if n.health not in ("HEALTHY", "UNSPECIFIED"):
        state += f" ({n.health.lower()})"
    ok = n.state.lower() == "ready" and not n.cordon_reason
    return Text(state, style="" if ok else "yellow")


def render_nodes(snap: Snapshot, view: View) -> RenderableType | None:
    if not snap.nodes_fetched or view.nodes <= 0:
        return None
    top = busiest(snap.nodes, view.nodes)
    title = f"Busiest nodes (top {len(top)} of {len(snap.nodes)} fetched, by GPU then CPU utilisation)"
    notes: list[RenderableType] = []
    if snap.unreachable:
        notes.append(Text(f"no answer from sub-domain(s): {', '.join(snap.unreachable)}", style="red"))
    fetched: dict[str, int] = {}
    for n in snap.nodes:
        fetched[n.subdomain_id] = fetched.get(n.subdomain_id, 0) + 1
    partial = [
        f"{sd.subdomain_id} {fetched.get(sd.subdomain_id, 0)} of {sd.nodes_total}"
        for r in snap.regions
        for sd in r.subdomains
        if sd.connected
        and sd.subdomain_id not in snap.unreachable
        and 0 < fetched.get(sd.subdomain_id, 0) < sd.nodes_total
    ]
    if partial:
        notes.append(
            Text(
                "busiest of the first page of nodes of each sub-domain (ListNodes has no server-side "
                f"sort): {', '.join(partial[:5])}"
                + (f" and {len(partial) - 5} more" if len(partial) > 5 else ""),
                style="bright_black",
            )
        )
    if not top:
        return Group(Text("no nodes", style="yellow"), *notes)
    tbl = FitTable(
        title,
        ("NODE", "SUB-DOMAIN", "STATE", "GPU%", "GPUS", "CPU%", "CPUS", "MEM USED", "TASKS"),
        right=("GPUS", "CPUS", "MEM USED", "TASKS"),
        optional=("MEM USED", "CPUS", "SUB-DOMAIN", "GPUS"),
    )
    for n in top:
        alloc = n.allocatable
        gpus = alloc.gpus or n.gpus
        gpu_pct = Text(_render.DASH, style="bright_black")
        if gpus:
            gpu_pct = bar(n.gpu_utilization_percent)
            gpu_pct.append(f" {n.gpu_utilization_percent:3.0f}%")
        cpu_pct = bar(n.cpu_percent)
        cpu_pct.append(f" {n.cpu_percent:3.0f}%")
        model = f" {n.gpu_model}" if n.gpu_model else ""
        tbl.add_row(
            n.node_id + (" (sim)" if n.simulated else ""),
            n.subdomain_id,
            _node_state(n),
            gpu_pct,
            f"{max(gpus - n.free.gpus, 0)}/{gpus}{model}" if gpus else _render.DASH,
            cpu_pct,
            f"{_cpus(max(alloc.cpu_millis - n.free.cpu_millis, 0))}/{_cpus(alloc.cpu_millis)}",
            _mem(n.memory_used_bytes),
            str(n.running_tasks),
        )
    return Group(tbl, *notes)


# -- running jobs -------------------------------------------------------------------------------


def _job_size(j: Job) -> tuple[int, int, int]:
    r = j.resources
    return (j.replicas * r.gpus, j.replicas * r.gpu_share, j.replicas * r.cpu_millis)


def biggest_jobs(jobs: Sequence[Job], limit: int) -> list[Job]:
    """The ``limit`` largest running jobs (GPUs, then CPUs over all tasks), oldest first on ties."""
    ordered = sorted(jobs, key=lambda j: (tuple(-x for x in _job_size(j)), j.created_at, j.job_id))
    return ordered[: max(limit, 0)]


def _goodput(j: Job) -> str:
    g = j.goodput
    return f"{100 * g.effective_ratio:.0f}%" if g.wall_s > 0 else _render.DASH


def render_jobs(snap: Snapshot, view: View) -> RenderableType | None:
    if view.jobs <= 0:
        return None
    if not snap.running:
        return Text("no running jobs", style="bright_black")
    top = biggest_jobs(snap.running, view.jobs)
    total = _count(len(snap.running), snap.running_capped)
    tbl = FitTable(
        f"Running jobs (top {len(top)} of {total}, largest first)",
        ("JOB", "NAME", "TENANT", "TASKS", "PER TASK", "AGE", "GOODPUT"),
        right=("TASKS", "AGE", "GOODPUT"),
        optional=("PER TASK", "TENANT", "NAME"),
    )
    for j in top:
        r = j.resources
        tenant = (j.spec.tenant if j.spec is not None else "") or _render.DASH
        tbl.add_row(
            j.job_id,
            j.name or _render.DASH,
            tenant,
            str(j.replicas),
            _render.fmt_resources(r.cpu_millis, r.memory_bytes, r.gpus, r.gpu_model, r.gpu_share),
            _render.fmt_age(j.created_at, snap.taken_at),
            _goodput(j),
        )
    return tbl


# -- the frame ----------------------------------------------------------------------------------


def render(snap: Snapshot, view: View | None = None) -> RenderableType:
    """The whole frame: header, regions -> sub-domains, busiest nodes, running jobs."""
    view = view or View()
    parts: list[RenderableType] = [render_header(snap, view), Text(""), render_domains(snap, view)]
    for part in (render_nodes(snap, view), render_jobs(snap, view)):
        if part is not None:
            parts += [Text(""), part]
    return Group(*parts)


def make_console(
    file: TextIO, *, color: bool, width: int | None = None, terminal: bool | None = None
) -> Console:
    return Console(
        file=file,
        width=width,
        no_color=not color,
        color_system="auto" if color else None,
        force_terminal=terminal,
        highlight=False,
        emoji=False,
        soft_wrap=False,
    )


def render_text(
    snap: Snapshot, view: View | None = None, *, width: int = PIPE_WIDTH, color: bool = False
) -> str:
    """The frame as text (ANSI styles only with ``color``)."""
    buf = io.StringIO()
    console = make_console(buf, color=color, width=width, terminal=color)
    console.print(render(snap, view))
    return buf.getvalue()


# -- the command --------------------------------------------------------------------------------


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[bool]:
    """Single key presses from ``stream`` (cbreak: Ctrl-C still interrupts); restored on exit.
    Yields False when ``stream`` is not a terminal (then only Ctrl-C quits)."""
    if not _isatty(stream):
        yield False
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(stream: TextIO, keys: bool, seconds: float) -> bool:
    """Sleep ``seconds``; True when ``q`` was pressed meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if not keys:
            time.sleep(left)
            return False
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            ch = os.read(stream.fileno(), 32).decode(errors="replace")
            if "q" in ch.lower():
                return True


def _view(ns: argparse.Namespace) -> View:
    interval = float(ns.interval)
    if not 0.1 <= interval <= 3600:
        raise InvalidArgument(f"must be between 0.1 and 3600 seconds, got {ns.interval}", field="--interval")
    for flag in ("nodes", "jobs", "subdomains"):
        if getattr(ns, flag) < 0:
            raise InvalidArgument(f"must not be negative, got {getattr(ns, flag)}", field=f"--{flag}")
    return View(nodes=ns.nodes, jobs=ns.jobs, subdomains=ns.subdomains, interval=interval)


def _refresh(client: dsdk.Client, last: Snapshot, view: View) -> Snapshot:
    """A new snapshot, or the last one marked with the error when the refresh failed."""
    try:
        return fetch(client, want_nodes=view.nodes > 0)
    except DomainOSError as err:
        return replace(last, error=str(err))


def cmd_top(ns: argparse.Namespace) -> int:
    """``domainctl top``: see the module docstring."""
    from ._commands import client_for

    view = _view(ns)
    out = sys.stdout
    tty = _isatty(out)
    color = tty and not ns.no_color and "NO_COLOR" not in os.environ
    json_out = ns.output == "json"
    with client_for(ns) as client:
        snap = fetch(client, want_nodes=view.nodes > 0)  # the first fetch fails like any command
        if json_out or ns.once or not tty:
            return _print_frames(client, snap, view, ns, out, json_out=json_out, color=color)
        return _live(client, snap, view, out, color=color)


def _pipe_width(out: TextIO) -> int | None:
    """The terminal's width (None: rich asks it), else ``$COLUMNS``, else :data:`PIPE_WIDTH`."""
    if _isatty(out):
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH


def _print_frames(
    client: dsdk.Client,
    snap: Snapshot,
    view: View,
    ns: argparse.Namespace,
    out: TextIO,
    *,
    json_out: bool,
    color: bool,
) -> int:
    """Frames one after another (``--once``: one), separated by a blank line."""
    console = make_console(out, color=color, width=_pipe_width(out), terminal=color or None)
    try:
        while True:
            if json_out:
                out.write(_render.to_json(snap) + "\n")
            else:
                console.print(render(snap, view))
            out.flush()
            if ns.once:
                return 0
            time.sleep(view.interval)
            out.write("\n")
            snap = _refresh(client, snap, view)
    except KeyboardInterrupt:
        return 0


def _live(client: dsdk.Client, snap: Snapshot, view: View, out: TextIO, *, color: bool) -> int:
    """Full screen, redrawn every interval; ``q`` or Ctrl-C quits and restores the terminal."""
    from rich.live import Live

    console = make_console(out, color=color)
    view = replace(view, live=True)
    try:
        with (
            _keys(sys.stdin) as keys,
            Live(render(snap, view), console=console, screen=True, auto_refresh=False) as live,
        ):
            while not _wait_for_quit(sys.stdin, keys, view.interval):
                snap = _refresh(client, snap, view)
                live.update(render(snap, view), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0


__all__ = [
    "Snapshot",
    "View",
    "bar",
    "biggest_jobs",
    "busiest",
    "choose_subdomains",
    "cmd_top",
    "fetch",
    "render",
    "render_text",
]
