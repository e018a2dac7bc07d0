"""Data commands: ``dataset ls | show NAME | rm NAME`` (the master's dataset registry and the
copies on the nodes) and ``logs -f`` (a job's output as it is written)."""

from __future__ import annotations

import argparse
import sys
import time

from . import _render
from ._commands import _json, _out, client_for


def cmd_dataset(ns: argparse.Namespace) -> int:
    action = ns.dataset_command
    with client_for(ns) as c:
        if action == "ls":
            datasets = c.datasets(ns.tenant)
            _out(_render.to_json(datasets) if _json(ns) else _render.render_datasets(datasets, time.time()))
            return 0
        if action == "show":
            info = c.dataset(ns.name)
            _out(_render.to_json(info) if _json(ns) else _render.render_dataset(info, time.time()))
            return 0
        # rm: the copies on the nodes first (a job pinned to them), then the registry record
        from dsdk import Dataset

        ds = Dataset.get(ns.name, client=c)
        unreached = ds.delete(timeout=ns.timeout)
        if _json(ns):
            _out(_render.to_json({"deleted": ns.name, "unreached_nodes": unreached}))
        else:
            _out(f"dataset {ns.name} deleted ({ds.num_shards} shards x {ds.replicas} copies)")
        for node in unreached:
            print(
                f"warning: node {node} did not answer; its copy of {ns.name} stays until removed",
                file=sys.stderr,
            )
        return 0


def follow_logs(ns: argparse.Namespace) -> int:
    """``domainctl logs -f``: print chunks as they come, prefixed by the task when there are several."""
    stream = "stderr" if ns.stderr else "stdout"
    out = sys.stdout.buffer
    with client_for(ns) as c:
        for index, data in c.stream_logs(ns.job_id, ns.task, stream):
            if ns.task is None:
                prefix = f"[task {index}] ".encode()
                data = b"".join(prefix + line for line in data.splitlines(keepends=True))
            out.write(data)
            out.flush()
        job = c.job(ns.job_id)
    return 0 if job.succeeded else 1
