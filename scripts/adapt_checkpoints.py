"""Evaluate the checkpoints of finished runs on their validation split twice: with the BatchNorm statistics
of training, and with those recomputed on the split's own inputs, as --bn-adapt does (engine.evaluate_adapted);
for runs made without --bn-adapt. One markdown row per run folder:

    python scripts/adapt_checkpoints.py sweeps/fsdd_modes/*/
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from bnonly.config import ConfigError, OneLineParser, parse_args  # noqa: E402
from bnonly.training.engine import evaluate, evaluate_adapted  # noqa: E402
from bnonly.training.resuming import resume_config  # noqa: E402
from bnonly.runs.runfiles import CheckpointError, checkpoint_path, load_checkpoint  # noqa: E402
from bnonly.training.trainer import build_experiment  # noqa: E402


def adapted_row(folder: str) -> str:
    """The table row of one run folder: its name, val accuracy with training's and with the split's statistics."""
    cli, given = parse_args(["--resume", folder, "-e", "--no-progress"])
    checkpoint = load_checkpoint(checkpoint_path(folder))
    cfg = resume_config(checkpoint, cli, given)
    ex = build_experiment(cfg, torch.device("cpu"), checkpoint)
    if "val" not in ex.splits:
        raise ConfigError(f"{folder}: the run has no validation split")
    plain = evaluate(ex.model, ex.splits["val"], ex.pipeline, ex.compute)
    adapted = evaluate_adapted(ex.model, ex.splits["val"], ex.pipeline, ex.compute)
    return f"| {os.path.basename(os.path.normpath(folder))} | {plain['acc']:.2f} | {adapted['acc']:.2f} |"


def main(argv=None) -> int:
    parser = OneLineParser(prog="adapt_checkpoints.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", metavar="RUN_DIR", help="run folders with a checkpoint.pt and a val split")
    folders = parser.parse_args(argv).folders
    print("| run | val acc | val acc, BN statistics of the split |\n|---|---:|---:|")
    status = 0
    for folder in folders:  # a folder that fails is reported, and the others still get their rows
        try:
            print(adapted_row(folder), flush=True)
        except (ConfigError, CheckpointError) as e:
            print(f"adapt_checkpoints.py: error: {e}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
