"""--dataset imagenet: JPEG folders streamed through DataLoader workers, on tiny generated folders."""

import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, read_csv, run_train, without_timings
from test_interrupts import kill_twice_then_finish
from bnonly.data import streamed
from bnonly.data.datasets import MemorySplit
from bnonly.distributed import World
from bnonly.training.compute import Compute
from bnonly.training.engine import evaluate

# 32-pixel crops of a CIFAR ResNet-20 keep the runs small; BN-only SGD, fp32 so runs compare number for number
STREAM = ["--dataset", "imagenet", "-a", "resnet20", "--image-size", "32", "-t", "bn", "-b", "8",
          "--precision", "fp32", "--no-progress"]


def make_jpeg_folder(root, classes=3, train=8, val=3, seed=0):
    """root/train/<class>/*.JPEG and root/val/<class>/*.JPEG: noise images of varied sizes, each class its own
    brightness, so a model can learn something."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.random((40 + 5 * i, 56 + 3 * c, 3)) * 100 + 60 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img{i}.JPEG", quality=90)
    return root


@pytest.fixture
def jpegs(tmp_path):
    return make_jpeg_folder(tmp_path / "imagenet")


def test_a_run_streams_the_folder_with_val_as_the_test_split_and_top5(jpegs, tmp_path):
    result = run_train(*STREAM, "--data-dir", jpegs, "--epochs", "2", "--val-split", "6", "--save-dir", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "r" / "history.csv")
    assert len(rows) == 2 and "18 training images" in result.stdout  # 24 minus the 6 held out
    for split in ("val", "test"):
        assert float(rows[-1][f"{split}_acc5"]) == 100.0  # 3 classes: every label is among the top 5


def test_workers_do_not_change_the_images_or_the_crops(jpegs, tmp_path):
    histories = []
    for workers in (1, 2):
        folder = tmp_path / f"j{workers}"
        result = run_train(*STREAM, "--data-dir", jpegs, "--epochs", "2", "-j", workers, "--save-dir", folder)
        assert result.returncode == 0, result.stderr
        histories.append(without_timings(read_csv(folder / "history.csv")))
    assert histories[0] == histories[1]


def test_the_crops_depend_on_seed_epoch_and_index_alone(jpegs):
    paths, labels = streamed.list_folder(str(jpegs / "train"), ["n00", "n01", "n02"])
    folder = streamed.StreamedFolder(paths, labels, 32, train=True, seed=5)
    first = [folder[(i, 3)][0] for i in (0, 7, 11)]
    assert all(torch.equal(a, folder[(i, 3)][0]) for a, i in zip(first, (0, 7, 11)))  # any order, any process
    assert not torch.equal(first[0], folder[(0, 4)][0])  # another epoch, another crop
    assert first[0].shape == (3, 32, 32) and first[0].dtype == torch.uint8


def test_random_resized_box_stays_inside_the_image_and_keeps_its_scale():
    generator = torch.Generator().manual_seed(0)
    for width, height in ((500, 375), (40, 300), (1000, 50)):
        for _ in range(200):
            left, top, w, h = streamed.random_resized_box(width, height, generator)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height and w > 0 and h > 0
    areas = [w * h / (500 * 375) for *_, w, h in (streamed.random_resized_box(500, 375, generator) for _ in range(500))]
    assert 0.07 < min(areas) and max(areas) <= 1.0 and 0.4 < float(np.mean(areas)) < 0.65  # U[0.08, 1] on average


def test_reduced_scale_decoding_gives_nearly_the_same_pixels(tmp_path):
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.random((25, 32, 3)) * 255, np.ones((16, 16, 1)))  # 400 x 512, smooth at 1/8 scale
    path = tmp_path / "big.JPEG"
    Image.fromarray(smooth.astype(np.uint8)).save(path, quality=95)
    box = lambda w, h: streamed.centre_box(w, h, 32)  # noqa: E731
    reduced = streamed.decode_box(str(path), 32, box, reduce=True).double()
    full = streamed.decode_box(str(path), 32, box, reduce=False).double()
    assert reduced.shape == full.shape == (3, 32, 32)
    assert (reduced - full).abs().mean() < 6  # of 255: the DCT-scaled decode averages as the resize does


def test_evaluate_counts_top5_against_known_logits():
    class Fixed(torch.nn.Module):  # the logits are the first 7 pixels of each image: the ranking is known
        def forward(self, x):
            return x.flatten(1)[:, :7]
    images = torch.zeros(4, 3, 1, 7, dtype=torch.uint8)
    images[:, 0, 0] = torch.tensor([[7, 6, 5, 4, 3, 2, 1]] * 4)  # class 0 best, class 6 worst
    labels = torch.tensor([0, 3, 4, 6])  # top-1 hit, in the top 5 twice (ranks 4 and 5), outside
    identity = type("Identity", (), {"prepare": staticmethod(lambda x: x.float())})()
    metrics = evaluate(Fixed(), MemorySplit(images, labels), identity, Compute(torch.device("cpu"), "fp32"),
                       world=World())
    assert metrics["acc"] == 25.0 and metrics["acc5"] == 75.0


@pytest.mark.slow  # 25 s; the fast suite has the in-memory SIGKILL test and -j 1 against -j 2 here
def test_sigkill_mid_epoch_then_resume_gives_the_same_history(jpegs, tmp_path):
    args = [*STREAM, "--data-dir", jpegs, "--epochs", "3", "-b", "4"]
    expected_run = run_train(*args, "--save-dir", tmp_path / "straight")
    assert expected_run.returncode == 0, expected_run.stderr
    expected = without_timings(read_csv(tmp_path / "straight" / "history.csv"))
    folder = tmp_path / "killed"
    kills, mid_epoch = kill_twice_then_finish([*args, "--checkpoint-minutes", "1e-9", "--save-dir", folder], folder,
                                              random.Random(0))
    assert kills == 2 and mid_epoch >= 1
    assert without_timings(read_csv(folder / "history.csv")) == expected


def test_bad_folders_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_train(*STREAM, "--data-dir", empty, "--save-dir", tmp_path / "a"), "train", "imagenet")
    one = make_jpeg_folder(tmp_path / "one", classes=1)
    assert_one_line_error(run_train(*STREAM, "--data-dir", one, "--save-dir", tmp_path / "b"), "one class", "two")
    none = tmp_path / "none"
    (none / "train").mkdir(parents=True)
    assert_one_line_error(run_train(*STREAM, "--data-dir", none, "--save-dir", tmp_path / "c"), "no class folders")
    other = make_jpeg_folder(tmp_path / "other")
    shutil.rmtree(other / "val" / "n02")
    assert_one_line_error(run_train(*STREAM, "--data-dir", other, "--save-dir", tmp_path / "d"), "'n02'",
                          "missing from", "val")
    assert not any((tmp_path / name).exists() for name in "abcd")  # nothing written


def test_a_truncated_jpeg_stops_the_run_naming_the_file(jpegs, tmp_path):
    victim = jpegs / "train" / "n01" / "img3.JPEG"
    victim.write_bytes(victim.read_bytes()[:200])
    result = run_train(*STREAM, "--data-dir", jpegs, "--epochs", "1", "-j", "2", "--save-dir", tmp_path / "r")
    assert_one_line_error(result, str(victim), "cannot decode")


def test_streamed_data_refuses_settings_that_need_it_in_memory(jpegs, tmp_path):
    for flags, word in ((["--bn-adapt", "true", "--val-split", "3"], "--bn-adapt"),
                        (["--bn-recalibrate", "64"], "--bn-recalibrate")):
        assert_one_line_error(run_train(*STREAM, "--data-dir", jpegs, *flags, "--save-dir", tmp_path / "r"), word)


def test_the_recipe_defaults_follow_openlth():
    from bnonly.config import parse_args
    cfg = parse_args(["--dataset", "imagenet", "--data-dir", "x"])[0]
    assert (cfg.arch, cfg.epochs, cfg.batch_size, cfg.image_size) == ("torchvision:resnet50", 90, 256, 224)
    assert (cfg.warmup_epochs, cfg.milestones, cfg.momentum, cfg.weight_decay) == (5, [30, 60, 80], 0.9, 1e-4)
    assert cfg.lr == pytest.approx(0.1)  # 0.4 per 1,024 images, at batch 256


def test_torchrun_ranks_decode_their_own_part_and_follow_one_process(jpegs, tmp_path):
    from test_distributed import torchrun
    args = [*STREAM, "--data-dir", jpegs, "--epochs", "2", "--val-split", "6", "-j", "1"]
    single = run_train(*args, "-b", "8", "--save-dir", tmp_path / "single")
    double = torchrun(*args, "-b", "4", "--sync-bn", "true", "--save-dir", tmp_path / "double")
    assert single.returncode == 0, single.stderr
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = read_csv(tmp_path / "single" / "history.csv"), read_csv(tmp_path / "double" / "history.csv")
    for a, b in zip(one, two, strict=True):  # the same images and crops, whichever rank decoded them
        for column in ("lr", "train_loss", "val_loss", "test_loss"):
            assert float(b[column]) == pytest.approx(float(a[column]), rel=1e-4), column


def test_padded_crops_see_the_in_memory_pixels(tmp_path):
    from bnonly.data.datasets import decode_image
    folder = make_jpeg_folder(tmp_path / "small", classes=2, train=2, val=0)
    paths, labels = streamed.list_folder(str(folder / "train"), ["n00", "n01"])
    evaluation = streamed.StreamedFolder(paths, labels, 32, train=False, crop="padded")
    training = streamed.StreamedFolder(paths, labels, 32, train=True, crop="padded")
    for index, path in enumerate(paths):
        resized = torch.from_numpy(decode_image(path, 32).copy())  # what --dataset imagefolder holds in memory
        assert (evaluation[(index, 0)][0].int() - resized.int()).abs().max() <= 1  # resizes round alike
        crop = training[(index, 0)][0]
        padded = torch.nn.functional.pad(resized, (4,) * 4)
        windows = [padded[:, y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
        windows += [window.flip(2) for window in windows]  # maybe mirrored
        assert any((crop.int() - window.int()).abs().max() <= 1 for window in windows)


def test_lbfgs_trains_on_streamed_batches(jpegs, tmp_path):
    result = run_train(*STREAM, "--data-dir", jpegs, "--epochs", "1", "--use-lbfgs", "true", "--lbfgs-batch-size", "8",
                       "--save-dir", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    row = read_csv(tmp_path / "r" / "history.csv")[-1]
    assert float(row["passes"]) > 0 and np.isfinite(float(row["train_loss"]))
