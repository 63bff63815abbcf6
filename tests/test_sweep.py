"""sweep.py: grid files, run names and commands, and a tiny synthetic grid run, re-run, killed and finished."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bnonly import config
from bnonly.sweeps import sweep
from conftest import REPO, read_csv, run_main, without_timings

TINY_BASE = {"dataset": "synthetic", "arch": "resnet20", "train_size": 64, "test_size": 32, "batch_size": 32,
             "precision": "fp32", "epochs": 1}


def write_grid(path, base, axes):
    path.write_text(json.dumps({"base": base, "axes": axes}))
    return path


def run_sweep(*args, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "sweep.py"), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_grid_expands_to_the_product_named_by_the_axes_values(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base:\n  epochs: 3\n  wd: 0.0005\naxes:\n  arch: [resnet14, resnet32]\n  trainable: [bn, all]\n"
                    "  phases: ['bn:1,all:2']\n")
    base, axes = sweep.read_grid(str(grid))
    assert base == {"epochs": 3, "weight_decay": 0.0005}  # flag spellings and aliases become field names
    runs = sweep.expand(base, axes, "out")
    suffix = ",phases=bn-1-all-2"
    assert [run.name for run in runs] == [f"arch=resnet14,trainable=bn{suffix}", f"arch=resnet14,trainable=all{suffix}",
                                          f"arch=resnet32,trainable=bn{suffix}", f"arch=resnet32,trainable=all{suffix}"]
    assert runs[1].settings == {"epochs": 3, "weight_decay": 0.0005, "arch": "resnet14", "trainable": "all",
                                "phases": [["bn", 1], ["all", 2]]}
    assert runs[1].folder == os.path.join("out", f"arch=resnet14,trainable=all{suffix}")


def test_commands_give_train_py_the_same_settings():
    settings = {"arch": "resnet14", "trainable": "bn", "phases": None, "milestones": [3, 6], "betas": [0.8, 0.99],
                "optimizer": "adam", "download": False, "tensorboard": True, "no_progress": True, "half": False,
                "channels_last": False, "lbfgs_variant": "batch", "epochs": 9}
    args = sweep.flags(settings)
    assert "--no-download" in args and "--tensorboard" in args and "--half" not in args
    parsed = config.parse_args(args)[0]
    expected = config.resolve(config.Config(**settings), set(settings))
    assert parsed == expected
    phased = config.parse_args(sweep.flags({"phases": [["bn", 1], ["all", 2]]}))[0]
    assert phased.phases == [["bn", 1], ["all", 2]] and phased.epochs == 3


@pytest.mark.parametrize("text, words", [
    ("axes:\n  sead: [0, 1]\n", ["unknown setting", "sead"]),
    ("axes:\n  save_dir: [a]\n", ["set by the sweep"]),
    ("base:\n  seed: 0\naxes:\n  seed: [1]\n", ["both in base and in axes"]),
    ("axes:\n  arch: [resnet33]\n", ["resnet33"]),
    ("axes:\n  seed: 3\n", ["non-empty list"]),
    ("base:\n  seed: 0\n", ["must hold 'axes:'"]),
    ("axes: [1, 2\n", ["not valid JSON/YAML"]),
])
def test_bad_grid_files_are_one_line_errors(tmp_path, text, words):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    result = run_sweep(grid, "--out", tmp_path / "sweep", "--dry-run")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert not (tmp_path / "sweep").exists()


def test_sweep_runs_once_reports_failures_and_skips_what_is_done(tmp_path):
    """A tiny grid with one run that fails once started (its image folder has one class, which only
    loading the data finds): the other finishes, the failure is reported with its error line; a second
    call starts nothing; --retry-failed tries the failed run again."""
    from PIL import Image
    (tmp_path / "one" / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "one" / "train" / "cat" / "0.png")
    base = {key: value for key, value in TINY_BASE.items() if key != "dataset"}
    base.update(data_dir=str(tmp_path / "one"), cache_dir=str(tmp_path / "cache"))
    grid = write_grid(tmp_path / "grid.json", base, {"trainable": ["bn"], "dataset": ["synthetic", "imagefolder"]})
    out = tmp_path / "sweep"
    dry = run_main(sweep.main, "sweep.py", [grid, "--out", out, "--dry-run"])
    assert dry.returncode == 0 and dry.stdout.count("new ") == 2 and "--save-dir" in dry.stdout and not out.exists()

    first = run_sweep(grid, "--out", out, "--parallel", "2")
    assert first.returncode == 1, first.stderr
    lines = first.stdout.splitlines()
    assert any(line.endswith("2 runs, 1 done (1 in this call), 1 failed, 0 to run") for line in lines), first.stdout
    failed = [line for line in lines if "(exit 2)" in line]
    assert len(failed) == 1 and "has one class folder" in failed[0], failed
    done = out / "trainable=bn,dataset=synthetic"
    assert len(read_csv(done / "history.csv")) == 1
    assert json.loads((out / "trainable=bn,dataset=imagefolder" / "sweep_status.json").read_text())["exit_code"] == 2
    written = (done / "history.csv").stat().st_mtime_ns

    again = run_main(sweep.main, "sweep.py", [grid, "--out", out])
    assert again.returncode == 1 and "started" not in again.stdout
    assert "1 done (0 in this call), 1 failed" in again.stdout
    assert (done / "history.csv").stat().st_mtime_ns == written  # finished runs are left alone

    retried = run_main(sweep.main, "sweep.py", [grid, "--out", out, "--retry-failed"])
    assert retried.stdout.count("started") == 1 and "1 failed" in retried.stdout


@pytest.mark.slow  # the slurm requeue test is the fast representative of an interrupted run resumed
def test_a_killed_sweep_finishes_when_given_again(tmp_path):
    base = {**TINY_BASE, "epochs": 3, "checkpoint_minutes": 1e-9}  # a checkpoint after every step
    grid = write_grid(tmp_path / "grid.json", base, {"seed": [0, 1]})
    out = tmp_path / "sweep"
    process = subprocess.Popen([sys.executable, str(REPO / "sweep.py"), str(grid), "--out", str(out)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "seed=0" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not first.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stdout
    assert "2 runs, 0 done" in stdout and "2 to run" in stdout

    finished = run_sweep(grid, "--out", out)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "2 runs, 2 done (2 in this call), 0 failed, 0 to run" in finished.stdout
    log = (out / "seed=0" / "train.log").read_text()
    assert "--resume" in log  # continued, not restarted
    for seed in (0, 1):
        assert [row["epoch"] for row in read_csv(out / f"seed={seed}" / "history.csv")] == ["1", "2", "3"]


def test_set_overrides_the_grid_and_a_folder_of_other_settings_is_left_alone(tmp_path):
    grid = write_grid(tmp_path / "grid.json", {"epochs": 2, "lr": 0.1}, {"seed": [0, 1], "arch": ["resnet14"]})
    base, axes = sweep.read_grid(str(grid), ["lr=0.05", "seed=1", "data_dir=/elsewhere"])
    assert base == {"epochs": 2, "lr": 0.05, "data_dir": "/elsewhere"} and axes == {"seed": [1], "arch": ["resnet14"]}
    run, = sweep.expand(base, axes, str(tmp_path))
    assert run.name == "seed=1,arch=resnet14" and sweep.state_of(run) == "new"
    os.makedirs(run.folder)
    (tmp_path / run.name / "config.json").write_text(json.dumps({"epochs": 2, "lr": 0.1, "seed": 1,
                                                                 "arch": "resnet14", "data_dir": "/here"}))
    assert sweep.state_of(run) == "conflict"  # lr differs; data_dir may (the data can move)
    run.settings["lr"] = 0.1
    assert sweep.state_of(run) == "new"
    with pytest.raises(sweep.SweepError, match="NAME=VALUE"):
        sweep.read_grid(str(grid), ["lr"])


def test_slurm_launcher_requeues_a_preempted_run_which_resumes(tmp_path, monkeypatch, capsys):
    """Through submitit's local executor: a task preempted mid-run (submitit's preemption signal) writes its
    checkpoint, is requeued and resumes; the sweep waits, records it done, and its history equals an
    uninterrupted run's."""
    import threading

    base = {**TINY_BASE, "epochs": 3, "checkpoint_minutes": 1e-9}
    grid = write_grid(tmp_path / "grid.json", base, {"seed": [0]})
    out = tmp_path / "sweep"
    status = []
    sweeping = threading.Thread(target=lambda: status.append(sweep.main(
        [str(grid), "--out", str(out), "--launcher", "slurm", "--cluster", "local", "--gpus-per-run", "0"])))
    sweeping.start()
    checkpoint = out / "seed=0" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert sweeping.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    preempt(out / "seed=0")
    sweeping.join(timeout=300)
    assert status == [0], capsys.readouterr().out
    assert "1 runs, 1 done (1 in this call)" in capsys.readouterr().out
    log = (out / "seed=0" / "train.log").read_text()
    assert log.count("submitit job") == 2 and "--resume" in log.split("submitit job")[2]  # requeued, resumed
    straight = tmp_path / "straight"
    assert run_train_in_process(base, straight) == 0
    assert without_timings(read_csv(out / "seed=0" / "history.csv")) == without_timings(read_csv(straight / "history.csv"))


