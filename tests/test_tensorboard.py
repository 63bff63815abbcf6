"""--tensorboard: the event files hold history.csv's numbers, once per step, across resumes."""

import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnonly import validation
from bnonly.training import trainer as train
from conftest import TINY, read_csv

TRAIN_IMAGES = 256  # TINY's (--val-split holds out other images)


def read_events(folder):
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events, tag):
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_events_equal_history_and_a_resume_writes_no_step_twice(tmp_path):
    run = tmp_path / "run"
    assert train.main([*TINY, "-t", "bn", "--epochs", "2", "--val-split", "64", "--print-freq", "2",
                       "--tensorboard", "--save-dir", str(run)]) == 0
    shutil.copy(run / "checkpoint.pt", tmp_path / "after_epoch_2.pt")
    assert train.main(["--resume", str(run), "--epochs", "3"]) == 0
    # as if the run had been killed after writing epoch 3's events but before its checkpoint
    shutil.copy(tmp_path / "after_epoch_2.pt", run / "checkpoint.pt")
    assert train.main(["--resume", str(run), "--epochs", "3"]) == 0

    rows = read_csv(run / "history.csv")
    events = read_events(run)
    epoch_steps = [TRAIN_IMAGES * epoch for epoch in (1, 2, 3)]
    for column, tag in (("train_loss", "train/loss"), ("train_acc", "train/acc"), ("val_acc", "val/acc"),
                        ("test_loss", "test/loss"), ("lr", "lr"), ("passes", "compute/passes"),
                        ("images_forward_backward", "compute/images_forward_backward")):
        logged = scalars(events, tag)
        assert [step for step, _ in logged] == epoch_steps, tag
        assert [value for _, value in logged] == pytest.approx([float(row[column]) for row in rows], rel=1e-6), tag
    # the running loss after batches 2 and 4 of every epoch (64-image batches)
    running = [step for step, _ in scalars(events, "running/train_loss")]
    assert running == [step + offset for step in epoch_steps for offset in (-128, 0)]
    disabled = scalars(events, "bn/disabled_fraction")
    assert len(disabled) == 3 and all(0 <= value <= 1 for _, value in disabled)
    histograms = events.Tags()["histograms"]
    assert {"gamma/stem", "beta/stem", "gamma/layer3", "beta/layer3"} <= set(histograms), histograms
    assert [event.step for event in events.Histograms("gamma/layer1")] == epoch_steps
    assert "config/text_summary" in events.Tags()["tensors"]


def test_tensorboard_without_the_package_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    find_spec = validation.importlib.util.find_spec
    monkeypatch.setattr(validation.importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args))
    with pytest.raises(SystemExit) as stop:
        train.main([*TINY, "-t", "bn", "--epochs", "1", "--tensorboard", "--save-dir", str(tmp_path / "run")])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pip install tensorboard" in error[0]
    assert not (tmp_path / "run").exists()
