"""Benchmark suite: same as the console script ``nnUNetv2_autoaug_benchmark`` (see --help)."""
from nnunet_autoaug.benchmark.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
