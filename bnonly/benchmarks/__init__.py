"""The benchmarks behind bench.py and bench_audio.py (BENCHMARKS.md)."""
