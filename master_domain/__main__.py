"""Entry point: ``python -m master_domain --config FILE [flags]`` (flags override the file)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from domainos.config import add_tls_flags, load, parse_set_flags, tls_overrides
from domainos.daemon import main_entry
from master_domain._config import MasterConfig
from master_domain._master import MasterDomain


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m master_domain", description="Run a DomainOS master domain.")
    p.add_argument("--config", metavar="FILE", help="YAML configuration file")
    p.add_argument("--id", help="master id (default master-1)")
    p.add_argument("--listen", metavar="HOST:PORT", help="gRPC listen address (port 0 picks one)")
    p.add_argument("--advertise", metavar="HOST:PORT", help="address given to tasks as DOMAINOS_MASTER")
    p.add_argument("--store", metavar="URL", help="sqlite:///abs/path.db | memory:// | etcd://host:port")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="Prometheus endpoint ('' disables)")
    p.add_argument("--log-level", help="debug | info | warning | error")
    p.add_argument("--log-format", help="json | text")
    p.add_argument("--ready-file", metavar="PATH", help="write bound addresses here (JSON) once serving")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", default=[], help="override any config field"
    )
    add_tls_flags(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, load the config, run the master until SIGTERM/SIGINT; returns the exit status."""
    args = _parser().parse_args(argv)

    def load_config() -> MasterConfig:
        overrides = parse_set_flags(args.set)
        flags = {
            "id": args.id,
            "listen": args.listen,
            "advertise": args.advertise,
            "store": args.store,
            "metrics_listen": args.metrics_listen,
            "log_level": args.log_level,
            "log_format": args.log_format,
            **tls_overrides(args),
        }
        overrides.update({k: v for k, v in flags.items() if v is not None})  # unset flags keep --set
        return load(MasterConfig, args.config, overrides)

    return main_entry("master", load_config, MasterDomain, args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
