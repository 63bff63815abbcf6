"""Benchmark the BN-only trainer against the classic CIFAR recipe on this machine; prints markdown tables.

    python bench.py --data-dir /tmp/cifar10-jpeg              # everything (about 20 minutes on 2 CPU cores)
    python bench.py --data-dir /tmp/cifar10-jpeg --quick      # a 10,000-image subset, for a first look
    python bench.py --data-dir /tmp/cifar10-jpeg --repeats 3  # whole runs in 3 interleaved rounds: medians
    python bench.py --data-dir /tmp/cifar10-jpeg --device cuda --lbfgs-train-size 0   # on a GPU, no L-BFGS part

DATA_DIR holds train/<class>/*.jpg (e.g. the JPEG CIFAR-10 of ../shared/data). Measured:
- the matmul peak (fp32 and bf16) and the FLOPs of one training step, so throughput reads as % of the peak;
- the bare model step on synthetic tensors: the classic eager fp32 NCHW step and this project's default;
- this project's data path (gather, augmentation, normalisation) per batch, as % of the bare step;
- whole runs in fresh processes, start-up, data loading, training and evaluation of the validation split
  all counted: the classic recipe (torchvision ImageFolder + PIL transforms + DataLoader with 2 workers +
  eager fp32 NCHW, the same model and SGD) against `train.py`, for BN-only and full training, batch 128;
- L-BFGS against SGD: seconds and forward+backward passes per epoch.
A lower precision the CPU has no instructions for (bf16 without AVX512-BF16 or AMX) is left out: emulated,
it runs many times slower than fp32.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from bnonly import ROOT
from bnonly.training.compute import AUTOCAST_DTYPES, Compute, cpu_emulates, cpu_has_amx, resolve_precision
from bnonly.training.engine import sgd_step
from bnonly.models.resnet import build_model, freeze
from bnonly.runs.run_reader import read_history

REPO = ROOT  # the commands (train.py, bench.py) are at the repository root
BATCH = 128
VAL_SPLIT = 5000


# ---------------------------------------------------------------- in-process measurements

def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (GPU work is asynchronous; the CPU's is done when the call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(fn, items: int, repeats: int = 3, calls: int = 10, device: torch.device = torch.device("cpu")) -> float:
    """Highest items/second over `repeats` timings of `calls` calls (after one warm-up call)."""
    fn()
    synchronize(device)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        best = max(best, items * calls / (time.perf_counter() - start))
    return best


def matmul_peak(dtype: torch.dtype, device: torch.device) -> float:
    """GFLOP/s of an n x n matmul: n = 2048 on the CPU, 8192 on a GPU (where 2048 is too small to fill it)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return best_rate(lambda: torch.mm(a, b), 2 * n ** 3, repeats=5, calls=3, device=device) / 1e9


def make_step(trainable: str, compute: Compute, arch: str = "resnet32", width: int = 1, shape=(3, 32, 32),
              batch: int = BATCH):
    """A training step (SGD) on fixed synthetic inputs of `shape`, as train.py runs it; by default batch 128
    of CIFAR images through ResNet-32 (bench_audio.py: the 1-D model on log-mel features)."""
    torch.manual_seed(0)
    model = compute.place(build_model(arch, width=width, in_channels=shape[0])).train()
    optimizer = torch.optim.SGD(freeze(model, trainable), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, *shape, device=compute.device)
    x = x.contiguous(memory_format=torch.channels_last) if compute.channels_last else x
    y = torch.randint(0, 10, (batch,), device=compute.device)
    return lambda: sgd_step(model, optimizer, x, y, compute)


def step_flops(trainable: str) -> float:
    """FLOPs per image of one training step (forward and the backward that `trainable` needs)."""
    from torch.utils.flop_counter import FlopCounterMode
    step = make_step(trainable, Compute(torch.device("cpu")))
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / BATCH


