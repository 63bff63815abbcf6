"""Datasets as in-memory uint8 tensors, splits, normalisation and batched augmentation.

Every in-memory split is a MemorySplit, a pair (images (N, 3, H, W) uint8, labels (N,) int64); a dataset
too large for memory (--dataset imagenet) has streamed.StreamedSplit ones instead, which hand the trainer
batches through the same `batches` method. Augmentation works on whole batches with torch ops and draws
its randomness from an explicit torch.Generator, so a run is reproducible and can be resumed from the
generator's saved state.
"""

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from bnonly.config import AUDIO_DATASETS
from bnonly.data import audio, streamed
from bnonly.data.folder_cache import DataError, cache_file, class_folders, read_cache, split_folders, write_cache
from bnonly.distributed import World, shard

SUBSET_SEED = 0  # fixed: --train-size/--test-size/--val-split pick the same images whatever --seed is
# Per-channel mean and std (0-1 pixel scale) of the CIFAR training sets.
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class MemorySplit(NamedTuple):
    """A split held in memory: (images (N, 3, H, W) uint8 or waves (N, L) int16, labels (N,) int64)."""
    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> "MemorySplit":
        return MemorySplit(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor, train: bool = None) -> "MemorySplit":
        return MemorySplit(self.images[index], self.labels[index])

    def batches(self, index_batches: list, epoch: int, world: World = World()):
        """For each batch of indices, the whole batch and this process's slice of it (the trainer augments
        the whole batch, so that every rank draws the same random numbers, then keeps its slice)."""
        for index in index_batches:
            yield self.images[index], self.labels[index], shard(len(index), world)


def as_split(split) -> "MemorySplit | streamed.StreamedSplit":
    """A split as the trainer takes it: a plain (images, labels) pair becomes a MemorySplit."""
    return MemorySplit(*split) if isinstance(split, tuple) and not isinstance(split, MemorySplit) else split


@dataclass
class Dataset:
    splits: dict  # name ("train", "val", "test") -> MemorySplit or streamed.StreamedSplit
    num_classes: int
    mean: tuple  # per channel, 0-1 pixel scale
    std: tuple
    classes: list = field(default_factory=list)


# ---------------------------------------------------------------- loading

def load_dataset(cfg) -> Dataset:
    """Load cfg.dataset, hold out --val-split items or the --val-groups, apply --train-size and --test-size;
    the normalisation statistics come from the training split (per colour channel, or per mel bin)."""
    names = {}
    if cfg.dataset in CIFAR_STATS:
        splits, classes = load_cifar(cfg.dataset, cfg.data_dir, cfg.download)
    elif cfg.dataset == "imagefolder":
        splits, classes = load_imagefolder(cfg.data_dir, cfg.cache_dir, cfg.image_size, cfg.workers)
    elif cfg.dataset == "synthetic":
        splits = synthetic_splits((cfg.train_size or 1024) + cfg.val_split, cfg.test_size or 256)
        classes = [f"class{c}" for c in range(10)]
    elif cfg.dataset == "audiofolder":
        audio_features(cfg).check()
        splits, classes, names = audio.load_audiofolder(cfg.data_dir, cfg.cache_dir, cfg.sample_rate,
                                                        clip_samples(cfg), cfg.workers)
    elif cfg.dataset == "imagenet":
        splits, classes = load_imagenet(cfg)
    elif cfg.dataset == "synthetic-audio":
        audio_features(cfg).check()
        splits, classes, names = audio.synthetic_audio((cfg.train_size or 512) + cfg.val_split, cfg.test_size or 128,
                                                       cfg.sample_rate, clip_samples(cfg))
    else:
        raise ValueError(f"unknown dataset: {cfg.dataset}")
    splits = {name: as_split(split) for name, split in splits.items()}
    hold_out_validation(cfg, splits, names.get("train"))
    generated = cfg.dataset == "synthetic-audio"  # made at its sizes, the --val-groups taken out of train
    for name, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        if size is not None and name in splits and not generated:
            splits[name] = subset(splits[name], size, name)
    if cfg.dataset in CIFAR_STATS:
        mean, std = CIFAR_STATS[cfg.dataset]
    elif cfg.dataset == "imagenet":  # the decoded set is never in memory to measure: ImageNet's own
        mean, std = streamed.IMAGENET_MEAN, streamed.IMAGENET_STD
    elif is_audio(cfg):
        mean, std = audio.feature_stats(splits["train"][0], audio_features(cfg))
    else:
        mean, std = channel_stats(splits["train"][0])
    return Dataset(splits, len(classes), mean, std, classes)


