"""Runs survive SIGKILL, SIGINT and SIGTERM, and non-finite losses are handled as documented."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY, read_csv, run_train, without_timings
from bnonly.training.compute import Compute
from bnonly.optim.factories import build_optimizer
from bnonly.training.engine import lbfgs_step
from bnonly.config import parse_args
from bnonly.models.resnet import build_model, freeze
from bnonly.runs.runfiles import load_checkpoint
from bnonly.stopping import GracefulStop

COMMON = [*TINY, "-t", "bn", "--lbfgs-batch-size", "64", "--lbfgs-max-iter", "2", "--epochs", "4"]


def start_train(*args, env=None):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def modified(path):
    return path.stat().st_mtime_ns if path.exists() else None


def wait_for(path, process, timeout=120, since=None):
    """Wait until `path` exists and was written after modification time `since` (True), or the process
    ended (False)."""
    deadline = time.monotonic() + timeout
    while modified(path) in (None, since):
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return True


def kill_twice_then_finish(args, folder, rng) -> tuple:
    """Start train.py with `args` (which save into `folder`), SIGKILL it at a random moment after each new
    checkpoint, twice, resuming each time, and let the last attempt finish; returns (kills, how many of
    them left a mid-epoch checkpoint)."""
    kills, mid_epoch = 0, 0
    while True:
        written = modified(folder / "checkpoint.pt")
        process = start_train(*args)
        if wait_for(folder / "checkpoint.pt", process, since=written):  # kill only after the run made progress
            time.sleep(rng.uniform(0, 0.3))
        if process.poll() is None and kills < 2:
            process.kill()
            process.communicate()
            kills += 1
            mid_epoch += load_checkpoint(str(folder / "checkpoint.pt")).get("progress") is not None
            args = ["--resume", folder, "--no-progress"]
            continue
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr
        return kills, mid_epoch


def reference_history(tmp_path, optimizer):
    result = run_train(*COMMON, "--optimizer", optimizer, "--save-dir", tmp_path / "straight")
    assert result.returncode == 0, result.stderr
    return without_timings(read_csv(tmp_path / "straight" / "history.csv"))


@pytest.mark.parametrize("optimizer", ["sgd", *(pytest.param(name, marks=pytest.mark.slow) for name in ("lbfgs", "adam"))])
def test_sigkill_at_random_moments_then_resume_gives_the_same_history(tmp_path, optimizer):
    expected = reference_history(tmp_path, optimizer)
    folder = tmp_path / "killed"
    args = [*COMMON, "--optimizer", optimizer, "--checkpoint-minutes", "1e-9", "--save-dir", folder]
    kills, mid_epoch = kill_twice_then_finish(args, folder, random.Random(optimizer))
    assert kills >= 2 and mid_epoch >= 1  # the test really interrupted the run, within epochs too
    assert without_timings(read_csv(folder / "history.csv")) == expected


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_the_resumed_run_matches(tmp_path, signum):
    expected = reference_history(tmp_path, "sgd")
    folder = tmp_path / "signalled"
    process = start_train(*COMMON, "--save-dir", folder)
    assert wait_for(folder / "history.csv", process)  # the first epoch is done
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint saved" in lines[0] and f"--resume {folder}" in lines[0]
    assert load_checkpoint(str(folder / "checkpoint.pt"))["epoch"] < 4
    resumed = run_train("--resume", folder, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert without_timings(read_csv(folder / "history.csv")) == expected


@pytest.mark.parametrize("variant", ["multibatch", *(pytest.param(name, marks=pytest.mark.slow) for name in ("batch", "hvp"))])
def test_stochastic_lbfgs_resumed_mid_epoch_matches_the_uninterrupted_run(tmp_path, variant):
    """The optimizer's memory and the multibatch half-batch carried to the next step are in the mid-epoch
    checkpoint: the resumed run's history equals the uninterrupted one, number for number."""
    args = [*TINY, "-t", "bn", "--use-lbfgs", "true", "--lbfgs-variant", variant, "--lbfgs-batch-size", "16",
            "--epochs", "2"]
    straight = run_train(*args, "--save-dir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    folder = tmp_path / "signalled"
    process = start_train(*args, "--save-dir", folder)
    assert wait_for(folder / "summary.json", process)  # the first epoch's files are all written
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert load_checkpoint(str(folder / "checkpoint.pt"))["progress"] is not None  # stopped within epoch 2
    resumed = run_train("--resume", folder, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert without_timings(read_csv(folder / "history.csv")) == without_timings(
        read_csv(tmp_path / "straight" / "history.csv"))


def test_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # Python's default, or "ignore" under nohup
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signal == signal.SIGINT  # the first one only asks to stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are restored


def run_with_nan(monkeypatch, tmp_path, steps, *args):
    monkeypatch.setenv("BN_ONLY_INJECT_NAN", steps)
    result = run_train(*COMMON, "--save-dir", tmp_path / "run", *args)
    return result.returncode, result.stderr


def test_sgd_stops_on_a_non_finite_loss_and_keeps_the_last_good_checkpoint(monkeypatch, tmp_path):
    status, stderr = run_with_nan(monkeypatch, tmp_path, "2:1")
    assert status == 3 and "not finite" in stderr and len(stderr.strip().splitlines()) == 1
    assert len(read_csv(tmp_path / "run" / "history.csv")) == 1
    checkpoint = load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_lbfgs_rolls_back_a_non_finite_step_and_goes_on(monkeypatch, tmp_path):
    status, stderr = run_with_nan(monkeypatch, tmp_path, "1:2,3:1", "--optimizer", "lbfgs", "--epochs", "3")
    assert status == 0, stderr
    rows = read_csv(tmp_path / "run" / "history.csv")
    assert [int(r["rollbacks"]) for r in rows] == [1, 0, 1]
    assert all(float(r["train_loss"]) == float(r["train_loss"]) for r in rows)  # no NaN


def test_lbfgs_gives_up_after_five_consecutive_rollbacks(monkeypatch, tmp_path):
    status, stderr = run_with_nan(monkeypatch, tmp_path, "1:1,1:2,1:3,1:4,1:5", "--optimizer", "lbfgs",
                                  "--lbfgs-batch-size", "32")
    assert status == 3 and "5 consecutive" in stderr and len(stderr.strip().splitlines()) == 1


def test_lbfgs_rollback_restores_the_parameters_and_clears_the_memory():
    torch.manual_seed(0)
    cfg = parse_args(["-t", "bn", "--use-lbfgs", "true", "--lbfgs-variant", "torch", "--lbfgs-max-iter", "3"])[0]
    model = build_model("resnet20").train()
    optimizer = build_optimizer(cfg, freeze(model, "bn"))
    images, labels, cpu = torch.randn(16, 3, 32, 32), torch.arange(16) % 10, Compute(torch.device("cpu"))
    assert not lbfgs_step(model, optimizer, images, labels, 0.0, cpu)["rolled_back"]
    assert optimizer.state  # curvature pairs are stored
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert lbfgs_step(model, optimizer, images * float("nan"), labels, 0.0, cpu)["rolled_back"]
    assert not optimizer.state
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
