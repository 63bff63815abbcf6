"""Benchmark one training step of each optimizer (SGD, Adam, ngd and its variants) on this machine.

    python bench_optimizers.py [--device cuda] [--rounds 3] [--steps 20]

What is measured, and how: bnonly/benchmarks/optimizer_bench.py and BENCHMARKS.md.
"""

import sys

from bnonly.benchmarks.optimizer_bench import main

if __name__ == "__main__":
    sys.exit(main())
