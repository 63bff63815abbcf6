"""Learning-rate schedules with warmup, and --phases: parsing, the per-phase schedule, the history's
phase column and resuming across a phase switch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY, assert_one_line_error, read_csv, run_train, without_timings
from bnonly.config import ConfigError, parse_args
from bnonly.phases import phase_at, phase_settings
from bnonly.optim.factories import build_optimizer, build_scheduler, lr_factor


def lrs(args, epochs=None):
    """The learning rate of every epoch, as the run would use it."""
    cfg = parse_args(args)[0]
    optimizer = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    return stepped_lrs(optimizer, build_scheduler(cfg, optimizer, epochs), epochs or cfg.epochs)


def stepped_lrs(optimizer, scheduler, epochs):
    """The optimizer's learning rate in each of `epochs` epochs, stepping the scheduler after each."""
    values = []
    for _ in range(epochs):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def reference_lrs(scheduler_class, epochs, **options):
    """What a torch scheduler gives SGD at lr 0.1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return stepped_lrs(optimizer, scheduler_class(optimizer, **options), epochs)


def test_multistep_matches_torch_multisteplr():
    expected = reference_lrs(torch.optim.lr_scheduler.MultiStepLR, 8, milestones=[3, 6], gamma=0.1)
    assert lrs(["--epochs", "8", "--milestones", "3,6"]) == pytest.approx(expected, rel=1e-12)


def test_cosine_matches_torch_cosineannealinglr():
    expected = reference_lrs(torch.optim.lr_scheduler.CosineAnnealingLR, 7, T_max=7)
    assert lrs(["--epochs", "7", "--schedule", "cosine"]) == pytest.approx(expected, rel=1e-9)


def test_warmup_rises_linearly_then_follows_the_schedule():
    assert lrs(["--epochs", "6", "--schedule", "constant", "--warmup-epochs", "3"]) == pytest.approx(
        [0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    # milestones stay absolute epochs: warmup does not shift them
    assert lrs(["--epochs", "6", "--milestones", "4", "--warmup-epochs", "1"]) == pytest.approx(
        [0.05, 0.1, 0.1, 0.1, 0.01, 0.01])
    cosine = lrs(["--epochs", "6", "--schedule", "cosine", "--warmup-epochs", "2"])
    assert cosine[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])  # the cosine starts where warmup ends
    assert cosine[2:] == pytest.approx([0.1 * lr_factor(t, 4, "cosine", None) for t in range(4)])


def test_phases_parse_and_set_epochs():
    cfg = parse_args(["--phases", "bn:5,all:155"])[0]
    assert cfg.phases == [["bn", 5], ["all", 155]] and cfg.epochs == 160 and cfg.trainable == "bn"
    assert cfg.milestones is None  # each phase gets 50 % / 75 % of its own length
    assert [phase_at(cfg, e) for e in (1, 5, 6, 160)] == [(0, "bn", 5), (0, "bn", 5), (1, "all", 155),
                                                          (1, "all", 155)]
    plain = parse_args(["-t", "bn", "--epochs", "4"])[0]
    assert phase_at(plain, 3) == (0, "bn", 4) and phase_at(plain, 9) == (0, "bn", 4)
    # each phase's multistep schedule drops at 50 % and 75 % of that phase
    assert lrs(["--phases", "bn:2,all:4"], epochs=4) == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_a_phase_may_name_its_own_optimizer_and_lr():
    cfg = parse_args(["--phases", "bn:3:ngd:1.6,all:27:sgd", "--lr", "0.05"])[0]
    assert cfg.phases == [["bn", 3, "ngd", 1.6], ["all", 27, "sgd"]] and cfg.epochs == 30
    first, second = phase_settings(cfg, 0), phase_settings(cfg, 1)
    assert (first.optimizer, first.lr, second.optimizer, second.lr) == ("ngd", 1.6, "sgd", 0.05)
    assert cfg.optimizer == "sgd" and cfg.lr == 0.05  # the run's own settings are left as given
    # another optimizer than --optimizer, named without an lr, takes its own default; a phase naming none
    # trains with --optimizer and --lr
    cfg = parse_args(["--optimizer", "adam", "--phases", "bn:2:sgd,all:2"])[0]
    assert [(phase_settings(cfg, i).optimizer, phase_settings(cfg, i).lr) for i in (0, 1)] == [
        ("sgd", 0.1), ("adam", 1e-3)]
    assert phase_settings(cfg, 1) is cfg
    # each phase's schedule runs at that phase's lr
    settings = phase_settings(parse_args(["--phases", "bn:2:sgd:0.4,all:2:sgd:0.02"])[0], 0)  # multistep: x0.1 at 1
    optimizer = build_optimizer(settings, [torch.nn.Parameter(torch.zeros(1))])
    assert stepped_lrs(optimizer, build_scheduler(settings, optimizer, 2), 2) == pytest.approx([0.4, 0.04])


@pytest.mark.parametrize("args,words", [
    (["--phases", "bn:5,all"], ["--phases", "MODE:EPOCHS"]),
    (["--phases", "bn:0"], ["--phases", "EPOCHS >= 1"]),
    (["--phases", "random:3"], ["--phases", "MODE"]),
    (["--phases", "bn:2,all:2", "-t", "all"], ["--phases", "-t"]),
    (["--phases", "bn:2,all:2", "--epochs", "5"], ["--epochs 5", "4"]),
    (["--phases", "bn:2,all:2", "--milestones", "1"], ["--milestones", "--phases"]),
    (["--warmup-epochs", "3", "--epochs", "3"], ["--warmup-epochs", "3"]),
    (["--warmup-epochs", "2", "--phases", "bn:2,all:8"], ["--warmup-epochs", "shortest phase"]),
    (["--warmup-epochs", "-1"], ["--warmup-epochs"]),
    (["--phases", "bn:2:lbfgs,all:2"], ["--phases", "OPTIMIZER"]),
    (["--phases", "bn:2:sgd:0,all:2"], ["--phases", "LR above 0"]),
    (["--phases", "bn:2:sgd:fast,all:2"], ["--phases", "LR"]),
    (["--phases", "bn:2:sgd:0.1:9,all:2"], ["--phases", "MODE:EPOCHS[:OPTIMIZER[:LR]]"]),
    (["--phases", "bn:2:sgd,all:2", "--use-lbfgs", "true"], ["--optimizer lbfgs", "phases"]),
    (["--phases", "bn:2:sgd,all:2:rmsprop", "--betas", "0.9,0.99"], ["--betas", "rmsprop/sgd"]),
    (["--phases", "bn:2,all:2:ngd"], ["ngd", "-t bn"]),
])
def test_bad_phase_and_warmup_settings_are_one_line_errors(args, words):
    with pytest.raises((ConfigError, SystemExit)):
        parse_args(args)
    assert_one_line_error(run_train(*TINY, *args, "--save-dir", "/nonexistent/never"), *words)


def test_phases_switch_training_and_record_the_phase(tmp_path):
    folder = tmp_path / "phased"
    result = run_train(*TINY, "--phases", "bn:1,all:2", "--val-split", "64", "--save-dir", folder)
    assert result.returncode == 0, result.stderr
    rows = read_csv(folder / "history.csv")
    assert [r["phase"] for r in rows] == ["bn", "all", "all"]
    # the schedule restarts: phase 2 (2 epochs, milestone 1) begins at the full lr again
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.1, 0.01])
    assert "phase 2/2 from epoch 2: all" in result.stdout
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["trainable_params"] == summary["total_params"]  # the last phase trains everything
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["phase"] == 1


def test_ngd_pre_training_then_sgd_on_everything(tmp_path):
    """The warm start of issue 29: BN-only natural gradient, then every weight with SGD, in one run."""
    folder = tmp_path / "warm"
    result = run_train(*TINY, "--phases", "bn:1:ngd:0.4,all:2:sgd:0.05", "--val-split", "64", "--schedule", "constant",
                       "--save-dir", folder)
    assert result.returncode == 0, result.stderr
    rows = read_csv(folder / "history.csv")
    assert [(r["phase"], float(r["lr"])) for r in rows] == [("bn", 0.4), ("all", 0.05), ("all", 0.05)]
    assert "ngd, 256 training images" in result.stdout and "new sgd optimizer (lr 0.05)" in result.stdout
    saved = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert saved["phase"] == 1 and all("momentum_buffer" in s for s in saved["optimizer"]["state"].values())
    assert len(saved["optimizer"]["state"]) > 2 * 19  # SGD's, over every weight, not ngd's over BN's gamma/beta


def assert_resumed_run_matches_the_uninterrupted_one(tmp_path, args, stop_epoch):
    """A run stopped after epoch stop_epoch - 1 and resumed writes the history of the run never stopped."""
    straight = run_train(*args, "--save-dir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    env = {**os.environ, "BN_ONLY_INJECT_NAN": f"{stop_epoch}:1"}  # a NaN ends the run after epoch stop - 1
    stopped = subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, args), "--save-dir",
                              tmp_path / "split"], cwd=REPO, capture_output=True, text=True, env=env, timeout=240)
    assert stopped.returncode == 3, stopped.stderr
    assert len(read_csv(tmp_path / "split" / "history.csv")) == stop_epoch - 1
    resumed = run_train("--resume", tmp_path / "split", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert without_timings(read_csv(tmp_path / "split" / "history.csv")) == without_timings(
        read_csv(tmp_path / "straight" / "history.csv"))


@pytest.mark.parametrize("stop_epoch", [2, pytest.param(3, marks=pytest.mark.slow)])  # in phase 1, at the switch
def test_resume_across_an_optimizer_switch_matches_the_uninterrupted_run(tmp_path, stop_epoch):
    assert_resumed_run_matches_the_uninterrupted_one(
        tmp_path, [*TINY, "--phases", "bn:2:ngd:0.4,all:1:sgd:0.05", "--val-split", "64"], stop_epoch)


@pytest.mark.parametrize("stop_epoch", [2, pytest.param(3, marks=pytest.mark.slow)])  # at the switch, or after it
def test_resume_across_phases_matches_the_uninterrupted_run(tmp_path, stop_epoch):
    assert_resumed_run_matches_the_uninterrupted_one(
        tmp_path, [*TINY, "--phases", "bn:1,all:3", "--val-split", "64", "--optimizer", "adam"], stop_epoch)


def test_a_checkpoint_from_before_lambdalr_resumes_at_its_position():
    """Checkpoints once held a MultiStepLR state; the LambdaLR now built loads its position from it."""
    from bnonly.training.resuming import scheduler_state
    cfg = parse_args(["--epochs", "8", "--milestones", "3,6"])[0]
    old_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    old = torch.optim.lr_scheduler.MultiStepLR(old_optimizer, milestones=[3, 6], gamma=0.1)
    for _ in range(4):
        old_optimizer.step()
        old.step()
    optimizer = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    scheduler = build_scheduler(cfg, optimizer)
    optimizer.load_state_dict(old_optimizer.state_dict())  # in the order of resuming.restore
    scheduler.load_state_dict(scheduler_state(old.state_dict()))
    assert scheduler.last_epoch == 4 and optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    optimizer.step()
    for _ in range(2):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)  # epoch index 6 passed milestone 6
