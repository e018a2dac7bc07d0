"""Entry point: ``python -m node_agent --config FILE [flags]``.

Flags override the YAML file; ``--set key=value`` overrides any field. A bad configuration
prints ``error: <message>`` to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from domainos import config as _config
from domainos import daemon
from node_agent._agent import NodeAgent
from node_agent._config import LOG_FORMATS, LOG_LEVELS, AgentConfig

COMPONENT = "node-agent"


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


def main(argv: list[str] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; returns the exit status."""
    args = build_parser().parse_args(argv)
    return daemon.main_entry(COMPONENT, lambda: load_config(args), NodeAgent, args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
