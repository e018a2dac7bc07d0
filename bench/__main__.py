"""Run the benchmarks: ``python -m bench [--smoke] [--out DIR] [--only NAME ...]``."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable
from typing import Any

from bench import collective, compare, federation, foundation, gang, intra, placement, scale, scheduler

#: name -> run(smoke=..., out=...), in the order they run.
BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "foundation": foundation.run,
    "scheduler": scheduler.run,
    "gang": gang.run,
    "scale": scale.run,
    "placement": placement.run,
    "federation": federation.run,
    "intra": intra.run,
    "compare": compare.run,
    "collective": collective.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, to keep the benchmarks working in CI"
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeatable; default: all)",
    )
    ns = parser.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    for name, run in BENCHMARKS.items():
        if ns.only is None or name in ns.only:
            run(smoke=ns.smoke, out=ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
