"""Benchmark streamed ImageNet-style training on this machine; prints markdown tables (BENCHMARKS.md).

    python bench_imagenet.py --data-dir /tmp/jpeg500 --make-data     # generate the folders once (~3 min)
    python bench_imagenet.py --data-dir /tmp/jpeg500                 # pipeline, memory and step
    python bench_imagenet.py --data-dir /tmp/jpeg500 --only pipeline --workers 1,2

The data are generated JPEGs at ImageNet's typical 500 x 375 (smooth colour fields with noise, quality 90),
in folders of 2,000 and 20,000 images (DATA_DIR/n2000, DATA_DIR/n20000, 10 classes). Measured:
- the input pipeline: training images per second per worker of --dataset imagenet's transform (decode,
  RandomResizedCrop to 224, flip, uint8 batch) against torchvision's reference (ImageFolder, the
  references/classification presets' PIL transforms, DataLoader), same images, same worker count, in
  interleaved rounds; and each lever alone: the reduced-scale JPEG decode, the float conversion;
- memory: the peak proportional set size (PSS: shared pages counted once) of a whole streamed train.py
  epoch, main process and workers together, over 2,000 and over 20,000 images;
- the step: BN-only torchvision ResNet-50 at 224 pixels, images per second, and the ratio of one
  worker's pipeline rate to it (how many cores of decoding a step of this speed needs).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from bnonly.benchmarks.image_bench import REPO, best_rate, bench_device, machine, synchronize, table
from bnonly.data import streamed
from bnonly.training.compute import Compute
from bnonly.training.engine import sgd_step

SIZES = (2000, 20000)  # images per generated folder
CLASSES = 10
IMAGE = (500, 375)  # width, height: ImageNet's most common size
LARGE = (1600, 1200)  # a camera's photo, where reduced-scale decoding has room to work
LARGE_COUNT = 256
CROP = 224
BATCH = 64  # loader batch for the pipeline measurements


# ---------------------------------------------------------------- data

def make_folders(root: str, seed: int = 0) -> None:
    """DATA_DIR/n<size>/train/c<k>/<i>.JPEG for each of SIZES at IMAGE's size, and DATA_DIR/large/... at
    LARGE's (files that exist are kept)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for name, count, (width, height) in [*((f"n{size}", size, IMAGE) for size in SIZES), ("large", LARGE_COUNT, LARGE)]:
        for i in range(count):
            folder = os.path.join(root, name, "train", f"c{i % CLASSES}")
            path = os.path.join(folder, f"{i:06d}.JPEG")
            if os.path.exists(path):
                continue
            os.makedirs(folder, exist_ok=True)
            coarse = rng.random((6, 8, 3)) * 255  # colour fields ...
            image = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)
            pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, (height, width, 3))  # ... and grain
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def folder_of(root: str, size) -> str:
    path = os.path.join(root, f"n{size}" if isinstance(size, int) else size)
    if not os.path.isdir(os.path.join(path, "train")):
        sys.exit(f"bench_imagenet.py: error: no {path}/train; run with --make-data first")
    return path


# ---------------------------------------------------------------- the input pipeline

def ours(folder: str, reduce: bool = True):
    """--dataset imagenet's training transform on `folder`'s images, keyed (index, epoch)."""
    paths, labels = streamed.load_image_folders(folder)[0]["train"]
    dataset = streamed.StreamedFolder(paths, labels, CROP, train=True, seed=0, reduce=reduce)
    return dataset, lambda index: (index, 0)


def reference(folder: str, to_float: bool = True):
    """torchvision's references/classification ClassificationPresetTrain (PIL backend, no auto-augment):
    RandomResizedCrop(224, bilinear, antialias), RandomHorizontalFlip, PILToTensor, then float and
    Normalize (the preset's default; `to_float` False stops at uint8, to measure that lever alone)."""
    import torchvision
    import torchvision.transforms as T
    steps = [T.RandomResizedCrop(CROP, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
             T.RandomHorizontalFlip(0.5), T.PILToTensor()]
    if to_float:
        steps += [T.ConvertImageDtype(torch.float), T.Normalize(streamed.IMAGENET_MEAN, streamed.IMAGENET_STD)]
    return torchvision.datasets.ImageFolder(os.path.join(folder, "train"), transform=T.Compose(steps)), int


def loader_rate(dataset, key, workers: int, images: int) -> float:
    """Images per second of a DataLoader over the first `images` of a fixed shuffle, after its first batch
    (worker start-up is not counted)."""
    from torch.utils.data import DataLoader
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1))[:images].tolist()
    batches = [[key(i) for i in order[s:s + BATCH]] for s in range(0, len(order), BATCH)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, prefetch_factor=2)
    iterator = iter(loader)
    next(iterator)
    start, count = time.perf_counter(), 0
    for images_batch, _ in iterator:
        count += len(images_batch)
    return count / (time.perf_counter() - start)


def pipeline_table(root: str, workers_list: list, images: int, rounds: int, folder_name=SIZES[0]) -> str:
    folder = folder_of(root, folder_name)
    kinds = {"this project (reduced-scale decode, uint8 out)": lambda: ours(folder),
             "this project, full-size decode": lambda: ours(folder, reduce=False),
             "torchvision reference, uint8 out (no float, no Normalize)": lambda: reference(folder, to_float=False),
             "torchvision reference (float, Normalize)": lambda: reference(folder)}
    rows = []
    for workers in workers_list:
        rates = {name: [] for name in kinds}
        for _ in range(rounds):  # interleaved, so a slow spell of the machine hits every kind alike
            for name, make in kinds.items():
                rates[name].append(loader_rate(*make(), workers, images) / workers)
        base = statistics.median(rates["torchvision reference (float, Normalize)"])
        for name, values in rates.items():
            rate = statistics.median(values)
            rows.append([name, workers, f"{rate:.0f}", f"{rate / base:.2f}x"])
    size = "x".join(map(str, LARGE if folder_name == "large" else IMAGE))
    return table([f"pipeline ({size} JPEGs: decode, crop 224, flip, batch)", "workers", "images/s per worker",
                  "vs the reference"], rows)


