"""Benchmark audio training on this machine: the 1-D ResNet's step, the log-mel path, whole train.py runs.

    python bench_audio.py --data-dir /tmp/fsdd                       # FSDD with its speaker george held out
    python bench_audio.py --data-dir DIR --val-groups ''             # a folder with no groups: no validation
    python bench_audio.py --data-dir /tmp/fsdd --device cuda

DATA_DIR holds train/<class>/*.wav (e.g. the FSDD recordings of ../shared/data). Measured, with the
audio defaults of train.py (resnet1d32 x2, batch 64, 40 log-mel bands of 1 s clips at 8 kHz):
- the bare model step on synthetic features, BN-only and full, at the default precision and the other;
- the feature path per batch: waves to normalised log-mel features, with the training augmentation
  (time shift, masks) and without it (evaluation), as % of the bare BN-only step;
- whole runs of 4 epochs in fresh processes (start-up, cache load, the epochs, validation), and from
  them the wall time of a run of the default length: start-up and first epoch, then the median of the
  later epochs' times for each further epoch.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from bnonly.data import audio
from bnonly.benchmarks import image_bench as bench
from bnonly.benchmarks.image_bench import REPO, best_rate, bench_device, machine, run_measured, synchronize, table
from bnonly.training.compute import Compute, resolve_precision
from bnonly.config import AUDIO_DEFAULTS, ConfigError, parse_args
from bnonly.data.datasets import load_dataset
from bnonly.runs.run_reader import read_history

PROG = "bench_audio.py"
BATCH = AUDIO_DEFAULTS["batch_size"]
FEATURES = audio.Features()  # train.py's defaults
EPOCHS = 4  # per whole run


def make_step(trainable: str, compute: Compute):
    """A training step (SGD, the default batch) of the default audio model on fixed synthetic features."""
    return bench.make_step(trainable, compute, AUDIO_DEFAULTS["arch"], AUDIO_DEFAULTS["width"],
                           (FEATURES.n_mels, FEATURES.frames(FEATURES.sample_rate)), BATCH)


def feature_path_ms(device: torch.device, augment: bool, batches: int = 50) -> float:
    """Milliseconds per batch from int16 waves (1 s) to normalised log-mel features, as train.py makes them."""
    waves = torch.randint(-3000, 3000, (batches, BATCH, FEATURES.sample_rate), dtype=torch.int16, device=device)
    inputs = audio.AudioInputs(FEATURES, audio.Augmentation(), [-40.0] * FEATURES.n_mels, [15.0] * FEATURES.n_mels,
                               device)
    generator = torch.Generator(device=device).manual_seed(0)

    def one(batch):
        return inputs.prepare(inputs.augment(batch, generator) if augment else batch)
    one(waves[0])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for batch in waves:
        one(batch)
    synchronize(device)
    return 1000 * (time.perf_counter() - start) / batches


def whole_run(data_dir: str, trainable: str, extra: list, device: torch.device) -> dict:
    """EPOCHS epochs of train.py with the audio defaults in a fresh process; times from its history.csv."""
    with tempfile.TemporaryDirectory() as folder:
        run = os.path.join(folder, "run")
        wall, rss, _ = run_measured([sys.executable, os.path.join(REPO, "train.py"), "--dataset", "audiofolder",
                                     "--data-dir", data_dir, "-t", trainable, "--epochs", str(EPOCHS), "--no-progress",
                                     "--device", str(device), "--save-dir", run, *extra], PROG)
        history = read_history(os.path.join(run, "history.csv"))
    epochs = history["epoch_seconds"]
    later = statistics.median(epochs[1:])
    evals = statistics.median(history["eval_seconds"][1:])
    clips = int(history["images_forward_backward"][-1])
    accuracy = history.get("val_acc") or history.get("test_acc")
    startup = wall - sum(epochs)
    return {"clips": clips, "wall": wall, "rss_mib": rss, "startup": startup, "epochs": epochs, "later": later,
            "eval": evals, "loop_rate": clips / (later - evals),
            "default_run": startup + epochs[0] + (AUDIO_DEFAULTS["epochs"] - 1) * later,
            "val_acc": f"{accuracy[-1]:.2f}" if accuracy else "–"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with train/<class>/*.wav")
    parser.add_argument("--val-groups", default="george",
                        help="train.py's --val-groups for the whole runs ('' for none; default: george, FSDD's)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    parser.add_argument("--cache-dir", help="train.py's --cache-dir for the decoded clips (default: train.py's)")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_dir, "train")):
        print(f"bench_audio.py: error: no train/ folder in {args.data_dir}; point --data-dir at an audio folder "
              f"root (train/<class>/*.wav)", file=sys.stderr)
        return 2
    device = bench_device(args.device, PROG)
    if device is None:
        return 2
    extra = (["--val-groups", args.val_groups] if args.val_groups else []) + \
        (["--cache-dir", args.cache_dir] if args.cache_dir else [])
    try:  # the folder and the groups checked, and the decoded-clip cache made, before anything is timed
        load_dataset(parse_args(["--dataset", "audiofolder", "--data-dir", args.data_dir, *extra])[0])
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    default = Compute(device, resolve_precision("auto", device))
    other = Compute(device, "fp32" if default.precision == "bf16" else "bf16")
    computes = [default] + ([] if other.emulated() else [other])
    print(f"machine: {machine(device)}\ndefault precision on {device.type}: {default.precision}"
          f"{'' if len(computes) > 1 else f'; {other.precision} left out (emulated on this CPU)'}\n", flush=True)

    bare = {(t, c.precision): best_rate(make_step(t, c), BATCH, device=device) for t in ("bn", "all") for c in computes}
    step_ms = 1000 * BATCH / bare[("bn", default.precision)]
    train_ms, eval_ms = feature_path_ms(device, True), feature_path_ms(device, False)
    print(f"feature path per batch of {BATCH}: {train_ms:.2f} ms with augmentation ({100 * train_ms / step_ms:.1f} % "
          f"of the bare BN-only step, {step_ms:.1f} ms), {eval_ms:.2f} ms without (evaluation)", flush=True)

    rows = []
    for t in ("bn", "all"):
        for c in computes:
            r = whole_run(args.data_dir, t, extra + ["--precision", c.precision], device)
            rows.append([t, f"train.py, {c.precision}{' (default)' if c is default else ''}",
                         f"{r['clips'] * EPOCHS / r['wall']:.0f}", f"{r['loop_rate']:.0f}", f"{r['startup']:.1f}",
                         f"{r['epochs'][0]:.1f} / {r['later']:.1f}", f"{r['eval']:.2f}", f"{r['wall']:.0f}",
                         f"{r['rss_mib']:.0f}", f"{r['default_run']:.0f}", r["val_acc"]])
            print(json.dumps({"trainable": t, "precision": c.precision, **r}), flush=True)
        for c in computes:
            rows.append([t, f"bare step, synthetic features ({c.precision})", f"{bare[(t, c.precision)]:.0f}", "", "",
                         "", "", "", "", "", ""])
    print(f"\n## Whole runs: {EPOCHS} epochs of train.py on {args.data_dir} (audio defaults"
          f"{', --val-groups ' + args.val_groups if args.val_groups else ''})\n")
    print(table(["trained", "pipeline", "clips/s (whole run)", "clips/s (training loop)", "start-up + exit s",
                 "epoch 1 / later s (median)", "eval s", "wall s", "peak RSS MiB",
                 f"{AUDIO_DEFAULTS['epochs']}-epoch run, projected s", "val acc"], rows))
    return 0
