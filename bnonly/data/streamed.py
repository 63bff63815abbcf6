"""Image folders too large for memory (ImageNet): files decoded and augmented in DataLoader workers.

`--dataset imagenet --data-dir DIR` reads torchvision's reference layout, DIR/train/<class>/*.JPEG and
DIR/val/<class>/*.JPEG (the test split here). Only the file list and the labels are held in memory; each
step's images are decoded by worker processes, cropped and resized there on uint8 pixels, and reach the
device as one (N, 3, S, S) uint8 batch, normalised there (datasets.StreamedInputs), as timm's prefetcher does.

Every random choice of a training image (its RandomResizedCrop box and its flip) comes from a generator
seeded by (run seed, epoch, image index), never from the worker that happens to decode it: any number of
workers (-j) gives the same batches, and a run resumed mid-epoch decodes the same crops again.

Decoding at reduced scale: a JPEG is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, PIL's
`draft`) whenever the crop still has at least the output's resolution at that scale, so a crop that will
be shrunk to 224 pixels never pays for the full-size decode.
"""

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bnonly.data.folder_cache import DataError, class_folders, split_folders
from bnonly.distributed import shard

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per channel, 0-1 pixel scale: ImageNet's, as torchvision's references use
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop: fraction of the image's area
CROP_RATIO = (3 / 4, 4 / 3)  # and aspect ratio (width / height) of the box
RESIZE_RATIO = 256 / 224  # evaluation: the shorter side resized to 256 for a 224 centre crop
CROPS = ("random-resized", "padded")  # --streamed-crop: the ImageNet recipe's, or the CIFAR recipe's
PADDING = 4  # "padded": pixels of zeros around the resized image before the random crop (as the in-memory path)
BAD_IMAGE = -1  # the label a worker returns for an image it cannot decode (the main process names the file)


# ---------------------------------------------------------------- listing

def list_folder(folder: str, classes: list) -> tuple:
    """([paths], labels (N,) int64): every image under folder/<class>/ for `classes` in that order, files
    sorted within a class."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        for parent, dirs, files in os.walk(os.path.join(folder, name), followlinks=True):
            dirs.sort()
            images = sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
            paths += [os.path.join(parent, f) for f in images]
            labels += [label] * len(images)
    return paths, torch.tensor(labels, dtype=torch.int64)


def load_image_folders(data_dir: str) -> tuple:
    """({"train": (paths, labels), "test": ...}, classes) of an ImageNet-layout folder; DataError for a folder
    without train/, with fewer than two classes or other classes in val/, or with a class that has no images."""
    folders = split_folders(data_dir, "imagenet", "*.JPEG")
    classes = class_folders(folders)
    splits = {name: list_folder(folder, classes) for name, folder in folders.items()}
    counts = torch.bincount(splits["train"][1], minlength=len(classes))
    if (counts == 0).any():
        empty = classes[int((counts == 0).nonzero()[0])]
        raise DataError(f"{os.path.join(folders['train'], empty)} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    for name, (paths, _) in splits.items():
        if not paths:
            raise DataError(f"{folders[name]} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return splits, classes


# ---------------------------------------------------------------- one image

def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one training image's random choices: a function of the run's seed, the epoch and
    the image's index alone."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def random_resized_box(width: int, height: int, generator: torch.Generator) -> tuple:
    """(left, top, box width, box height) of a RandomResizedCrop: a box of CROP_SCALE of the area and
    CROP_RATIO aspect ratio (log-uniform) at a uniform position; after 10 misses, the centred box of the
    image's aspect ratio clamped to CROP_RATIO (Szegedy et al.'s Inception crop, as torchvision draws it)."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (CROP_SCALE[0] + draws[0] * (CROP_SCALE[1] - CROP_SCALE[0]))
        ratio = math.exp(log_ratio[0] + draws[1] * (log_ratio[1] - log_ratio[0]))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(draws[2] * (width - w + 1)), int(draws[3] * (height - h + 1)), w, h
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def centre_box(width: int, height: int, size: int) -> tuple:
    """(left, top, box width, box height) that resize-then-centre-crop takes: the shorter side resized to
    size x RESIZE_RATIO, then the central size x size, expressed in the original image's pixels."""
    crop = min(width, height) / RESIZE_RATIO  # size pixels of the resized image, in the original's pixels
    return (width - crop) / 2, (height - crop) / 2, crop, crop


def decode_box(path: str, size: int, box_of, reduce: bool = True) -> torch.Tensor:
    """The image at `path` cropped to `box_of(width, height)` and resized to (size, size): (3, size, size)
    uint8 RGB. With `reduce`, a JPEG is first decoded at the smallest DCT scale (1/1 ... 1/8) at which
    the box keeps at least `size` pixels a side. The resize is torch's antialiased bilinear on the uint8
    pixels (channels-last), twice as fast here as PIL's on the same box (BENCHMARKS.md)."""
    from PIL import Image
    with Image.open(path) as image:
        width, height = image.size
        left, top, w, h = box_of(width, height)
        factor = min(w, h) / size  # how far the box may shrink and still hold size pixels a side
        if reduce and image.format == "JPEG" and factor >= 2:  # libjpeg scales by 1/2, 1/4 or 1/8 only
            image.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
        scale_x, scale_y = image.size[0] / width, image.size[1] / height  # 1/1 ... 1/8 after draft
        pixels = torch.from_numpy(np.array(image if image.mode == "RGB" else image.convert("RGB")))  # (H, W, 3)
    x0, y0 = round(left * scale_x), round(top * scale_y)
    x1, y1 = max(x0 + 1, round((left + w) * scale_x)), max(y0 + 1, round((top + h) * scale_y))
    crop = pixels[y0:y1, x0:x1].permute(2, 0, 1).unsqueeze(0)  # (1, 3, h, w), channels-last strides
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def whole_box(width: int, height: int) -> tuple:
    return 0, 0, width, height