# ---------------------------------------------------------------- memory of whole streamed epochs

def pss_mib(pid: int) -> float:
    """Proportional set size of a process (pages shared with its forked workers counted once overall)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("Pss:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def descendants(pid: int) -> list:
    """pid and every process below it (DataLoader workers), from /proc's parent links."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def streamed_epoch_memory(folder: str, workers: int, out: str) -> dict:
    """Peak PSS of the process tree of one train.py epoch over `folder` (BN-only ResNet-20 at 64 pixels:
    the data path is what is measured, not the model)."""
    args = [sys.executable, os.path.join(REPO, "train.py"), "--dataset", "imagenet", "--data-dir", folder,
            "-a", "resnet20", "--image-size", "64", "-t", "bn", "-b", "64", "-j", str(workers), "--epochs", "1",
            "--precision", "fp32", "--no-progress", "--save-dir", out, "--overwrite"]
    start, peak = time.perf_counter(), 0.0
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    while process.poll() is None:
        peak = max(peak, sum(pss_mib(p) for p in descendants(process.pid)))
        time.sleep(0.2)
    if process.returncode:
        sys.exit(f"bench_imagenet.py: error: train.py exited {process.returncode}: "
                 f"{process.stderr.read().decode().strip().splitlines()[-1:]}")
    return {"seconds": time.perf_counter() - start, "pss_mib": peak}


def memory_table(root: str, workers: int, out: str) -> str:
    rows, peaks = [], []
    for size in SIZES:
        result = streamed_epoch_memory(folder_of(root, size), workers, os.path.join(out, f"n{size}"))
        peaks.append(result["pss_mib"])
        rows.append([f"{size:,}", workers, f"{result['seconds']:.0f}", f"{result['pss_mib']:.0f}"])
    rows.append(["ratio", "", "", f"{peaks[1] / peaks[0]:.3f}"])
    return table(["images in the folder", "workers", "epoch wall s", "peak PSS, main + workers (MiB)"], rows)


# ---------------------------------------------------------------- the step

def resnet50_step(compute: Compute, trainable: str, batch: int):
    """One SGD step of torchvision's ResNet-50 at 224 pixels on fixed synthetic inputs."""
    from bnonly.models.freezing import freeze
    from bnonly.models.registry import build_model
    torch.manual_seed(0)
    model = compute.place(build_model("torchvision:resnet50", num_classes=1000)).train()
    optimizer = torch.optim.SGD(freeze(model, trainable), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, CROP, CROP, device=compute.device)
    x = x.contiguous(memory_format=torch.channels_last) if compute.channels_last else x
    y = torch.randint(0, 1000, (batch,), device=compute.device)
    return lambda: sgd_step(model, optimizer, x, y, compute)


def step_table(device: torch.device, precisions: list, batch: int, pipeline_rate: float) -> str:
    rows = []
    for precision in precisions:
        compute = Compute(device, precision, channels_last=True)
        rate = best_rate(resnet50_step(compute, "bn", batch), batch, repeats=2, calls=2 if device.type == "cpu" else 20,
                         device=device)
        rows.append([f"BN-only ResNet-50, {precision}, channels-last, batch {batch}", f"{rate:.1f}",
                     f"{rate / pipeline_rate:.2f}" if pipeline_rate else "-"])
    return table(["step (224 px)", "images/s", "decoding cores it needs (step rate / one worker's rate)"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_imagenet.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="where the generated folders are (or go, --make-data)")
    parser.add_argument("--make-data", action="store_true", help="generate the JPEG folders first")
    parser.add_argument("--only", choices=("pipeline", "memory", "step"), help="one part only")
    parser.add_argument("--workers", default="1,2", help="worker counts of the pipeline part (default 1,2)")
    parser.add_argument("--images", type=int, default=1920, help="images per pipeline measurement (default 1920)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the pipeline part (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: the step's device (default cpu)")
    parser.add_argument("--precisions", default="fp32", help="the step's, e.g. fp32,bf16 (default fp32)")
    parser.add_argument("--batch", type=int, default=32, help="the step's batch (default 32)")
    parser.add_argument("--out", default="/tmp/bench_imagenet_runs", help="run folders of the memory part")
    args = parser.parse_args(argv)
    device = bench_device(args.device, "bench_imagenet.py")
    if device is None:
        return 2
    if args.make_data:
        make_folders(args.data_dir)
    workers = [int(w) for w in args.workers.split(",")]
    print(f"Machine: {machine(device)}\n")
    per_worker = 0.0
    if args.only in (None, "pipeline"):
        print(pipeline_table(args.data_dir, workers, args.images, args.rounds) + "\n")
        print(pipeline_table(args.data_dir, [1], LARGE_COUNT, args.rounds, "large") + "\n")
    if args.only in (None, "memory"):
        print(memory_table(args.data_dir, max(workers), args.out) + "\n")
    if args.only in (None, "step"):
        dataset, key = ours(folder_of(args.data_dir, SIZES[0]))
        per_worker = loader_rate(dataset, key, 1, args.images)  # one worker's rate, for the ratio
        synchronize(device)
        print(step_table(device, args.precisions.split(","), args.batch, per_worker))
    return 0
