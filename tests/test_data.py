"""Data: synthetic and imagefolder loading, the decoded cache, splits, and batched augmentation."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bnonly.data import datasets as data
from bnonly.data import folder_cache
from bnonly.config import parse_args
from bnonly.data.datasets import (DataError, augment, channel_stats, load_dataset, random_crop, random_flip,
                                  stratified_split)


def make_image_folder(root, classes=("cat", "dog"), per_class=6, test=True, size=32):
    """A tiny ImageFolder tree of PNGs whose colour depends on the class."""
    rng = np.random.default_rng(0)
    for split in ("train", "test") if test else ("train",):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + 150 * index
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def imagefolder_cfg(root, cache, *extra):
    return parse_args(["--dataset", "imagefolder", "--data-dir", str(root), "--cache-dir", str(cache), "-j", "1",
                       *extra])[0]


def test_imagefolder_loads_and_caches(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "images")
    cfg = imagefolder_cfg(root, tmp_path / "cache")
    ds = load_dataset(cfg)
    images, labels = ds.splits["train"]
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * 6 + [1] * 6 and ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert ds.splits["test"][0].shape == (12, 3, 32, 32)
    assert images[labels == 1].float().mean() > images[labels == 0].float().mean() + 100  # pixels kept
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert ds.mean[0] == pytest.approx(images.float().mean().item() / 255, rel=0.05)  # stats of the train split

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache is valid")
    monkeypatch.setattr(data, "decode_files", no_decoding)
    monkeypatch.setitem(sys.modules, "torchvision.datasets.folder", None)  # a cache hit lists no files with it
    again = load_dataset(cfg)
    assert torch.equal(again.splits["train"][0], images) and again.classes == ["cat", "dog"]
    monkeypatch.undo()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "cat" / "extra.png")
    changed = load_dataset(cfg)  # a changed folder is decoded anew
    assert len(changed.splits["train"][1]) == 13


def test_imagefolder_resizes_other_sizes(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=2, test=False, size=40)
    ds = load_dataset(imagefolder_cfg(root, tmp_path / "cache"))
    assert ds.splits["train"][0].shape == (4, 3, 32, 32) and "test" not in ds.splits


def test_imagefolder_parallel_decode_matches_serial(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=300, test=False)
    samples = [(str(p), 0) for p in sorted((root / "train" / "cat").glob("*.png"))]
    serial, _ = data.decode_files(samples, 32, workers=1)
    parallel, _ = data.decode_files(samples, 32, workers=2)
    assert torch.equal(serial, parallel)


def test_imagefolder_corrupt_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=2)
    (root / "train" / "dog" / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(imagefolder_cfg(root, tmp_path / "cache"))


@pytest.mark.parametrize("layout", ["missing", "empty", "empty_class"])
def test_imagefolder_missing_or_empty(tmp_path, layout):
    root = tmp_path / "images"
    if layout != "missing":
        (root / "train").mkdir(parents=True)
    if layout == "empty_class":
        (root / "train" / "cat").mkdir()
    with pytest.raises(DataError):
        load_dataset(imagefolder_cfg(root, tmp_path / "cache"))


def test_cifar_offline_without_files(tmp_path):
    cfg = parse_args(["--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"), "--no-download"])[0]
    with pytest.raises(DataError, match="--dataset synthetic"):
        load_dataset(cfg)
    assert not (tmp_path / "nothing").exists()


def test_synthetic_is_deterministic_and_sized():
    cfg = parse_args(["--dataset", "synthetic"])[0]
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a.splits["train"][0].shape == (1024, 3, 32, 32) and a.splits["test"][0].shape == (256, 3, 32, 32)
    assert torch.equal(a.splits["train"][0], b.splits["train"][0])
    assert len(torch.unique(a.splits["train"][1])) == 10


def test_val_split_and_sizes():
    cfg = parse_args(["--dataset", "synthetic", "--val-split", "100", "--train-size", "500", "--test-size", "50"])[0]
    ds = load_dataset(cfg)
    assert len(ds.splits["val"][1]) == 100 and len(ds.splits["train"][1]) == 500 and len(ds.splits["test"][1]) == 50


def test_stratified_split_keeps_class_shares():
    labels = torch.arange(10).repeat_interleave(torch.tensor([100, 100, 100, 100, 100, 50, 50, 50, 50, 300]))
    train_index, val_index = stratified_split(labels, 100, seed=0)
    assert len(val_index) == 100 and len(train_index) == len(labels) - 100
    assert len(set(train_index.tolist()) | set(val_index.tolist())) == len(labels)
    counts = torch.bincount(labels[val_index], minlength=10).tolist()
    assert counts == [10, 10, 10, 10, 10, 5, 5, 5, 5, 30]
    assert torch.equal(stratified_split(labels, 100, seed=0)[1], val_index)


def test_random_crop_is_a_shifted_window_with_zero_padding():
    images = torch.arange(1, 2 * 3 * 8 * 8 + 1).reshape(2, 3, 8, 8).to(torch.int64)
    crops = random_crop(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    assert crops.shape == images.shape
    for crop, source in zip(crops, padded):
        windows = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(source[:, dy:dy + 8, dx:dx + 8], crop)]
        assert len(windows) == 1


def test_flip_and_augment_are_seeded():
    images = torch.randint(0, 255, (64, 3, 32, 32), dtype=torch.uint8)
    flipped = random_flip(images, torch.Generator().manual_seed(1))
    same = [torch.equal(f, i) for f, i in zip(flipped, images)]
    mirrored = [torch.equal(f, i.flip(2)) for f, i in zip(flipped, images)]
    assert all(s or m for s, m in zip(same, mirrored)) and 10 < sum(mirrored) < 54
    one = augment(images, torch.Generator().manual_seed(5))
    two = augment(images, torch.Generator().manual_seed(5))
    assert torch.equal(one, two) and one.dtype == torch.uint8


def test_channel_stats_match_the_float_computation():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:, 2] //= 4  # channels with different statistics
    mean, std = channel_stats(images)
    pixels = images.double().div(255).transpose(0, 1).flatten(1)  # (3, N*H*W)
    assert mean == pytest.approx(pixels.mean(1).tolist(), rel=1e-12)
    assert std == pytest.approx(pixels.std(1, correction=0).tolist(), rel=1e-9)
    assert channel_stats(torch.full((2, 3, 4, 4), 7, dtype=torch.uint8))[1] == pytest.approx((1e-6,) * 3)


def test_cache_key_sees_new_folders_and_files_behind_links(tmp_path):
    root = make_image_folder(tmp_path / "images", test=False)
    elsewhere = make_image_folder(tmp_path / "other", classes=("bird",), test=False)
    (root / "train" / "bird").symlink_to(elsewhere / "train" / "bird", target_is_directory=True)
    folders = {"train": str(root / "train")}
    keys = [folder_cache.cache_key(folders, "size32")]
    (root / "train" / "fish").mkdir()  # an empty class folder
    keys.append(folder_cache.cache_key(folders, "size32"))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(elsewhere / "train" / "bird" / "new.png")
    keys.append(folder_cache.cache_key(folders, "size32"))  # an image added behind the link
    assert len(set(keys)) == 3
    assert folder_cache.cache_key(folders, "size32") == keys[-1] != folder_cache.cache_key(folders, "size64")


def test_one_class_or_other_test_classes_are_one_line_errors_before_anything_is_written(tmp_path):
    from conftest import assert_one_line_error, run_train
    single = make_image_folder(tmp_path / "single", classes=("cat",))
    extra = make_image_folder(tmp_path / "extra")
    make_image_folder(tmp_path / "extra_test", classes=("emu",))
    (extra / "test" / "emu").symlink_to(tmp_path / "extra_test" / "test" / "emu", target_is_directory=True)
    fewer = make_image_folder(tmp_path / "fewer")
    for path in (fewer / "test" / "dog").iterdir():
        path.unlink()
    (fewer / "test" / "dog").rmdir()
    cases = ((single, ("one class folder", "at least two")), (extra, ("'emu'", "only in", "test")),
             (fewer, ("'dog'", "missing from", "test")))
    for root, words in cases:
        out = tmp_path / f"run_{root.name}"
        result = run_train("--dataset", "imagefolder", "--data-dir", root, "--cache-dir", tmp_path / "cache",
                           "--epochs", "1", "--save-dir", out)
        assert_one_line_error(result, str(root), *words)
        assert not out.exists()