def preempt(folder):
    """Send the task running train.py for `folder` submitit's preemption signal, as Slurm does (Linux /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        if b"--save-dir" in cmdline and str(folder).encode() in cmdline:
            task = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            os.kill(task, signal.SIGUSR2)
            return
    raise AssertionError(f"no train.py process for {folder}")


def run_train_in_process(settings, folder):
    from conftest import run_train
    return run_train(*sweep.flags(settings), "--no-progress", "--save-dir", folder).returncode


def test_every_grid_in_experiments_reads_and_the_imagenet_grid_has_the_papers_depths():
    grids = sorted((REPO / "experiments").glob("*.yaml"))
    assert grids
    for grid in grids:
        base, axes = sweep.read_grid(str(grid))
        assert sweep.expand(base, axes, "out"), grid.name
    base, axes = sweep.read_grid(str(REPO / "experiments" / "paper_imagenet.yaml"))
    assert base["dataset"] == "imagenet" and axes["trainable"] == ["bn", "all"]
    assert [arch.split("resnet")[1] for arch in axes["arch"]] == ["18", "34", "50", "101", "152", "200"]


@pytest.mark.parametrize("base, axes, words", [
    ({"dataset": "synthetic", "workers": 0, "epochs": 1}, {"seed": [0, 1]}, ["run seed=0", "--workers", "at least 1"]),
    ({"dataset": "synthetic", "epochs": 2}, {"warmup_epochs": [1, 2]}, ["run warmup_epochs=2", "--warmup-epochs"]),
    ({"dataset": "imagefolder", "data_dir": "/nonexistent", "epochs": 1}, {"seed": [0]},
     ["run seed=0", "/nonexistent/train", "imagefolder"]),
    ({"dataset": "synthetic", "epochs": 1, "n_mels": 20}, {"seed": [0]}, ["run seed=0", "--n-mels", "audio"]),
])
def test_a_grid_with_a_bad_run_starts_nothing_and_writes_nothing(tmp_path, base, axes, words):
    grid = tmp_path / "grid.yaml"
    write_grid(grid, base, axes)
    for extra in ([], ["--dry-run"], ["--launcher", "slurm"]):
        result = run_sweep(grid, "--out", tmp_path / "out", *extra)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sweep.py: error: "), result.stderr
        assert all(word in lines[0] for word in words), lines[0]
        assert not (tmp_path / "out").exists()
