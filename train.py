"""Train a CIFAR ResNet (or a 1-D ResNet on sound) with all, only BatchNorm, or no parameters trainable.

    python train.py -t bn --use-lbfgs True
    python train.py -t all --epochs 160 --save-dir runs/full
    python train.py --resume runs/full -e

Writes config.json, history.csv, checkpoint.pt and summary.json into --save-dir. The settings are
bnonly/config.py's (python train.py --help); the run is bnonly/training/trainer.py.
"""

import sys

from bnonly.training.trainer import main

if __name__ == "__main__":
    sys.exit(main())