def padded_crop(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The CIFAR recipe's crop of one (3, S, S) image: zero-padded by PADDING, a random S x S window."""
    size = pixels.shape[-1]
    dy, dx = torch.randint(2 * PADDING + 1, (2,), generator=generator).tolist()
    return F.pad(pixels, (PADDING,) * 4)[:, dy:dy + size, dx:dx + size]


class StreamedFolder(torch.utils.data.Dataset):
    """Images decoded on demand. A key is (index, epoch): a training folder draws the image's crop and flip
    from sample_generator(seed, epoch, index); an evaluation folder (`train` False) takes the resized centre
    ("random-resized") or the whole image resized ("padded"). An image that cannot be decoded comes back as
    zeros with the label BAD_IMAGE."""

    def __init__(self, paths, labels: torch.Tensor, size: int, train: bool, seed: int = 0, reduce: bool = True,
                 crop: str = "random-resized"):
        # One bytes array, not a list of str: forked workers would copy every str object they touch (reference
        # counts), so a list of 1.28 M paths grows each worker's memory over an epoch; an array stays shared.
        self.paths = paths if isinstance(paths, np.ndarray) else np.array([os.fsencode(p) for p in paths])
        self.labels, self.size, self.train, self.seed, self.reduce = labels, size, train, seed, reduce
        self.crop = crop

    def path(self, index: int) -> str:
        return os.fsdecode(self.paths[index])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        index, epoch = key
        try:
            padded = self.crop == "padded"
            if self.train:
                generator = sample_generator(self.seed, epoch, index)
                box = whole_box if padded else lambda w, h: random_resized_box(w, h, generator)
                pixels = decode_box(self.path(index), self.size, box, self.reduce)
                pixels = padded_crop(pixels, generator) if padded else pixels
                if torch.rand((), generator=generator) < 0.5:
                    pixels = pixels.flip(2)
            else:
                box = whole_box if padded else lambda w, h: centre_box(w, h, self.size)
                pixels = decode_box(self.path(index), self.size, box, self.reduce)
            return pixels.contiguous(), int(self.labels[index])
        except Exception:  # truncated, corrupt, too large or not an image (PIL's errors): named by the loop
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), BAD_IMAGE


class EpochBatches:
    """The batch sampler of a StreamedSplit: the keys of the batches asked for next, set before each pass."""

    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class StreamedSplit:
    """A split whose images stay on disk. `batches(index_batches, epoch, world)` yields, for each batch of
    image indices, this process's share of it as (images (n, 3, S, S) uint8, labels (n,) int64) on the
    device and the slice still to take of them (all: under torchrun each rank decodes only its part)."""

    def __init__(self, folder: StreamedFolder, workers: int, device="cpu"):
        self.folder, self.workers, self.device = folder, workers, torch.device(device)
        self.labels = folder.labels.to(self.device)
        self._sampler = EpochBatches()
        self._loader = None

    def __len__(self):
        return len(self.folder)

    def to(self, device) -> "StreamedSplit":
        return StreamedSplit(self.folder, self.workers, device)

    def subset(self, index: torch.Tensor, train: bool = None) -> "StreamedSplit":
        """The images at `index`, in that order; `train` False makes them an evaluation split (centre crops)."""
        index = index.cpu()
        folder = StreamedFolder(self.folder.paths[index.numpy()], self.folder.labels[index],
                                self.folder.size, self.folder.train if train is None else train, self.folder.seed,
                                self.folder.reduce, self.folder.crop)
        return StreamedSplit(folder, self.workers, self.device)

    def loader(self) -> DataLoader:
        """One DataLoader for the run, its workers kept between passes (persistent_workers)."""
        if self._loader is None:
            # its own generator for the workers' base seed: none is drawn from torch's global one, which a
            # resumed run would otherwise draw at other moments than the uninterrupted run (dropout uses it)
            self._loader = DataLoader(self.folder, batch_sampler=self._sampler, num_workers=self.workers,
                                      generator=torch.Generator(),
                                      persistent_workers=self.workers > 0, pin_memory=self.device.type == "cuda",
                                      prefetch_factor=4 if self.workers > 0 else None)
        return self._loader

    def batches(self, index_batches: list, epoch: int, world):
        mine = [index[shard(len(index), world)].tolist() for index in index_batches]
        self._sampler.batches = [[(i, epoch) for i in part] for part in mine if part]
        loaded = iter(self.loader()) if self._sampler.batches else iter(())
        for part in mine:
            if not part:  # a last batch smaller than the ranks: this rank has none of it
                yield (torch.zeros(0, 3, self.folder.size, self.folder.size, dtype=torch.uint8, device=self.device),
                       torch.zeros(0, dtype=torch.int64, device=self.device), slice(None))
                continue
            images, labels = next(loaded)
            bad = (labels == BAD_IMAGE).nonzero()
            if len(bad):
                path = self.folder.path(part[int(bad[0])])
                raise DataError(f"cannot decode {path}: truncated, corrupt or not an image; remove or replace it")
            yield (images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True), slice(None))