def data_path_ms(compute: Compute, batches: int = 100) -> float:
    """Milliseconds per batch of train.py's data path: gather, crop/flip, normalise, layout."""
    from bnonly.data.datasets import ImageInputs, epoch_order
    device = compute.device
    images = torch.randint(0, 256, (45000, 3, 32, 32), dtype=torch.uint8, device=device)
    pipeline = ImageInputs((0.5,) * 3, (0.25,) * 3, device)
    generator = torch.Generator(device=device).manual_seed(0)
    order = epoch_order(len(images), generator).split(BATCH)[:batches]
    compute.inputs(pipeline.augment(images[order[0]], generator), pipeline)  # warm-up (GPU kernels load on first use)
    synchronize(device)
    start = time.perf_counter()
    for index in order:
        compute.inputs(pipeline.augment(images[index], generator), pipeline)
    synchronize(device)
    return 1000 * (time.perf_counter() - start) / len(order)


def eval_seconds(compute: Compute, n: int = 10000) -> float:
    """Seconds to evaluate n images the way train.py does (uint8 tensors in memory)."""
    from bnonly.data.datasets import ImageInputs
    from bnonly.training.engine import evaluate
    device = compute.device
    model = compute.place(build_model("resnet32"))
    split = (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device),
             torch.randint(0, 10, (n,), device=device))
    pipeline = ImageInputs((0.5,) * 3, (0.25,) * 3, device)
    evaluate(model, (split[0][:1024], split[1][:1024]), pipeline, compute)  # warm-up
    start = time.perf_counter()
    evaluate(model, split, pipeline, compute)
    return time.perf_counter() - start  # evaluate() reads its sums back, so the device has finished


# ---------------------------------------------------------------- the classic recipe (run in its own process)

def classic_run(data_dir: str, trainable: str, train_size, device: torch.device) -> dict:
    """torchvision ImageFolder + PIL transforms + DataLoader(2 workers) + eager fp32 NCHW; one epoch + val.
    On a GPU the loader pins its batches and each is copied over as it comes (pytorch/examples' ImageNet
    recipe)."""
    import torchvision
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset
    from bnonly.data.datasets import stratified_split
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    eval_tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    root = os.path.join(data_dir, "train")
    train_set = torchvision.datasets.ImageFolder(root, transform=train_tf)
    eval_set = torchvision.datasets.ImageFolder(root, transform=eval_tf)
    train_index, val_index = stratified_split(torch.tensor(train_set.targets), VAL_SPLIT, 0)
    train_index = train_index[torch.randperm(len(train_index), generator=torch.Generator().manual_seed(0))]
    train_index = train_index[:train_size] if train_size else train_index
    pin = device.type == "cuda"
    train_loader = DataLoader(Subset(train_set, train_index.tolist()), batch_size=BATCH, shuffle=True, num_workers=2,
                              pin_memory=pin)
    val_loader = DataLoader(Subset(eval_set, val_index.tolist()), batch_size=BATCH, num_workers=2, pin_memory=pin)
    torch.manual_seed(0)
    model = build_model("resnet32").to(device)
    optimizer = torch.optim.SGD(freeze(model, trainable), lr=0.1, momentum=0.9, weight_decay=1e-4)
    train_start = time.perf_counter()
    model.train()
    for x, y in train_loader:
        x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    train_seconds = time.perf_counter() - train_start
    eval_start = time.perf_counter()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in val_loader:
            x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
            correct += (model(x).argmax(1) == y).sum().item()
    return {"images": len(train_index), "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - eval_start, "val_acc": 100 * correct / len(val_index)}


# ---------------------------------------------------------------- whole runs in fresh processes

def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident memory) of a live process, from /proc; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return 0.0


