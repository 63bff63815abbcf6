"""Benchmark audio training on this machine: the 1-D ResNet's step, the log-mel path, whole train.py runs.

    python bench_audio.py --data-dir /tmp/fsdd                       # FSDD with its speaker george held out

What is measured, and how: bnonly/benchmarks/audio_bench.py and BENCHMARKS.md.
"""

import sys

from bnonly.benchmarks.audio_bench import main

if __name__ == "__main__":
    sys.exit(main())
