"""The client commands: each talks to the master through :mod:`dsdk` and prints a table or JSON."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import dsdk
from domainos.errors import InvalidArgument

from . import _render


def _width(stream: TextIO | None = None) -> int | None:
    """Terminal width when writing to a terminal; unlimited for pipes and files."""
    stream = stream or sys.stdout
    try:
        if stream.isatty():
            return shutil.get_terminal_size((120, 24)).columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


def _json(ns: argparse.Namespace) -> bool:
    return bool(ns.output == "json")


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def tls_files(ns: argparse.Namespace) -> dsdk.TLSFiles | None:
    """``--tls-ca/--tls-cert/--tls-key`` (all three, or none: then the DSDK finds the files)."""
    given = {f"--tls-{k}": getattr(ns, f"tls_{k}", None) for k in ("ca", "cert", "key")}
    if not any(given.values()):
        return None
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise InvalidArgument(
            "--tls-ca, --tls-cert and --tls-key go together: a CA, a certificate and its key",
            field=missing[0],
        )
    if getattr(ns, "insecure", False):
        raise InvalidArgument("--insecure talks plaintext: it takes no --tls-* files", field="--insecure")
    ca, cert, key = (str(v) for v in given.values())
    return dsdk.TLSFiles(ca, cert, key)


def client_for(ns: argparse.Namespace) -> dsdk.Client:
    """A client for the master named by ``--master``, ``$DOMAINOS_MASTER`` or the local federation.

    Mutual TLS with the ``--tls-*`` files, else those the DSDK finds; ``--insecure``: plaintext.
    """
    return dsdk.connect(ns.master, tls=tls_files(ns), insecure=bool(getattr(ns, "insecure", False)))


# -- read commands ----------------------------------------------------------------------------


def cmd_domains(ns: argparse.Namespace) -> int:
    with client_for(ns) as c:
        regions = c.domains()
    _out(_render.to_json(regions) if _json(ns) else _render.render_domains(regions, _width()))
    return 0


def cmd_nodes(ns: argparse.Namespace) -> int:
    with client_for(ns) as c:
        found = c.list_nodes(ns.subdomain)
    if found.unreachable:
        _err(f"warning: no answer from sub-domain(s): {', '.join(found.unreachable)}")
    _out(_render.to_json(found.nodes) if _json(ns) else _render.render_nodes(found.nodes, _width()))
    return 0


def cmd_node_admin(ns: argparse.Namespace) -> int:
    """``domainctl cordon|drain|uncordon NODE``."""
    from domainos.jobspec import parse_duration

    grace = 0.0
    if getattr(ns, "grace", None) is not None:
        grace = parse_duration(ns.grace, "--grace", 0.0, 3600.0, zero_ok=True)
    with client_for(ns) as c:
        if ns.command == "cordon":
            node, moving = c.cordon(ns.node, reason=ns.reason, subdomain=ns.subdomain), 0
        elif ns.command == "drain":
            node, moving = c.drain(ns.node, reason=ns.reason, subdomain=ns.subdomain, grace_s=grace)
        else:
            node, moving = c.uncordon(ns.node, reason=ns.reason, subdomain=ns.subdomain), 0
    if _json(ns):
        _out(_render.to_json({"node": node, "tasks_moving": moving}))
        return 0
    where = f"{node.subdomain_id}/{node.node_id}"
    if ns.command == "uncordon":
        _out(f"node {where} uncordoned: {node.state}")
    elif ns.command == "cordon":
        _out(f"node {where} cordoned: no new tasks ({node.running_tasks} running keep running)")
    else:
        _out(f"node {where} draining: {moving} tasks moving off (queued again elsewhere, no retry spent)")
    return 0


def _states(raw: Sequence[str]) -> list[dsdk.JobState]:
    return [dsdk.JobState.parse(s) for item in raw for s in item.split(",") if s.strip()]


def cmd_jobs(ns: argparse.Namespace) -> int:
    states = _states(ns.state)
    if ns.limit is not None and ns.limit < 1:
        raise InvalidArgument(f"must be at least 1, got {ns.limit}", field="--limit")
    with client_for(ns) as c:
        jobs = c.jobs(states or None, ns.limit)
    _out(_render.to_json(jobs) if _json(ns) else _render.render_jobs(jobs, time.time(), _width()))
    return 0


def cmd_job(ns: argparse.Namespace) -> int:
    with client_for(ns) as c:
        job = c.job(ns.job_id)
    _out(_render.to_json(job) if _json(ns) else _render.render_job(job, time.time(), _width()))
    return 0


def cmd_logs(ns: argparse.Namespace) -> int:
    if getattr(ns, "follow", False):
        from ._data_commands import follow_logs

        return follow_logs(ns)
    with client_for(ns) as c:
        logs = c.logs(ns.job_id, ns.task, "stderr" if ns.stderr else "stdout")
    if _json(ns):
        _out(_render.to_json(logs))
    else:
        sys.stdout.write(_render.render_logs(logs))
    failed = [log for log in logs if log.error]
    for log in failed:
        _err(f"warning: task {log.task_index}: {log.error}")
    if ns.task is not None and not logs:
        _err(f"warning: job {ns.job_id} has no output for task {ns.task} yet")
    return 1 if failed else 0


def cmd_info(ns: argparse.Namespace) -> int:
    with client_for(ns) as c:
        info = c.info()
    _out(_render.to_json(info) if _json(ns) else _render.render_info(info, time.time()))
    return 0


# -- jobs -------------------------------------------------------------------------------------


def _progress(stream: TextIO) -> Callable[[dsdk.Job], None]:
    def show(job: dsdk.Job) -> None:
        print(_render.progress_line(job, time.time()), file=stream, flush=True)

    return show


def finish(ns: argparse.Namespace, client: dsdk.Client, job: dsdk.Job, *, quiet: bool = False) -> int:
    """Wait for ``job``, print its final state and output; 0 if it SUCCEEDED, else 1."""
    job = client.wait(
        job.job_id, timeout=getattr(ns, "timeout", None), on_update=None if quiet else _progress(sys.stderr)
    )
    logs = client.logs(job.job_id)
    failed = [t.index for t in job.tasks if t.state.value != "SUCCEEDED"]
    errors = []
    if failed:
        errors = [
            lg for lg in client.logs(job.job_id, stream="stderr") if lg.task_index in failed and lg.data
        ]
    if _json(ns):
        _out(_render.to_json({"job": job, "logs": logs, "stderr": errors}))
    else:
        _out(_render.job_line(job))
        sys.stdout.write(_render.render_logs(logs))
        if errors:
            sys.stderr.write(
                "".join(f"==> task {e.task_index} stderr (node {e.node_id}) <==\n{e.text}" for e in errors)
            )
    return 0 if job.succeeded else 1


def _run_spec(ns: argparse.Namespace) -> dict[str, Any]:
    cmd = list(ns.cmd or [])
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise InvalidArgument("is required: domainctl run [options] -- CMD ARGS...", field="command")
    spec: dict[str, Any] = {"command": cmd}
    if ns.name:
        spec["name"] = ns.name
    if ns.replicas is not None:
        spec["replicas"] = _int(ns.replicas, "replicas")
    resources: dict[str, Any] = {}
    if ns.cpus is not None:
        resources["cpus"] = ns.cpus
    if ns.mem is not None:
        resources["memory"] = ns.mem
    if ns.gpus is not None:
        resources["gpus"] = ns.gpus
    if getattr(ns, "gpu_memory", None) is not None:
        resources["gpu_memory"] = ns.gpu_memory
    if ns.gpu_model:
        resources["gpu_model"] = ns.gpu_model
    if resources:
        spec["resources"] = resources
    spec.update(_scheduling_spec(ns))
    if ns.retries is not None:
        spec["retry"] = {"on_exit": _int(ns.retries, "retry.on_exit")}
    if getattr(ns, "priority", None) is not None:
        spec["priority"] = ns.priority
    env = _pairs(ns.env, "env")
    if env:
        spec["env"] = env
    return spec


def _pairs(items: Sequence[str], field: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in items:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"expected KEY=VALUE, got {pair!r}", field=field)
        out[key] = value
    return out


def _scheduling_spec(ns: argparse.Namespace) -> dict[str, Any]:
    """The spec fields of the ``run`` flags for GPU models, labels, gangs, training and locality.

    Values stay as typed (strings): :func:`domainos.jobspec.parse_spec` validates them, so a bad
    flag gets the same message as the same mistake in a job file.
    """
    spec: dict[str, Any] = {}
    excluded = [m.strip() for item in getattr(ns, "exclude_gpu_model", []) for m in item.split(",")]
    if excluded:
        spec["exclude_gpu_models"] = excluded
    selector = _pairs(getattr(ns, "node_selector", []), "node_selector")
    if selector:
        spec["node_selector"] = selector
    gang: dict[str, Any] = {}
    if getattr(ns, "gang", None) not in (None, "all"):
        gang["min"] = _int(ns.gang, "gang.min")
    if getattr(ns, "gang_timeout", None) is not None:
        gang["timeout"] = ns.gang_timeout
    if gang or getattr(ns, "gang", None) is not None:
        spec["gang"] = gang or True
    par = {k: _int(getattr(ns, k), f"parallelism.{k}") for k in ("tp", "pp", "dp") if getattr(ns, k, None)}
    if par:
        spec["parallelism"] = par
    model: dict[str, Any] = {}
    if getattr(ns, "model_params", None) is not None:
        model["parameters"] = ns.model_params
    if getattr(ns, "bytes_per_param", None) is not None:
        model["bytes_per_parameter"] = ns.bytes_per_param
    if model:
        spec["model"] = model
    if getattr(ns, "iteration_time", None) is not None:
        spec["iteration_time"] = ns.iteration_time
    if getattr(ns, "max_cross_domain_loss", None) is not None:
        spec["max_cross_domain_loss"] = ns.max_cross_domain_loss
    locality = {
        key: getattr(ns, attr)
        for key, attr in (("dataset", "dataset"), ("shards", "shards"), ("wait", "locality_wait"))
        if getattr(ns, attr, None) is not None
    }
    if locality:
        spec["locality"] = locality
    return spec


def _int(text: str, field: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"expected a whole number, got {text!r}", field=field) from None


def _submitted(ns: argparse.Namespace, client: dsdk.Client, job: dsdk.Job) -> int:
    if ns.wait:
        if not _json(ns):
            _out(job.job_id)
        return finish(ns, client, job)
    _out(_render.to_json(job) if _json(ns) else job.job_id)
    return 0


def cmd_run(ns: argparse.Namespace) -> int:
    spec = dsdk.as_spec(_run_spec(ns))  # validated before anything is sent
    with client_for(ns) as c:
        return _submitted(ns, c, c.submit(spec))


def cmd_submit(ns: argparse.Namespace) -> int:
    text = sys.stdin.read() if ns.file == "-" else None
    spec = dsdk.load_spec_file(ns.file, text)
    if getattr(ns, "priority", None) is not None:
        from domainos.jobspec import parse_priority

        spec = dataclasses.replace(spec, priority=parse_priority(ns.priority, "--priority"))
    with client_for(ns) as c:
        return _submitted(ns, c, c.submit(spec))


def cmd_cancel(ns: argparse.Namespace) -> int:
    with client_for(ns) as c:
        job = c.cancel(ns.job_id, reason="domainctl cancel")
    if _json(ns):
        _out(_render.to_json(job))
    elif job.terminal:
        _out(_render.job_line(job))
    else:
        _out(f"job {job.job_id} is being cancelled (state {job.state.value})")
    return 0


def cmd_wait(ns: argparse.Namespace) -> int:
    with client_for(ns) as c:
        job = c.wait(ns.job_id, timeout=ns.timeout, on_update=_progress(sys.stderr))
    _out(_render.to_json(job) if _json(ns) else _render.job_line(job))
    return 0 if job.succeeded else 1
