"""``domainctl sim-subdomains``: run simulated sub-domains against a real master.

Each simulated sub-domain stands for N nodes of a hardware profile and speaks the real
sub-domain → master protocol over its own stream (see :mod:`sub_domain._sim`): a capacity-planning
tool for the master. Transport: ``--insecure`` against a master run insecure, or ``--pki DIR``: a
cluster CA directory from which every simulated sub-domain gets its own ``subdomain`` certificate
(the master checks that it names the sub-domain).
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

from domainos.errors import InvalidArgument

#: Seconds between progress lines.
PROGRESS_INTERVAL_S = 1.0
MAX_SUBDOMAINS = 10_000
MAX_NODES = 100_000


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Declare ``domainctl sim-subdomains`` (called by :func:`domainctl.__main__.build_parser`)."""
    help_text = (
        "run M simulated sub-domains of N nodes each in this process against a real master "
        "(capacity planning of the master, benchmarks)"
    )
    p = sub.add_parser("sim-subdomains", help=help_text, description=help_text, parents=[common])
    p.add_argument(
        "--subdomains", metavar="M", type=int, default=None, help="how many sub-domains (required)"
    )
    p.add_argument("--nodes", metavar="N", type=int, default=None, help="nodes per sub-domain (required)")
    p.add_argument(
        "--profile",
        default="h100x8",
        help="node hardware preset: h100x8 (default), h200x8, a100x8, l40sx4, cpu",
    )
    p.add_argument("--region-count", metavar="R", type=int, default=1, help="spread them over R regions")
    p.add_argument("--prefix", default="simsd", help="sub-domain ids are PREFIX-000, PREFIX-001, ...")
    p.add_argument(
        "--task-duration",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds a simulated task runs without DOMAINOS_SIM_DURATION in its env (default 1)",
    )
    p.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    p.add_argument(
        "--pki",
        metavar="DIR",
        help="cluster CA directory (with ca.key): issues each simulated sub-domain its certificate there",
    )


def _check(ns: argparse.Namespace) -> None:
    """Every flag, before anything starts; InvalidArgument (exit 2) names the flag."""
    from domainos.config import check_address

    if not ns.master:
        raise InvalidArgument("is required (the master's HOST:PORT)", field="--master")
    check_address(ns.master, "--master")
    for flag, most in (("subdomains", MAX_SUBDOMAINS), ("nodes", MAX_NODES)):
        value = getattr(ns, flag)
        if value is None:
            raise InvalidArgument("is required", field=f"--{flag}")
        if not 1 <= value <= most:
            raise InvalidArgument(f"must be between 1 and {most}, got {value}", field=f"--{flag}")
    if not 1 <= ns.region_count <= ns.subdomains:
        raise InvalidArgument(
            f"must be between 1 and {ns.subdomains} (--subdomains), got {ns.region_count}",
            field="--region-count",
        )
    if ns.duration is not None and not (math.isfinite(ns.duration) and ns.duration > 0):
        raise InvalidArgument(f"must be seconds > 0, got {ns.duration:g}", field="--duration")
    if not (math.isfinite(ns.task_duration) and ns.task_duration >= 0):
        raise InvalidArgument(f"must be seconds >= 0, got {ns.task_duration:g}", field="--task-duration")
    if ns.tls_ca or ns.tls_cert or ns.tls_key:
        raise InvalidArgument(
            "sim-subdomains takes no --tls-* files: every simulated sub-domain needs its own certificate; "
            "pass --pki DIR (a cluster CA directory) or --insecure",
            field="--tls-cert",
        )
    if ns.insecure and ns.pki:
        raise InvalidArgument("--pki and --insecure exclude each other", field="--pki")
    if not ns.insecure and not ns.pki:
        raise InvalidArgument(
            "choose the transport: --pki DIR (mutual TLS; a CA directory from `domainctl certs init`, "
            "e.g. <home>/local/pki of `domainctl up`) or --insecure (the master runs insecure)",
            field="--pki",
        )
    if ns.pki and not (pathlib.Path(ns.pki).expanduser() / "ca.key").exists():
        raise InvalidArgument(
            f"no CA in {ns.pki} (ca.key missing): run `domainctl certs init`", field="--pki"
        )


def cmd_sim_subdomains(ns: argparse.Namespace) -> int:
    _check(ns)
    from node_agent._sim import profile

    profile(ns.profile)  # unknown preset: exit 2 before anything starts
    return asyncio.run(_run(ns))


async def _run(ns: argparse.Namespace) -> int:
    from domainctl._sim_command import _issue
    from domainos.rpc import TLSFiles
    from node_agent._hardware import SimulatedHardware
    from node_agent._sim import profile
    from sub_domain._sim import SubDomainFleet

    tls: dict[str, TLSFiles] = {}
    fleet = SubDomainFleet(
        ns.master,
        ns.subdomains,
        ns.nodes,
        SimulatedHardware("template", profile(ns.profile)).inventory(),
        prefix=ns.prefix,
        regions=ns.region_count,
        default_duration_s=ns.task_duration,
        tls_for=tls.get if ns.pki else None,
    )
    if ns.pki:
        print(f"issuing {ns.subdomains} sub-domain certificates in {ns.pki} ...", flush=True)
        pki = pathlib.Path(ns.pki).expanduser()
        tls.update(await asyncio.to_thread(_issue, pki, list(fleet.subdomains), "subdomain"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    print(
        f"simulating {ns.subdomains} sub-domains x {ns.nodes} {ns.profile} nodes in {ns.region_count} "
        f"region(s) against {ns.master} ({'insecure' if ns.insecure else 'mutual TLS'}); Ctrl-C stops",
        flush=True,
    )
    await fleet.start()
    try:
        while not stop.is_set():
            now = time.monotonic()
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
