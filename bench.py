"""Benchmark the BN-only trainer against the classic CIFAR recipe on this machine; prints markdown tables.

    python bench.py --data-dir /tmp/cifar10-jpeg              # everything (about 20 minutes on 2 CPU cores)
    python bench.py --data-dir /tmp/cifar10-jpeg --quick      # a 10,000-image subset, for a first look

What is measured, and how: bnonly/benchmarks/image_bench.py and BENCHMARKS.md.
"""

import sys

from bnonly.benchmarks.image_bench import main

if __name__ == "__main__":
    sys.exit(main())