def hold_out_validation(cfg, splits: dict, train_names) -> None:
    """Move --val-split training items (stratified) or those of the --val-groups into splits["val"] (for
    streamed images an evaluation split: centre crops, no augmentation)."""
    train_labels = splits["train"].labels
    if cfg.val_groups:
        if train_names is None:
            raise DataError(f"--val-groups needs file names, which --dataset {cfg.dataset} does not have")
        train_index, val_index = audio.group_split(train_names, cfg.group_regex, cfg.val_groups)
    elif cfg.val_split:
        if cfg.val_split >= len(train_labels):
            raise DataError(f"--val-split {cfg.val_split} leaves no training images (there are {len(train_labels)})")
        train_index, val_index = stratified_split(train_labels, cfg.val_split, SUBSET_SEED)
    else:
        return
    splits["val"] = splits["train"].subset(val_index, train=False)
    splits["train"] = splits["train"].subset(train_index)


def is_audio(cfg) -> bool:
    return cfg.dataset in AUDIO_DATASETS


def clip_samples(cfg) -> int:
    return max(1, round(cfg.clip_seconds * cfg.sample_rate))


def audio_features(cfg) -> audio.Features:
    return audio.Features(cfg.sample_rate, cfg.n_mels, cfg.frame_ms, cfg.hop_ms, cfg.top_db)


def input_pipeline(cfg, normalization: dict, device):
    """What turns a batch of a split into model input: ImageInputs, StreamedInputs for images
    augmented in the loader's workers, or audio.AudioInputs for audio data."""
    if cfg.dataset == "imagenet":
        return StreamedInputs(normalization["mean"], normalization["std"], device)
    if is_audio(cfg):
        augmentation = audio.Augmentation(cfg.time_shift_ms, cfg.time_mask, cfg.freq_mask, cfg.freq_warp)
        return audio.AudioInputs(audio_features(cfg), augmentation, normalization["mean"], normalization["std"],
                                 device)
    return ImageInputs(normalization["mean"], normalization["std"], device)


class ImageInputs:
    """The trainer's input pipeline for images: `augment` (crop and flip) on a whole global batch of uint8
    images, then `prepare` (per-channel standardisation) of the trainer's share."""

    def __init__(self, mean, std, device):
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)  # (3, 1, 1), 0-1 scale
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment(images, generator)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std)


class StreamedInputs(ImageInputs):
    """The input pipeline of streamed images (streamed.py): the loader's workers already cropped and flipped
    them, so `augment` passes the batch through; `prepare` standardises as for images in memory."""

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images


def load_cifar(name: str, data_dir: str, download: bool):
    """CIFAR-10/100 through torchvision (its own download and integrity check)."""
    import torchvision
    dataset_class = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root = os.path.expanduser(data_dir)
    existed = os.path.exists(root)
    splits = {}
    try:
        for split in ("train", "test"):
            ds = dataset_class(root, train=split == "train", download=download)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N,32,32,3) -> (N,3,32,32)
            splits[split] = (images, torch.tensor(ds.targets, dtype=torch.int64))
    except Exception as e:
        if not existed and os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)  # leave nothing behind from a failed download
        how = "the download failed" if download else "no local copy (--no-download)"
        raise DataError(f"{name} not found in {data_dir} and {how} ({type(e).__name__}); point --data-dir at a "
                        f"folder holding a copy, or use --dataset imagefolder or --dataset synthetic") from None
    return splits, list(ds.classes)


def synthetic_splits(train_n: int, test_n: int, num_classes: int = 10):
    """Deterministic 32x32 images whose class shows in colour and stripe direction, with noise."""
    g = torch.Generator().manual_seed(1234)
    colours = torch.rand(num_classes, 3, 1, 1, generator=g)  # (C, 3, 1, 1) in [0, 1)
    angles = torch.rand(num_classes, generator=g) * torch.pi
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def make(n, seed):  # one generator per split: the test set does not depend on the train size
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(num_classes, (n,), generator=g)
        direction = torch.cos(angles[labels])[:, None, None] * xs + torch.sin(angles[labels])[:, None, None] * ys
        stripes = torch.sin(direction * 0.8)[:, None]  # (n, 1, 32, 32)
        pixels = 0.25 + 0.5 * colours[labels] + 0.15 * stripes + 0.15 * torch.randn(n, 3, 32, 32, generator=g)
        return (pixels.clamp(0, 1) * 255).round().to(torch.uint8), labels

    return {"train": make(train_n, 1), "test": make(test_n, 2)}


def load_imagenet(cfg) -> tuple:
    """DATA_DIR/train/<class>/*.JPEG (+ val/ as the test split) as streamed splits: file lists only."""
    lists, classes = streamed.load_image_folders(cfg.data_dir)
    splits = {name: streamed.StreamedSplit(streamed.StreamedFolder(paths, labels, cfg.image_size, name == "train",
                                                                   cfg.seed, crop=cfg.streamed_crop), cfg.workers)
              for name, (paths, labels) in lists.items()}
    return splits, classes


