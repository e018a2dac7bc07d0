"""Run the benchmarks: ``python -m bench [--smoke] [--out DIR]``."""

from __future__ import annotations

import argparse
import pathlib
import sys

from bench import foundation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, to keep the benchmarks working in CI"
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    ns = parser.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    foundation.run(smoke=ns.smoke, out=ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
