"""Run the benchmarks: ``python -m bench [--smoke] [--out DIR] [--only NAME ...] [NAME ...]``."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable
from typing import Any

from bench import (
    chaos,
    collective,
    compare,
    federation,
    foundation,
    gang,
    goodput,
    intra,
    placement,
    scale,
    scheduler,
)

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
    "chaos": chaos.run,
    "goodput": goodput.run,
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
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="benchmarks to run, as --only (`python -m bench chaos`)"
    )
    ns = parser.parse_args(argv)
    unknown = [n for n in ns.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(sorted(BENCHMARKS))}")
    only = [*(ns.only or []), *ns.names] or None
    ns.out.mkdir(parents=True, exist_ok=True)
    for name, run in BENCHMARKS.items():
        if only is None or name in only:
            run(smoke=ns.smoke, out=ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
