"""The wall time of one training step of each optimizer on this machine: BN-only ResNet-32 (or -a), batch
-b of random 32 x 32 images, fp32. Rounds interleave the optimizers, so a machine that slows down slows
every one alike; each cell is the median over rounds of the mean step over `--steps` steps (a multiple of
ngd's --ngd-refresh, so its factorisations are counted at their rate), after `--warmup` steps.

    python bench_optimizers.py [--device cpu] [--rounds 3] [--steps 50] [--only "power 0.5"]

--only keeps SGD (the reference) and the rows whose name contains one of its comma-separated parts.
"""

import argparse
import statistics
import sys
import time

import torch

from bnonly.benchmarks.image_bench import bench_device, machine, synchronize, table
from bnonly.config import parse_args
from bnonly.data.datasets import ImageInputs
from bnonly.models.freezing import freeze
from bnonly.models.registry import build_model
from bnonly.optim.factories import build_optimizer
from bnonly.training.compute import Compute
from bnonly.training.engine import sgd_step
from bnonly.training.ngd_step import ngd_step

# (name, train.py flags): the step each optimizer takes in a BN-only run; ngd's rows name their power and
# refresh (the natural gradient: power 1; full-matrix RMSprop: 0.5, with refresh 50 ngd's default)
NATURAL = ["--optimizer", "ngd", "--ngd-power", "1", "--ngd-refresh", "10"]
OPTIMIZERS = [
    ("sgd", ["--optimizer", "sgd"]),
    ("adam", ["--optimizer", "adam"]),
    ("ngd --ngd-power 1 --ngd-refresh 10 (natural gradient, empirical Fisher)", NATURAL),
    ("ngd --ngd-power 1 --ngd-refresh 10 --ngd-fisher sampled", [*NATURAL, "--ngd-fisher", "sampled"]),
    ("ngd --ngd-power 0.5 --ngd-refresh 10", ["--optimizer", "ngd", "--ngd-power", "0.5", "--ngd-refresh", "10"]),
    ("ngd --ngd-power 0.5 --ngd-refresh 50 (the default)", ["--optimizer", "ngd", "--ngd-power", "0.5",
                                                             "--ngd-refresh", "50"]),
]


def row_config(flags: list, arch: str, batch: int):
    """The settings of one row: a BN-only run of `arch` with batch `batch` and the optimizer `flags` name."""
    return parse_args(["-t", "bn", "-a", arch, "-b", str(batch), "--precision", "fp32", *flags])[0]


def make_step(cfg, device: torch.device):
    """A function doing one training step of `cfg`'s optimizer, on a fixed random batch."""
    arch, batch = cfg.arch, cfg.batch_size
    compute = Compute(device, "fp32", True)
    torch.manual_seed(0)
    model = compute.place(build_model(arch, 10))
    optimizer = build_optimizer(cfg, freeze(model, "bn"), (), model)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    x = compute.inputs(images, ImageInputs((128.0,) * 3, (64.0,) * 3, device))
    model.train()
    if cfg.optimizer == "ngd":
        return lambda: ngd_step(model, optimizer, x, labels, compute, cfg.ngd_fisher, generator)
    return lambda: sgd_step(model, optimizer, x, labels, compute)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    parser.add_argument("-a", "--arch", default="resnet32", help="model (default resnet32)")
    parser.add_argument("-b", "--batch-size", type=int, default=128, help="images per step (default 128)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per optimizer and round, a multiple of "
                        "every timed row's --ngd-refresh (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--only", default="", help="comma-separated parts of row names to time beside SGD "
                        "(default: every row)")
    args = parser.parse_args(argv)
    device = bench_device(args.device, "bench_optimizers.py")
    if device is None:
        return 2
    wanted = [part.strip() for part in args.only.split(",") if part.strip()]
    rows = [(name, flags) for name, flags in OPTIMIZERS
            if name == "sgd" or not wanted or any(part in name for part in wanted)]
    if len(rows) == 1 and wanted:
        print(f"bench_optimizers.py: error: --only {args.only!r} matches no optimizer row", file=sys.stderr)
        return 2
    configs = {name: row_config(flags, args.arch, args.batch_size) for name, flags in rows}
    for name, cfg in configs.items():
        if cfg.optimizer == "ngd" and args.steps % cfg.ngd_refresh:
            print(f"bench_optimizers.py: error: --steps {args.steps} is not a multiple of {name!r}'s refresh "
                  f"{cfg.ngd_refresh}, so its factorisations would not be counted at their rate", file=sys.stderr)
            return 2
    steps = {name: make_step(cfg, device) for name, cfg in configs.items()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"{machine(device)}; BN-only {args.arch}, "
          f"batch {args.batch_size}, fp32; median of {args.rounds} rounds of {args.steps} steps\n")
    sgd = statistics.median(times["sgd"])
    rows = [[name, f"{1000 * statistics.median(t):.1f}", f"{statistics.median(t) / sgd:.2f}"]
            for name, t in times.items()]
    print(table(["optimizer", "ms per step", "x SGD"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
