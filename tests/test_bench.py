"""bench.py: its device choice and its in-process measurements, on the CPU with small inputs."""

import pytest
import torch

import bench


@pytest.fixture
def image_root(tmp_path):
    (tmp_path / "train").mkdir()
    return str(tmp_path)


def test_unknown_device_is_a_one_line_error(image_root, capsys):
    assert bench.main(["--data-dir", image_root, "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bench.py: error: --device must be cpu, cuda or cuda:N, got 'tpu'"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(image_root, capsys):
    assert bench.main(["--data-dir", image_root, "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bench_device_accepts_cpu():
    assert bench.bench_device("cpu") == torch.device("cpu")


def test_best_rate_counts_items_per_second():
    calls = []
    rate = bench.best_rate(lambda: calls.append(1), items=128, repeats=2, calls=5)
    assert len(calls) == 1 + 2 * 5  # one warm-up, then the timed calls
    assert rate > 0