def run_measured(args: list, prog: str = "bench.py") -> tuple:
    """(wall seconds, peak RSS MiB, stdout) of a child process.

    The peak is the child's own VmHWM, polled until it exits (rusage's maxrss would include the
    forking parent's memory); DataLoader workers are separate processes and not counted.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(args, stdout=out, stderr=err, cwd=REPO)
        rss = 0.0
        while process.poll() is None:
            rss = max(rss, peak_rss_mib(process.pid))
            time.sleep(0.1)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if process.returncode:
        tail = stderr.strip().splitlines()[-1:] or ["(no message)"]
        sys.exit(f"{prog}: error: {' '.join(map(str, args[1:4]))} ... exited {process.returncode}: {tail[0]}")
    return wall, rss, stdout


def classic_whole_run(data_dir: str, trainable: str, train_size, device: torch.device) -> dict:
    wall, rss, out = run_measured([sys.executable, os.path.join(REPO, "bench.py"), "--classic", trainable,
                                   "--data-dir", data_dir, "--device", str(device),
                                   *(["--train-size", str(train_size)] if train_size else [])])
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall": wall, "rss_mib": rss,
            "startup_seconds": wall - result["train_seconds"] - result["eval_seconds"]}


def project_whole_run(data_dir: str, trainable: str, train_size, extra: list, device: torch.device) -> dict:
    """One epoch of train.py (validation split evaluated) in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        args = [sys.executable, os.path.join(REPO, "train.py"), "--dataset", "imagefolder", "--data-dir", data_dir,
                "--val-split", str(VAL_SPLIT), "-t", trainable, "--epochs", "1", "--no-progress",
                "--device", str(device), "--save-dir", os.path.join(folder, "run"),
                *(["--train-size", str(train_size)] if train_size else []),
                *extra]
        wall, rss, _ = run_measured(args)
        history = {column: values[0] for column, values in
                   read_history(os.path.join(folder, "run", "history.csv")).items()}  # its one epoch
    train_seconds = history["epoch_seconds"] - history["eval_seconds"]
    images = train_size or sum(len(files) for _, _, files in os.walk(os.path.join(data_dir, "train"))) - VAL_SPLIT
    return {"images": images, "wall": wall, "rss_mib": rss, "train_seconds": train_seconds,
            "epoch_seconds": history["epoch_seconds"], "eval_seconds": history["eval_seconds"],
            "startup_seconds": wall - history["epoch_seconds"], "passes": int(history["passes"]),
            "val_acc": history["val_acc"]}


def startup_parts(data_dir: str, device: torch.device) -> dict:
    """Seconds of each start-up stage: imports (fresh process), cached image load, model build."""
    code = "import time; t = time.perf_counter(); import train; print(time.perf_counter() - t)"
    _, _, out = run_measured([sys.executable, "-c", code])
    from bnonly.config import parse_args
    from bnonly.data.datasets import load_dataset
    cfg = parse_args(["--dataset", "imagefolder", "--data-dir", data_dir, "--val-split", str(VAL_SPLIT)])[0]
    load_dataset(cfg)  # make sure the decoded-image cache exists
    start = time.perf_counter()
    load_dataset(cfg)
    loaded = time.perf_counter()
    Compute(device, channels_last=True).place(build_model("resnet32"))
    synchronize(device)
    return {"import": float(out), "cache_load": loaded - start, "model_build": time.perf_counter() - loaded}


def summarise_rounds(rounds: list) -> list:
    """Whole runs repeated in interleaved rounds -> one summary per pipeline, in the rounds' order.

    `rounds` holds one list per round of (name, result) with the classic recipe first, where a result has
    "images" and "wall". A pipeline's columns come from its median-rate run (the lower middle for an even
    count), so they all belong to one real run. Its ratio to the classic recipe is the median of the
    per-round ratios: each run against the classic run of the same round, which cancels the machine's
    drift between rounds (10-21 % on machine B)."""
    summaries = []
    for i, (name, _) in enumerate(rounds[0]):
        runs = [r[i][1] for r in rounds]
        rates = [run["images"] / run["wall"] for run in runs]
        ratios = [rate / (r[0][1]["images"] / r[0][1]["wall"]) for rate, r in zip(rates, rounds)]
        median_rate = statistics.median_low(rates)
        summaries.append({"name": name, "run": runs[rates.index(median_rate)], "rate": median_rate,
                          "ratio": statistics.median(ratios), "ratios": ratios})
    return summaries


