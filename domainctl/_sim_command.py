"""``domainctl sim``: run a fleet of simulated node agents against real sub-domains.

Every simulated node speaks the real agent protocol over its own stream (see
:mod:`node_agent._sim`). Transport: ``--insecure`` against sub-domains run insecure, or ``--pki
DIR``: a cluster CA directory (``domainctl certs init``; the local federation keeps its own in
``<home>/local/pki``) from which every simulated node gets its own agent certificate (the
sub-domain checks that the certificate names the node).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import pathlib
import signal
import sys
import time
from typing import Any

from domainos.errors import InvalidArgument

#: Seconds between progress lines.
PROGRESS_INTERVAL_S = 1.0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Declare ``domainctl sim`` (called by :func:`domainctl.__main__.build_parser`)."""
    help_text = (
        "run N simulated node agents in this process against real sub-domains (capacity planning, tests)"
    )
    p = sub.add_parser("sim", help=help_text, description=help_text, parents=[common])
    p.add_argument(
        "--subdomain",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="sub-domain agent address; repeatable: nodes try them in order, the next when one is full",
    )
    p.add_argument("--nodes", metavar="N", type=int, default=None, help="how many simulated nodes (required)")
    p.add_argument(
        "--profile", default="h100x8", help="hardware preset: h100x8 (default), h200x8, a100x8, l40sx4, cpu"
    )
    p.add_argument("--prefix", default="sim", help="node ids are PREFIX-0000, PREFIX-0001, ... (default sim)")
    p.add_argument("--seed", type=int, default=None, help="random seed (which nodes the faults pick)")
    p.add_argument("--spread", action="store_true", help="node i starts with sub-domain i mod their number")
    p.add_argument(
        "--task-duration",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds a simulated task runs without DOMAINOS_SIM_DURATION in its env (default 1)",
    )
    p.add_argument(
        "--kill-fraction", type=float, default=0.0, metavar="F", help="drop the streams of this fraction"
    )
    p.add_argument("--silence-fraction", type=float, default=0.0, metavar="F", help="silence this fraction")
    p.add_argument(
        "--at", type=float, default=None, metavar="T", help="seconds after start of kill/silence/flap"
    )
    p.add_argument(
        "--flap-fraction", type=float, default=0.0, metavar="F", help="flap this fraction's streams"
    )
    p.add_argument("--period", type=float, default=None, metavar="P", help="flap period in seconds")
    p.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    p.add_argument(
        "--pki",
        metavar="DIR",
        help="cluster CA directory (with ca.key): issues each simulated node its agent certificate there",
    )


def _check(ns: argparse.Namespace) -> None:
    """Every flag, before anything starts; InvalidArgument (exit 2) names the flag."""
    from domainos.config import check_address

    if not ns.subdomain:
        raise InvalidArgument("at least one sub-domain address is required", field="--subdomain")
    for address in ns.subdomain:
        check_address(address, "--subdomain")
    if ns.nodes is None:
        raise InvalidArgument("is required (how many simulated nodes)", field="--nodes")
    if not 1 <= ns.nodes <= 1_000_000:
        raise InvalidArgument(f"must be between 1 and 1000000, got {ns.nodes}", field="--nodes")
    for flag in ("kill_fraction", "silence_fraction", "flap_fraction"):
        value = getattr(ns, flag)
        if not 0.0 <= value <= 1.0:
            raise InvalidArgument(
                f"must be between 0 and 1, got {value:g}", field=f"--{flag.replace('_', '-')}"
            )
    if ns.kill_fraction + ns.silence_fraction > 1.0:
        raise InvalidArgument(
            f"--kill-fraction + --silence-fraction must be at most 1, got {ns.kill_fraction + ns.silence_fraction:g}",
            field="--silence-fraction",
        )
    faults = ns.kill_fraction > 0 or ns.silence_fraction > 0 or ns.flap_fraction > 0
    if ns.at is not None and (not math.isfinite(ns.at) or ns.at < 0):
        raise InvalidArgument(f"must be seconds >= 0, got {ns.at:g}", field="--at")
    if ns.at is not None and not faults:
        raise InvalidArgument("needs --kill-fraction, --silence-fraction or --flap-fraction", field="--at")
    if ns.flap_fraction > 0 and ns.period is None:
        raise InvalidArgument("is required with --flap-fraction (seconds between drops)", field="--period")
    if ns.period is not None:
        if ns.flap_fraction <= 0:
            raise InvalidArgument("needs --flap-fraction", field="--period")
        if not (math.isfinite(ns.period) and ns.period > 0):
            raise InvalidArgument(f"must be seconds > 0, got {ns.period:g}", field="--period")
    if ns.duration is not None and not (math.isfinite(ns.duration) and ns.duration > 0):
        raise InvalidArgument(f"must be seconds > 0, got {ns.duration:g}", field="--duration")
    if not (math.isfinite(ns.task_duration) and ns.task_duration >= 0):
        raise InvalidArgument(f"must be seconds >= 0, got {ns.task_duration:g}", field="--task-duration")
    if ns.tls_ca or ns.tls_cert or ns.tls_key:
        raise InvalidArgument(
            "sim takes no --tls-* files: every simulated node needs its own agent certificate; "
            "pass --pki DIR (a cluster CA directory) or --insecure",
            field="--tls-cert",
        )
    if ns.insecure and ns.pki:
        raise InvalidArgument("--pki and --insecure exclude each other", field="--pki")
    if not ns.insecure and not ns.pki:
        raise InvalidArgument(
            "choose the transport: --pki DIR (mutual TLS; a CA directory from `domainctl certs init`, "
            "e.g. <home>/local/pki of `domainctl up`) or --insecure (sub-domains run insecure)",
            field="--pki",
        )
    if ns.pki and not (pathlib.Path(ns.pki).expanduser() / "ca.key").exists():
        raise InvalidArgument(
            f"no CA in {ns.pki} (ca.key missing): run `domainctl certs init`", field="--pki"
        )


