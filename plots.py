"""Draw loss and accuracy curves, a results table and BatchNorm γ pictures from run folders.

    python plots.py RUN_DIR [RUN_DIR ...] [--out DIR]     # curves
    python plots.py RUN_DIR [RUN_DIR ...] --table          # markdown table on stdout only
    python plots.py SWEEP_DIR --across depth [--table]     # a sweep: final accuracy against depth

python plots.py --help for the rest; the code is bnonly/runs/plotting.py, which never imports the trainer.
"""

from bnonly.runs.plotting import main

if __name__ == "__main__":
    main()
