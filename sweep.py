"""Run a grid of train.py runs: the paper's experiments as one command.

    python sweep.py experiments/cpu_demo.yaml                 # every run of the grid, one after another
    python sweep.py GRID.yaml --dry-run                       # the runs and their commands, nothing started
    python sweep.py GRID.yaml --launcher slurm --partition gpu --time-min 600   # a Slurm job array (submitit)

python sweep.py --help for the rest; the code is bnonly/sweeps/sweep.py, which never imports the trainer.
"""

import os
import sys

from bnonly.sweeps.sweep import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the listing piped into head, say: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
