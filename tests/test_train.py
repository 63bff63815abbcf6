"""train.py end to end on tiny synthetic data: run folder, reproducibility, resume, L-BFGS, errors."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY, assert_one_line_error, read_csv, run_train, without_timings
from bnonly.training.compute import Compute
from bnonly.optim.factories import build_optimizer
from bnonly.training.engine import bn_buffers, lbfgs_step, sgd_step
from bnonly.config import parse_args
from bnonly.data.datasets import ImageInputs
from bnonly.models.resnet import build_model, freeze

FP32 = Compute(torch.device("cpu"))
HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_acc5", "test_loss", "test_acc",
                   "test_acc5", "epoch_seconds", "eval_seconds", "images_per_second", "passes", "rollbacks",
                   "images_forward_backward", "images_forward_only"]


def test_run_folder_has_the_four_files(tiny_run):
    folder, result = tiny_run
    assert sorted(os.listdir(folder)) == ["checkpoint.pt", "config.json", "history.csv", "summary.json"]
    rows = read_csv(folder / "history.csv")
    assert list(rows[0]) == HISTORY_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    assert all(0 <= float(r["train_acc"]) <= 100 and float(r["passes"]) == 4 for r in rows)  # 256 / 64 batches
    assert all(r["images_forward_backward"] == "256" and r["images_forward_only"] == "0" for r in rows)
    config = json.loads((folder / "config.json").read_text())
    assert config["trainable"] == "bn" and config["optimizer"] == "sgd" and config["world_size"] == 1
    assert {"torch", "torchvision", "python"} <= set(config["versions"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["trainable_params"] == 1376 and summary["total_params"] == 269_722
    assert summary["final"]["val_acc"] == float(rows[-1]["val_acc"]) and summary["passes"] == 8
    disabled = summary["disabled_features"]  # fraction of |gamma| < 0.01, per BN layer and over all 1376 / 2
    assert disabled["threshold"] == 0.01 and len(disabled["layers"]) == 19 and "layer3.2.bn2" in disabled["layers"]
    assert 0 <= disabled["overall"] <= 1
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "config", "normalization"} <= set(checkpoint)
    assert checkpoint["epoch"] == 2 and len(checkpoint["normalization"]["mean"]) == 3
    assert result.stdout.count("epoch ") >= 2 and "val loss" in result.stdout


def test_evaluate_prints_one_line(tiny_run):
    folder, _ = tiny_run
    before = sorted((p, os.path.getmtime(folder / p)) for p in os.listdir(folder))
    result = run_train("--resume", folder, "-e", "--no-progress")
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[0] == "test_loss" and words[2] == "test_acc" and 0 <= float(words[3]) <= 100
    rows = read_csv(folder / "history.csv")
    assert float(words[3]) == pytest.approx(float(rows[-1]["test_acc"]), abs=0.01)
    assert sorted((p, os.path.getmtime(folder / p)) for p in os.listdir(folder)) == before  # nothing written


def test_same_seed_same_history_and_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = run_train(*TINY, "-t", "bn", "--epochs", "2", "--seed", seed, "--save-dir", tmp_path / name)
        assert result.returncode == 0, result.stderr
        runs[name] = without_timings(read_csv(tmp_path / name / "history.csv"))
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


# lbfgs is slow: the multibatch mid-epoch resume (test_interrupts) is the fast L-BFGS representative
@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("lbfgs", marks=pytest.mark.slow)])
def test_resume_continues_exactly(tmp_path, optimizer):
    common = [*TINY, "-t", "bn", "--optimizer", optimizer, "--lbfgs-batch-size", "128", "--lbfgs-max-iter", "2"]
    straight = run_train(*common, "--epochs", "3", "--milestones", "2", "--save-dir", tmp_path / "straight")
    first = run_train(*common, "--epochs", "2", "--milestones", "2", "--save-dir", tmp_path / "split")
    resumed = run_train("--resume", tmp_path / "split", "--epochs", "3", "--no-progress")
    for result in (straight, first, resumed):
        assert result.returncode == 0, result.stderr
    assert "epoch    3/3" in resumed.stdout and "epoch    1/" not in resumed.stdout
    expected = without_timings(read_csv(tmp_path / "straight" / "history.csv"))
    assert without_timings(read_csv(tmp_path / "split" / "history.csv")) == expected


def test_modes_write_runs_that_plots_draw(tmp_path):
    folders = []
    for name, args in (("bn_lbfgs", ["-t", "bn", "--use-lbfgs", "True", "--lbfgs-batch-size", "128"]),
                       ("bn_sgd", ["-t", "bn", "--use-lbfgs", "False"]), ("all_sgd", ["-t", "all"])):
        result = run_train(*TINY, *args, "--epochs", "2", "--save-dir", tmp_path / name)
        assert result.returncode == 0, result.stderr
        folders.append(tmp_path / name)
    assert json.loads((tmp_path / "bn_lbfgs" / "config.json").read_text())["optimizer"] == "lbfgs"
    out = tmp_path / "pictures"
    drawn = subprocess.run([sys.executable, "plots.py", *map(str, folders[:2]), "--out", str(out)], cwd=REPO,
                           capture_output=True, text=True)
    assert drawn.returncode == 0, drawn.stderr
    names = set(os.listdir(out))
    # the default L-BFGS is the multibatch variant, drawn as an optimizer of its own
    assert {"resnet20_LBFGS-MULTIBATCH_bn_acc.png", "resnet20_SGD_bn_loss.png", "LBFGS-MULTIBATCH_vs_SGD_acc.png"} \
        <= names


def test_trainable_none_changes_no_parameter(tmp_path):
    result = run_train(*TINY, "-t", "none", "--epochs", "1", "--save-dir", tmp_path / "none")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "none" / "summary.json").read_text())
    assert summary["trainable_params"] == 0
    state = torch.load(tmp_path / "none" / "checkpoint.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    fresh = build_model("resnet20").state_dict()
    for name, value in fresh.items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(state[name], value), name
    assert state["bn1.num_batches_tracked"] == 4
    assert not torch.equal(state["bn1.running_mean"], fresh["bn1.running_mean"])


def test_lbfgs_moves_bn_statistics_once_per_step():
    torch.manual_seed(0)
    cfg = parse_args(["-t", "bn", "--use-lbfgs", "true", "--lbfgs-variant", "torch", "--lbfgs-max-iter", "4"])[0]
    model = build_model("resnet20")
    optimizer = build_optimizer(cfg, freeze(model, "bn"))
    images, labels = torch.randn(32, 3, 32, 32), torch.arange(32) % 10
    model.train()
    for step in range(1, 3):
        result = lbfgs_step(model, optimizer, images, labels, cfg.weight_decay, FP32)
        assert result["passes"] > 1  # the line search evaluated the closure several times...
        assert all(m.num_batches_tracked.item() == step for m in model.modules() if hasattr(m, "num_batches_tracked"))


def test_lbfgs_running_mean_equals_one_momentum_update():
    torch.manual_seed(0)
    cfg = parse_args(["-t", "bn", "--use-lbfgs", "true", "--lbfgs-variant", "torch"])[0]
    model = build_model("resnet20")
    optimizer = build_optimizer(cfg, freeze(model, "bn"))
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    model.train()
    batch_mean = model.conv1(images).mean(dim=(0, 2, 3))  # bn1's input does not depend on BN parameters
    lbfgs_step(model, optimizer, images, labels, 0.0, FP32)
    assert torch.allclose(model.bn1.running_mean, 0.1 * batch_mean, atol=1e-6)


def test_sgd_step_without_optimizer_runs_forward_only():
    model = build_model("resnet20")
    freeze(model, "none")
    before = bn_buffers(model)
    result = sgd_step(model.train(), None, torch.randn(8, 3, 32, 32), torch.arange(8), FP32)
    assert result["passes"] == 1 and not result["loss"].requires_grad
    assert not torch.equal(before[0], model.bn1.running_mean)


def test_existing_run_is_not_overwritten(tiny_run, tmp_path):
    folder, _ = tiny_run
    before = (folder / "history.csv").read_bytes()
    result = run_train(*TINY, "--epochs", "1", "--save-dir", folder)
    assert_one_line_error(result, "already holds a run", "--resume", "--overwrite")
    assert (folder / "history.csv").read_bytes() == before
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "history.csv").write_bytes(before)
    (copy / "summary.json").write_text("{}")
    result = run_train(*TINY, "--epochs", "1", "--save-dir", copy, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert len(read_csv(copy / "history.csv")) == 1


def test_resume_errors(tiny_run, tmp_path):
    folder, _ = tiny_run
    assert_one_line_error(run_train("--resume", tmp_path / "missing"), "no checkpoint")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    assert_one_line_error(run_train("--resume", junk), "junk.pt")
    assert_one_line_error(run_train("--resume", folder, "-a", "resnet32", "-e"), "resnet32", "resnet20")
    assert_one_line_error(run_train("--resume", folder, "--use-lbfgs", "true"), "lbfgs")


def test_resume_refuses_changed_settings_and_foreign_folders(tiny_run, tmp_path):
    folder, _ = tiny_run
    assert_one_line_error(run_train("--resume", folder, "--lr", "0.5"), "--lr 0.5", "0.1")
    assert_one_line_error(run_train("--resume", folder, "--val-split", "10"), "--val-split")
    other = tmp_path / "other"
    other.mkdir()
    (other / "history.csv").write_text("epoch\n1\n")
    result = run_train("--resume", folder, "--epochs", "3", "--save-dir", other)
    assert_one_line_error(result, "already holds a run")
    assert (other / "history.csv").read_text() == "epoch\n1\n"


def test_resume_of_a_damaged_checkpoint(tiny_run, tmp_path):
    folder, _ = tiny_run
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    state["normalization"] = {"mean": [0.5], "std": [0.2]}
    torch.save(state, tmp_path / "damaged.pt")
    assert_one_line_error(run_train("--resume", tmp_path / "damaged.pt", "-e"), "not a train.py checkpoint")


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": Hostile(marker), "config": {}, "epoch": 1}, fh)
    result = run_train("--resume", path)
    assert_one_line_error(result, "not plain data")
    assert not marker.exists()


def test_save_dir_below_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run_train(*TINY, "--save-dir", tmp_path / "file" / "run"), "is a file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_an_error(tmp_path):
    result = run_train(*TINY, "--device", "cuda", "--save-dir", tmp_path / "run")
    assert_one_line_error(result, "CUDA is not available")
    assert not (tmp_path / "run").exists()


def test_bn_recalibration_is_the_plain_average_over_fixed_images():
    from bnonly.training.engine import recalibrate_bn
    torch.manual_seed(0)
    model = build_model("resnet20").train()
    images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    pipeline = ImageInputs((0.5,) * 3, (0.25,) * 3, "cpu")
    model(torch.randn(4, 3, 32, 32) * 5)  # move the running averages away from anything sensible
    recalibrate_bn(model, images, pipeline, count=64, compute=FP32, batch_size=16)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))[:64]
    with torch.no_grad():
        expected = model.conv1((images[order].float() / 255 - 0.5) / 0.25).mean(dim=(0, 2, 3))
    assert torch.allclose(model.bn1.running_mean, expected, atol=1e-5)
    assert model.bn1.momentum == 0.1 and model.training


def test_bn_recalibration_defaults_follow_the_optimizer():
    assert parse_args(["--use-lbfgs", "true"])[0].bn_recalibrate == 4096
    assert parse_args([])[0].bn_recalibrate == 0
    assert parse_args(["--use-lbfgs", "true", "--bn-recalibrate", "0"])[0].bn_recalibrate == 0


def test_synthetic_classes_are_learnable_within_an_epoch(tmp_path):
    result = run_train("--dataset", "synthetic", "-a", "resnet20", "-t", "all", "--epochs", "1", "--no-progress",
                       "--bn-recalibrate", "1024", "--save-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert float(read_csv(tmp_path / "run" / "history.csv")[0]["test_acc"]) > 30  # chance is 10 %


def test_random_control_trains_as_many_parameters_as_bn_and_resumes(tmp_path):
    common = [*TINY, "-t", "random", "--seed", "3"]
    straight = run_train(*common, "--epochs", "2", "--milestones", "2", "--save-dir", tmp_path / "straight")
    first = run_train(*common, "--epochs", "1", "--milestones", "2", "--save-dir", tmp_path / "split")
    resumed = run_train("--resume", tmp_path / "split", "--epochs", "2", "--no-progress")
    for result in (straight, first, resumed):
        assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["trainable_params"] == 1376 and summary["total_params"] == 269_722  # = BN's gamma/beta
    assert without_timings(read_csv(tmp_path / "split" / "history.csv")) == without_timings(
        read_csv(tmp_path / "straight" / "history.csv"))


def test_bn_init_choices_are_the_models():
    from bnonly.config import BN_INITS
    from bnonly.models import resnet
    assert BN_INITS == resnet.BN_INITS
    for name in BN_INITS:
        assert parse_args(["--bn-init", name])[0].bn_init == name
