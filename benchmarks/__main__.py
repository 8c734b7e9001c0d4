"""``python -m benchmarks``: measure lens on a catalog; writes ``benchmark.md``, one CSV per section and PNG charts.

Takes the catalog and cache options of ``python -m lens`` (the same parent parsers), plus ``--models``, ``--quick`` and
``--out``. Bad input ends with a one-line ``error: ...`` on stderr and exit status 2, as in lens's CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# lens's own option handling, private there but shared on purpose: the benchmark reads catalogs and models as lens does
from lens.cli import EXIT_USAGE, _catalog_options, _parse_models, _run_options, shared_parsers
from lens.errors import LensError


def build_parser() -> argparse.ArgumentParser:
    common, cat = shared_parsers()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        parents=[common, cat],
        description="Benchmark lens on a catalog: quality, throughput, index settings, scale, projection, dashboard.",
    )
    parser.add_argument("--models", default=None, help="comma-separated encoder names, or 'all' available (default)")
    parser.add_argument("--quick", action="store_true", help="small samples: a few minutes on 2 cores")
    parser.add_argument("--out", default="bench-out", help="output folder for benchmark.md and CSVs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be a positive integer")
    # imported after parsing: torch and the encoders take seconds, and --help needs neither
    from benchmarks.common import BenchConfig
    from benchmarks.run import run_benchmark

    try:
        catalog = _catalog_options(args).load()
        run = _run_options(args)
        config = BenchConfig(
            models=_parse_models(args.models, run), out_dir=Path(args.out), cache_dir=run.cache_dir, quick=args.quick
        )
        path = run_benchmark(catalog, config)
    except LensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
