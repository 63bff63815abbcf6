"""One BN-only epoch of SGD and of the default L-BFGS, both fp32, on 10,000 JPEG images, in two interleaved
rounds (each a fresh train.py process, timed by bench.project_whole_run):

    python scripts/lbfgs_vs_sgd_epoch.py     # expects the images in /tmp/cifar10-jpeg (docs/results.md)
"""
import sys
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))
import torch
from bnonly.benchmarks import image_bench as bench
device = torch.device("cpu")
for round_ in range(2):
    for name, flags in (("sgd", ["--optimizer", "sgd"]), ("lbfgs default", ["--use-lbfgs", "true"])):
        r = bench.project_whole_run("/tmp/cifar10-jpeg", "bn", 10000, flags + ["--precision", "fp32"], device)
        print(f"round {round_ + 1} {name:14s} training {r['train_seconds']:.1f} s, epoch {r['epoch_seconds']:.1f} s, "
              f"eval {r['eval_seconds']:.1f} s, passes {r['passes']}, val acc {r['val_acc']:.2f}", flush=True)
