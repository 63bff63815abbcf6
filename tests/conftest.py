"""Shared helpers: run train.py as a user would, on tiny synthetic data."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# A tiny, fast synthetic run: ResNet-20, 256 training and 64 test images. TINY_AUTO leaves --precision at
# auto, which depends on the machine's CPU (bf16 where it has AMX); TINY pins fp32, so tests
# that compare runs number for number pass on every machine.
TINY_AUTO = ["--dataset", "synthetic", "-a", "resnet20", "--train-size", "256", "--test-size", "64",
             "-b", "64", "--no-progress"]
TINY = [*TINY_AUTO, "--precision", "fp32"]
TIMING_COLUMNS = ("epoch_seconds", "eval_seconds", "images_per_second")


def run_train(*args, cwd=REPO, timeout=240):
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
