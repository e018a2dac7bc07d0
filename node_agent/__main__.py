"""Entry point: ``python -m node_agent --config FILE [flags]``.

Flags override the YAML file; ``--set key=value`` overrides any field. A bad configuration
prints ``error: <message>`` to stderr and exits 2.

``python -m node_agent inject --data-dir DIR --gpu N --xid 79 ...`` queues GPU faults for a
running *simulated* agent (one with ``simulated: true``, as ``domainctl up`` starts them): it writes
``<data_dir>/inject-faults.json`` (:func:`node_agent._hardware.write_faults`), which the agent
applies and moves away at its next sample. Bad input prints ``error: <flag>: <why>`` and exits 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from domainos import config as _config
from domainos import daemon
from domainos.errors import InvalidArgument
from domainos.health import BAD_THROTTLE, GPU_TEMPERATURE_LIMIT_C
from node_agent._agent import NodeAgent
from node_agent._config import LOG_FORMATS, LOG_LEVELS, AgentConfig
from node_agent._hardware import (
    FAULT_FILE,
    MAX_ECC_COUNT,
    MAX_GPU_INDEX,
    MAX_TEMPERATURE_C,
    MAX_THROTTLE_REASONS,
    MAX_XID,
    MIN_TEMPERATURE_C,
    GpuFault,
    write_faults,
)

COMPONENT = "node-agent"
INJECT = "inject"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m node_agent", description="DomainOS node agent")
    p.add_argument("--config", metavar="FILE", help="YAML configuration file")
    p.add_argument("--node-id", metavar="ID", help="node id (default: the host name)")
    p.add_argument(
        "--subdomain",
        metavar="ADDR",
        action="append",
        help="sub-domain address HOST:PORT; repeatable, replaces the list of the file",
    )
    p.add_argument("--state-dir", metavar="DIR", help="task directories and logs")
    p.add_argument("--metrics-listen", metavar="ADDR", help="HOST:PORT for /metrics ('' disables)")
    p.add_argument("--simulated", action="store_true", default=None, help="declared, simulated inventory")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="log level (default info)")
    p.add_argument("--log-format", choices=LOG_FORMATS, help="log format (default json)")
    p.add_argument("--ready-file", metavar="PATH", help="write the ready facts (JSON) here once started")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override any field")
    _config.add_tls_flags(p)
    return p


def load_config(args: argparse.Namespace) -> AgentConfig:
    """YAML file, then ``--set`` pairs, then the named flags (the most specific wins)."""
    overrides: dict[str, Any] = dict(_config.parse_set_flags(args.set))
    named = {
        "node_id": args.node_id,
        "subdomains": args.subdomain,
        "state_dir": args.state_dir,
        "metrics_listen": args.metrics_listen,
        "simulated": args.simulated,
        "log_level": args.log_level,
        "log_format": args.log_format,
        **_config.tls_overrides(args),
    }
    overrides.update({k: v for k, v in named.items() if v is not None})
    return _config.load(AgentConfig, args.config, overrides)


# ----------------------------------------------------------------------------- inject


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer (decimal, or 0x.. / 0b.. / 0o..) from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} ({low} to {high}), got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what} ({low} to {high}), got {text!r}")
        return value

    return parse


def _temperature(text: str) -> float:
    allowed = f"degrees C from {MIN_TEMPERATURE_C:g} to {MAX_TEMPERATURE_C:g}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
    if not (math.isfinite(value) and MIN_TEMPERATURE_C <= value <= MAX_TEMPERATURE_C):
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
    return value


def build_inject_parser() -> argparse.ArgumentParser:
    bits = ", ".join(f"{bit:#x} {text}" for bit, text in BAD_THROTTLE.items())
    p = argparse.ArgumentParser(
        prog="python -m node_agent inject",
        description=(
            f"Queue GPU faults for a running simulated node agent: writes <data_dir>/{FAULT_FILE}, "
            "which the agent applies (once) at its next usage sample. Only simulated agents read it."
        ),
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", metavar="DIR", help="the agent's data_dir (must exist)")
    where.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the agent's state_dir: uses its default data_dir, DIR/data (created if missing)",
    )
    p.add_argument(
        "--gpu",
        metavar="N",
        type=_int_in(0, MAX_GPU_INDEX, "a GPU index"),
        help="the GPU index (required unless only --clear)",
    )
    p.add_argument(
        "--xid",
        metavar="XID",
        type=_int_in(1, MAX_XID, "an NVIDIA Xid number, e.g. 79"),
        help="one Xid error, e.g. 79 (fallen off the bus: critical) or 94 (contained ECC: warning)",
    )
    count = _int_in(0, MAX_ECC_COUNT, "a count of errors to add")
    p.add_argument("--ecc-corrected", metavar="N", type=count, default=0, help="add N corrected ECC errors")
    p.add_argument(
        "--ecc-uncorrected",
        metavar="N",
        type=count,
        default=0,
        help="add N uncorrectable ECC errors (critical)",
    )
    p.add_argument(
        "--temperature",
        metavar="C",
        type=_temperature,
        help=f"override the GPU temperature (above {GPU_TEMPERATURE_LIMIT_C:g}: degraded)",
    )
    p.add_argument(
        "--throttle",
        metavar="MASK",
        type=_int_in(0, MAX_THROTTLE_REASONS, "an NVML clocks-event reasons bitmask"),
        help=f"set the throttle reasons bitmask, decimal or hex (0 clears; degraded on {bits})",
    )
    p.add_argument(
        "--clear",
        action="store_true",
        help="first drop the injected faults of --gpu (of every GPU without --gpu)",
    )
    return p


def inject_main(argv: list[str]) -> int:
    """``python -m node_agent inject ...``: 0 when the fault file was written, 2 on bad input."""
    p = build_inject_parser()
    try:
        return _inject(p, p.parse_args(argv))
    except SystemExit as exc:  # argparse: bad flags (usage and "error: argument --x: why"), --help
        return exc.code if isinstance(exc.code, int) else 2


def _inject(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    fault = GpuFault(
        args.gpu,
        xid=args.xid,
        ecc_corrected=args.ecc_corrected,
        ecc_uncorrected=args.ecc_uncorrected,
        temperature_c=args.temperature,
        throttle_reasons=args.throttle,
        clear=args.clear,
    )
    if fault.empty:
        p.error(
            "nothing to inject: give --xid, --ecc-corrected, --ecc-uncorrected, --temperature, "
            "--throttle or --clear"
        )
    if args.gpu is None and fault != GpuFault(None, clear=True):
        p.error("--gpu is required to inject a fault (only --clear goes without it: every GPU)")
    if args.state_dir is not None:
        if not os.path.isdir(args.state_dir):
            print(f"error: --state-dir: no such directory: {args.state_dir}", file=sys.stderr)
            return 2
        data_dir = os.path.join(args.state_dir, "data")
        os.makedirs(data_dir, exist_ok=True)
    else:
        data_dir = args.data_dir
        if not os.path.isdir(data_dir):
            print(
                f"error: --data-dir: no such directory: {data_dir} (the agent's data_dir; by default "
                "<state_dir>/data: --state-dir STATE creates it)",
                file=sys.stderr,
            )
            return 2
    try:
        path = write_faults(data_dir, [fault])
    except InvalidArgument as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the fault file in {data_dir}: {exc}", file=sys.stderr)
        return 1
    print(f"queued {fault.to_json()} in {path}; a running simulated agent applies it at its next sample")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT (or ``inject``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [INJECT]:
        return inject_main(argv[1:])
    args = build_parser().parse_args(argv)
    return daemon.main_entry(COMPONENT, lambda: load_config(args), NodeAgent, args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
