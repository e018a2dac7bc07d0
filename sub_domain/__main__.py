"""Entry point: ``python -m sub_domain --config FILE [flags]``.

Flags override the YAML file; ``--set key=value`` overrides anything. A bad configuration prints
``error: <message>`` to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from domainos import config as _config
from domainos.daemon import main_entry

from ._config import SubDomainConfig
from ._manager import SubDomainManager


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sub_domain",
        description="DomainOS sub-domain manager: node agents connect to it; it connects to the master.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML configuration file")
    p.add_argument("--id", help="sub-domain id (e.g. east-1)")
    p.add_argument("--region", help="region name (e.g. east)")
    p.add_argument("--listen", help="HOST:PORT for agents (port 0 picks one)")
    p.add_argument("--advertise", help="HOST:PORT told to the master (default: the bound listen address)")
    p.add_argument("--master", help="master HOST:PORT (empty: run standalone)")
    p.add_argument("--store", help="store URL: memory://, sqlite:///abs/path.db or etcd://host:port")
    p.add_argument("--max-nodes", type=int, dest="max_nodes", metavar="N", help="most registered nodes")
    p.add_argument("--metrics-listen", dest="metrics_listen", help="HOST:PORT for /metrics (empty disables)")
    p.add_argument("--log-level", dest="log_level", help="debug | info | warning | error")
    p.add_argument("--log-format", dest="log_format", help="json | text")
    p.add_argument("--ready-file", dest="ready_file", metavar="PATH", help="write ready facts (JSON) here")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", default=[], help="override any config field"
    )
    _config.add_tls_flags(p)
    return p


def load_config(args: argparse.Namespace) -> SubDomainConfig:
    """Build the configuration from the file, the flags and ``--set`` overrides."""
    overrides: dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "id",
            "region",
            "listen",
            "advertise",
            "master",
            "store",
            "max_nodes",
            "metrics_listen",
            "log_level",
            "log_format",
        )
    }
    overrides.update(_config.tls_overrides(args))
    overrides.update(_config.parse_set_flags(args.set))
    return _config.load(SubDomainConfig, args.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sub-domain manager until SIGTERM/SIGINT; returns the exit status."""
    args = _parser().parse_args(argv)
    return main_entry("sub-domain", lambda: load_config(args), SubDomainManager, args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
