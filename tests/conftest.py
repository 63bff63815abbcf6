"""Shared helpers: run train.py as a user would (in this process, or in a new one), on tiny synthetic data."""

import contextlib
import csv
import io
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnonly.training import trainer as train  # noqa: E402  (after the path)

# A tiny, fast synthetic run: ResNet-20, 256 training and 64 test images. TINY_AUTO leaves --precision at
# auto, which depends on the machine's CPU (bf16 where it has AMX); TINY pins fp32, so tests
# that compare runs number for number pass on every machine.
TINY_AUTO = ["--dataset", "synthetic", "-a", "resnet20", "--train-size", "256", "--test-size", "64",
             "-b", "64", "--no-progress"]
TINY = [*TINY_AUTO, "--precision", "fp32"]
TIMING_COLUMNS = ("epoch_seconds", "eval_seconds", "images_per_second")


def run_main(main, program, args, cwd=REPO):
    """Call a script's main(argv) in this process, as `python PROGRAM ARGS` would run in `cwd`; returns a
    CompletedProcess with its exit status and text output (an unexpected exception: status 1 and the
    traceback on stderr, as a user would see it)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main([str(arg) for arg in args]) or 0
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
        except Exception:
            traceback.print_exc()
            status = 1
    return subprocess.CompletedProcess([program, *map(str, args)], status, stdout.getvalue(), stderr.getvalue())


def run_train(*args, cwd=REPO):
    """train.py in this process: saves the 2-4 s of a new interpreter and of importing torch. Tests of the
    process itself (signals, torchrun) use run_train_process."""
    return run_main(train.main, "train.py", args, cwd)


def run_train_process(*args, cwd=REPO, timeout=240):
    """Run train.py in a subprocess; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def without_timings(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def assert_one_line_error(result, *words):
    """Exit 2, exactly one line on stderr that mentions each word, and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One 2-epoch BN-only SGD run with a validation split, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("runs") / "bn_sgd"
    result = run_train(*TINY, "-t", "bn", "--epochs", "2", "--val-split", "64", "--save-dir", folder)
    assert result.returncode == 0, result.stderr
    return folder, result