def ratio_text(summary: dict) -> str:
    """"2.21x", or with several rounds "2.21x (2.18-2.27)": the median and the range of the per-round ratios."""
    ratios = summary["ratios"]
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
    return f"{summary['ratio']:.2f}x{spread}"


# ---------------------------------------------------------------- report

def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if cpu_has_amx():
        cpu += " (AMX: bf16 matrix tiles)"
    elif cpu_emulates("bf16"):
        cpu += " (no bf16 instructions: AVX512-BF16 and AMX absent)"
    else:
        cpu += " (no AMX)"
    gpu = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), " if device.type == "cuda" else ""
    return (f"{gpu}{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")


def table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def bench_device(name: str, prog: str = "bench.py"):
    """The torch device to benchmark on, or None after a one-line error when it is not here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        print(f"{prog}: error: --device must be cpu, cuda or cuda:N, got {name!r}", file=sys.stderr)
        return None
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: error: --device {name}: CUDA is not available on this machine", file=sys.stderr)
        return None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        print(f"{prog}: error: --device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)",
              file=sys.stderr)
        return None
    return device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with train/<class>/*.jpg")
    parser.add_argument("--quick", action="store_true", help="whole runs on 10,000 training images")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of whole runs, interleaved; the table shows medians (default: 1)")
    parser.add_argument("--lbfgs-train-size", type=int, default=10000,
                        help="images per L-BFGS/SGD epoch; 0 leaves that comparison out")
    parser.add_argument("--classic", choices=("bn", "all"), help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--train-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_dir, "train")):
        print(f"bench.py: error: no train/ folder in {args.data_dir}; point --data-dir at an ImageFolder root",
              file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"bench.py: error: --repeats must be at least 1, got {args.repeats}", file=sys.stderr)
        return 2
    device = bench_device(args.device)
    if device is None:
        return 2
    if args.classic:
        print(json.dumps(classic_run(args.data_dir, args.classic, args.train_size, device)))
        return 0
    train_size = 10000 if args.quick else None
    default = Compute(device, resolve_precision("auto", device), channels_last=True)
    other = "fp32" if default.precision == "bf16" else "bf16"  # the precision the default is not
    other_step = Compute(device, other, channels_last=True)
    emulated = other_step.emulated()
    steps = {"classic": Compute(device), "default": default}
    steps.update({} if emulated else {other: other_step})
    print(f"machine: {machine(device)}\ndefault precision on {device.type}: {default.precision}, channels-last",
          flush=True)
    if emulated:
        print(f"{other}: left out, this CPU has no {other} instructions (torch emulates it, many times slower)")
    print(flush=True)

    peak = {p: matmul_peak(AUTOCAST_DTYPES.get(p, torch.float32), device)
            for p in sorted({step.precision for step in steps.values()}, reverse=True)}
    flops = {t: step_flops(t) for t in ("bn", "all")}
    bare = {(t, name): best_rate(make_step(t, compute), BATCH, device=device)
            for t in ("bn", "all") for name, compute in steps.items()}
    measured = [name for name in ("default", other) if name in steps]
    data_ms = {name: data_path_ms(steps[name]) for name in measured}
    eval_10k = {name: eval_seconds(steps[name]) for name in measured}
    startup = startup_parts(args.data_dir, device)
    print("matmul peak: " + ", ".join(f"{gflops:.0f} GFLOP/s {p}" for p, gflops in peak.items()))
    print(f"step FLOPs per image: BN-only {flops['bn'] / 1e6:.0f} M, full {flops['all'] / 1e6:.0f} M")
    print(f"start-up: imports {startup['import']:.2f} s, cached image load {startup['cache_load']:.2f} s, "
          f"model build {startup['model_build']:.3f} s", flush=True)

    rows, round_lines = [], []
    for t in ("bn", "all"):
        pipelines = [("classic recipe (ImageFolder, PIL, DataLoader x2, fp32 NCHW)", "fp32",
                      lambda: classic_whole_run(args.data_dir, t, train_size, device)),
                     (f"train.py (default: {default.precision}, channels-last)", default.precision,
                      lambda: project_whole_run(args.data_dir, t, train_size, [], device))]
        if not emulated:
            pipelines.append((f"train.py --precision {other}", other,
                              lambda: project_whole_run(args.data_dir, t, train_size, ["--precision", other], device)))
        rounds = [[(name, run()) for name, _, run in pipelines] for _ in range(args.repeats)]
        round_lines += [f"{t}, round {i + 1}: " + "; ".join(f"{name.split(' (')[0]} {r['images'] / r['wall']:.0f} img/s"
                                                           for name, r in one) for i, one in enumerate(rounds)]
        base = None
        for (_, precision, _), summary in zip(pipelines, summarise_rounds(rounds)):
            r, rate = summary["run"], summary["rate"]
            base = base or rate
            rows.append([t, summary["name"], f"{rate:.0f}", ratio_text(summary),
                         f"{r['images'] / r['train_seconds']:.0f}",
                         f"{100 * rate * flops[t] / 1e9 / peak[precision]:.1f} %", f"{r['startup_seconds']:.1f}",
                         f"{r['eval_seconds']:.1f}", f"{r['wall']:.0f}", f"{r['rss_mib']:.0f}", f"{r['val_acc']:.2f}"])
        for name, compute in steps.items():
            rate = bare[(t, name)]
            rows.append([t, f"bare step, synthetic tensors ({name}: {compute.precision}, "
                            f"{'channels-last' if compute.channels_last else 'NCHW'})", f"{rate:.0f}",
                         f"{rate / base:.2f}x", "",
                         f"{100 * rate * flops[t] / 1e9 / peak[compute.precision]:.1f} %", "", "", "", "", ""])
        print(flush=True)
    two = args.repeats == 2
    rounds_text = "" if args.repeats == 1 else (
        f"; {args.repeats} interleaved rounds: img/s and the other columns from each pipeline's median-rate run"
        f"{' (the slower of the two)' if two else ''}, vs classic = the median of the same-round ratios"
        f"{' (of two: their mean)' if two else ''} and their range")
    print(f"\n## Whole runs: 1 epoch ({'10,000' if train_size else 'all 45,000'} training images) + 5,000 val, "
          f"batch {BATCH}, SGD{rounds_text}\n")
    print(table(["trained", "pipeline", "img/s (whole run)", "vs classic", "img/s (training loop)", "% of peak",
                 "start-up + exit s", "eval s", "wall s", "peak RSS MiB", "val acc"], rows))
    print("\n" + "\n".join(round_lines) + "\n" if args.repeats > 1 else "")
    for name in measured:
        step_ms = 1000 * BATCH / bare[("bn", name)]
        epoch_50k = 50000 / bare[("bn", name)]
        print(f"{name} ({steps[name].precision}): data path {data_ms[name]:.2f} ms per batch of {BATCH} = "
              f"{100 * data_ms[name] / step_ms:.1f} % of the bare BN-only step ({step_ms:.0f} ms); evaluation of "
              f"10,000 images {eval_10k[name]:.2f} s = {100 * eval_10k[name] / epoch_50k:.1f} % of a 50,000-image "
              f"BN-only epoch at the bare-step rate ({epoch_50k:.0f} s)")

    if not args.lbfgs_train_size:
        return 0
    lbfgs_rows = []
    for optimizer in ("sgd", "lbfgs"):
        r = project_whole_run(args.data_dir, "bn", args.lbfgs_train_size,
                              ["--optimizer", optimizer, "--precision", "fp32"], device)
        lbfgs_rows.append([optimizer, f"{r['train_seconds']:.0f}", r["passes"], f"{r['eval_seconds']:.1f}",
                           f"{r['val_acc']:.2f}"])
    print(f"\n## L-BFGS against SGD: one BN-only epoch of {args.lbfgs_train_size:,} images (defaults, but both fp32)\n")
    print(table(["optimizer", "training s", "forward+backward passes", "eval s (incl. BN recalibration)",
                 "val acc"], lbfgs_rows))
    return 0
