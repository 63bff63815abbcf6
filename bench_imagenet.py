"""Benchmark streamed ImageNet-style training on this machine: the input pipeline against torchvision's
reference, memory against the folder's size, the BN-only ResNet-50 step; prints markdown tables.

    python bench_imagenet.py --data-dir /tmp/jpeg500 --make-data     # generate the folders once (~3 min)
    python bench_imagenet.py --data-dir /tmp/jpeg500

What is measured, and how: bnonly/benchmarks/imagenet_bench.py and BENCHMARKS.md.
"""

import sys

from bnonly.benchmarks.imagenet_bench import main

if __name__ == "__main__":
    sys.exit(main())
