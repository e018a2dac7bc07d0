"""Scheduling commands: ``quota set | ls | rm`` (quotas per tenant, region and sub-domain) and
``explain JOB`` (why a job is where it is, or why it waits)."""

from __future__ import annotations

import argparse

from domainos.errors import InvalidArgument

from . import _render
from ._commands import _json, _out, _width, client_for


def _whole(text: str, flag: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise InvalidArgument(f"expected a whole number, got {text!r}", field=flag) from None
    if value < 0:
        raise InvalidArgument(f"must not be negative, got {value}", field=flag)
    return value


def quota_limits(ns: argparse.Namespace) -> dict[str, int]:
    """The limits named by ``--cpus``, ``--memory``, ``--gpus [--gpu-model]`` and ``--limit CLASS=N``.

    ``--cpus`` is in cores (``2``, ``0.5``, ``500m``) and sent as millicores, ``--memory`` a size
    (``64Gi``) sent as bytes, ``--gpus`` whole GPUs of ``--gpu-model`` (default: any model, ``gpu:*``);
    ``--limit`` takes a class and an amount in the class's own unit.
    """
    from domainos.resources import parse_cpus, parse_memory

    limits: dict[str, int] = {}
    if ns.cpus is not None:
        limits["cpu"] = parse_cpus(ns.cpus, "--cpus")
    if ns.memory is not None:
        limits["memory"] = parse_memory(ns.memory, "--memory")
    if ns.gpu_model and ns.gpus is None:
        raise InvalidArgument("--gpu-model names the model of --gpus N; give --gpus too", field="--gpu-model")
    if ns.gpus is not None:
        limits[f"gpu:{ns.gpu_model or '*'}"] = _whole(ns.gpus, "--gpus")
    for pair in ns.limit:
        cls, sep, amount = pair.partition("=")
        cls = cls.strip()
        if not sep or not cls:
            raise InvalidArgument(f"expected CLASS=AMOUNT (e.g. gpu:H100=8), got {pair!r}", field="--limit")
        if cls in limits:
            raise InvalidArgument(f"{cls} is limited twice", field="--limit")
        limits[cls] = _whole(amount.strip(), f"--limit {cls}")
    if not limits:
        raise InvalidArgument(
            "nothing to set: give --cpus, --memory, --gpus or --limit CLASS=AMOUNT", field="quota set"
        )
    return limits


def cmd_quota(ns: argparse.Namespace) -> int:
    action = ns.quota_command
    if action == "set":
        limits = quota_limits(ns)
        with client_for(ns) as c:
            quota = c.set_quota(ns.tenant, limits, region=ns.region, subdomain=ns.subdomain)
        if _json(ns):
            _out(_render.to_json(quota))
        else:
            shown = ", ".join(f"{k}={_render.fmt_amount(k, v)}" for k, v in sorted(quota.limits.items()))
            _out(f"quota of tenant {quota.tenant} in {quota.scope} set: {shown}")
        return 0
    if action == "rm":
        with client_for(ns) as c:
            quota = c.delete_quota(ns.tenant, region=ns.region, subdomain=ns.subdomain)
        _out(
            _render.to_json(quota)
            if _json(ns)
            else f"quota of tenant {quota.tenant} in {quota.scope} removed"
        )
        return 0
    with client_for(ns) as c:
        quotas = c.quotas(ns.tenant)
    _out(_render.to_json(quotas) if _json(ns) else _render.render_quotas(quotas, _width()))
    return 0


def cmd_explain(ns: argparse.Namespace) -> int:
    with client_for(ns) as c:
        explanation = c.explain(ns.job_id)
    _out(_render.to_json(explanation) if _json(ns) else _render.render_explanation(explanation))
    return 0
