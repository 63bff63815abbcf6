"""BatchNorm-only training: the library behind the commands at the repository root.

One folder per concern, each importing only those listed before it (README: How the code is laid out):
config.py (with choices.py, phases.py and validation.py beside it), distributed.py and stopping.py are the
ground floor; data/ and models/ know nothing of training; optim/ holds the optimizers and their
factories; training/ the epoch loop, evaluation and resuming; runs/ reads and writes run folders and
draws them (never the training loop); sweeps/ builds settings and starts train.py runs; benchmarks/
times all of it.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: train.py, bench.py, ... are here