def cmd_sim(ns: argparse.Namespace) -> int:
    _check(ns)
    from node_agent._sim import profile

    profile(ns.profile)  # unknown preset: exit 2 before anything starts
    return asyncio.run(_run(ns))


async def _run(ns: argparse.Namespace) -> int:
    from domainos.rpc import TLSFiles
    from node_agent._sim import Fleet

    tls: dict[str, TLSFiles] = {}
    fleet = Fleet(
        ns.subdomain,
        ns.nodes,
        ns.profile,
        prefix=ns.prefix,
        seed=ns.seed,
        spread=ns.spread,
        default_duration_s=ns.task_duration,
        tls_for=tls.get if ns.pki else None,
    )
    if ns.pki:
        print(f"issuing {ns.nodes} agent certificates in {ns.pki} ...", flush=True)
        tls.update(await asyncio.to_thread(_issue, pathlib.Path(ns.pki).expanduser(), list(fleet.agents)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    fault_at = started + (ns.at or 0.0)
    faults_done = not (ns.kill_fraction or ns.silence_fraction or ns.flap_fraction)
    print(
        f"simulating {ns.nodes} {ns.profile} nodes against {', '.join(ns.subdomain)} "
        f"({'insecure' if ns.insecure else 'mutual TLS'}); Ctrl-C stops",
        flush=True,
    )
    await fleet.start()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if not faults_done and now >= fault_at:
                faults_done = True
                killed = fleet.pick(ns.kill_fraction)
                fleet.kill(killed)
                rest = set(fleet.agents) - set(killed)
                silenced = fleet.pick(ns.silence_fraction * ns.nodes / max(1, len(rest)), among=rest)
                fleet.silence(silenced)
                flapping = fleet.pick(ns.flap_fraction, among=rest - set(silenced))
                if flapping:
                    fleet.flap(flapping, ns.period)
                print(
                    f"faults: killed {len(killed)}, silenced {len(silenced)}, flapping {len(flapping)}",
                    flush=True,
                )
            print(f"[{now - started:6.1f}s] {fleet.stats().line()}", flush=True)
            if ns.duration is not None and now - started >= ns.duration:
                break
            wait = PROGRESS_INTERVAL_S
            if ns.duration is not None:
                wait = min(wait, max(0.0, started + ns.duration - now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
    finally:
        await fleet.shutdown()
    print(f"stopped after {time.monotonic() - started:.1f}s: {fleet.stats().line()}", flush=True)
    sys.stdout.flush()
    return 0


def _issue(directory: pathlib.Path, node_ids: list[str], role: str = "agent") -> dict[str, Any]:
    """Every node's certificate of ``role`` (an existing, usable one is kept)."""
    from domainos.errors import ConfigError
    from domainos.security import Identity, check_usable, files_for, issue_files

    out: dict[str, Any] = {}
    for node_id in node_ids:
        who = Identity(role, node_id)
        files = files_for(directory, who)
        try:
            usable = check_usable(files)
        except (ConfigError, OSError):  # missing, unreadable, expired or not yet valid: issue anew
            usable = None
        out[node_id] = files if usable == who else issue_files(directory, who)
    return out