# ---------------------------------------------------------------- imagefolder with a decoded cache

def load_imagefolder(data_dir: str, cache_dir: str, image_size: int, workers: int):
    """DATA_DIR/train/<class>/* (+ test/ or val/), decoded once into a uint8 cache keyed by the files.

    A cache hit needs no torchvision import (about 1 s of start-up): the key hashes every file's path,
    size and modification time, and the cache holds the class names torchvision found.
    """
    folders = split_folders(data_dir, "imagefolder", "<images>")
    classes = class_folders(folders)  # two classes at least, the same in every split: checked before any cache hit
    cache_path = cache_file(cache_dir, "imagefolder", folders, f"size{image_size}")
    cached = read_cache(cache_path)
    if cached is not None:
        return cached[:2]
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    class_to_idx = {name: index for index, name in enumerate(classes)}  # sorted folder names, as find_classes
    try:
        files = {name: make_dataset(folder, class_to_idx, IMG_EXTENSIONS) for name, folder in folders.items()}
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{str(e).splitlines()[0]}; put images in DATA_DIR/train/<class>/ and give test/ (or val/) "
                        f"the same class folders ({data_dir})") from None
    splits = {name: decode_files(samples, image_size, workers) for name, samples in files.items()}
    write_cache(cache_path, splits, classes)
    return splits, classes


def decode_files(samples: list, image_size: int, workers: int):
    """Decode [(path, label)] in `workers` processes into ((N,3,S,S) uint8, (N,) int64)."""
    paths = [p for p, _ in samples]
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    chunks = [paths[i:i + 512] for i in range(0, len(paths), 512)]
    try:
        if workers > 1 and len(chunks) > 1:
            with ProcessPoolExecutor(workers) as pool:
                parts = list(pool.map(_decode_chunk, chunks, [image_size] * len(chunks)))
        else:
            parts = [_decode_chunk(chunk, image_size) for chunk in chunks]
    except ValueError as e:
        raise DataError(str(e)) from None
    return torch.from_numpy(np.concatenate(parts)), labels


def _decode_chunk(paths: list, image_size: int) -> np.ndarray:
    out = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path, image_size)
    return out


def decode_image(path: str, image_size: int) -> np.ndarray:
    """One image file as (3, S, S) uint8 RGB; ValueError naming the file when it cannot be decoded."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(image).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    except Exception:
        raise ValueError(f"cannot decode image {path}: corrupt or not an image; remove or replace it") from None


# ---------------------------------------------------------------- subsets and statistics

def subset(split, size: int, name: str):
    """The first `size` items of a fixed seeded permutation."""
    if size > len(split.labels):
        raise DataError(f"--{name}-size {size} is larger than the {len(split.labels)} {name} images available")
    return split.subset(fixed_subset_index(len(split.labels), size))


def fixed_subset_index(n: int, count: int) -> torch.Tensor:
    """The first `count` of a permutation of range(n) that is the same in every run, whatever --seed."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(SUBSET_SEED))[:count]


def stratified_split(labels: torch.Tensor, n_val: int, seed: int):
    """(train_index, val_index): n_val items held out, each class in proportion to its share."""
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n_val / len(labels)
    quota = exact.floor().long()
    leftover = n_val - int(quota.sum())
    quota[torch.argsort(exact - quota, descending=True, stable=True)[:leftover]] += 1  # largest remainders
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    val_parts = [order[shuffled == c][:int(q)] for c, q in zip(classes, quota)]
    val_index = torch.cat(val_parts).sort().values
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val_index] = True
    return torch.nonzero(~is_val).flatten(), val_index


def channel_stats(images: torch.Tensor):
    """Per-channel mean and std of (N, 3, H, W) uint8 images, on the 0-1 scale.

    From each channel's histogram of the 256 pixel values: one pass over the bytes, exact counts
    (summing the pixels as float64 took 1 s of start-up for 45,000 CIFAR images, this 0.13 s).
    """
    counts = torch.stack([torch.bincount(images[:, c].flatten(), minlength=256) for c in range(3)]).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum(1)
    mean = counts @ values / total
    std = (counts @ (values * values) / total - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


# ---------------------------------------------------------------- batches and augmentation

def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop of (B, C, H, W) images after zero-padding each side by `padding`."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(2 * padding + 1, (b,), generator=generator, device=images.device)
    dx = torch.randint(2 * padding + 1, (b,), generator=generator, device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image of (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standard CIFAR augmentation: 4-pixel padded random crop and horizontal flip."""
    return random_flip(random_crop(images, 4, generator), generator)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, per-channel standardised; mean/std are (3, 1, 1) on the 0-1 scale."""
    return (images.float() / 255 - mean) / std


def epoch_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """The seeded order in which one epoch visits the n training images (cut into batches by the trainer)."""
    return torch.randperm(n, generator=generator, device=generator.device)
