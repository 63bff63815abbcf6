"""bench.py: its device choice and its timing helper (no GPU needed)."""

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


def test_cuda_without_a_gpu_is_a_one_line_error(image_root, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--data-dir", image_root, "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "bench.py: error: --device cuda: CUDA is not available on this machine"]


def test_a_gpu_index_that_is_not_there_is_a_one_line_error(image_root, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert bench.main(["--data-dir", image_root, "--device", "cuda:1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "bench.py: error: --device cuda:1: this machine has 1 CUDA device(s)"]


def test_bench_device_accepts_cpu():
    assert bench.bench_device("cpu") == torch.device("cpu")


def test_best_rate_is_the_fastest_timing_and_waits_for_the_device(monkeypatch):
    """A fake clock that advances 1 s per call of fn (2 s in the first timing): the best rate is
    items x calls / 5 s, and the device is synchronised after the warm-up and after each timing."""
    now, calls, synced = [0.0], [], []
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(bench, "synchronize", lambda device: synced.append(device))

    def fn():
        calls.append(1)
        now[0] += 2.0 if 1 < len(calls) <= 6 else 1.0

    gpu = torch.device("cuda")
    assert bench.best_rate(fn, items=128, repeats=2, calls=5, device=gpu) == pytest.approx(128 * 5 / 5.0)
    assert len(calls) == 1 + 2 * 5  # one warm-up, then the timed calls
    assert synced == [gpu] * 3


def test_summarise_rounds_takes_medians_of_same_round_ratios():
    """Three rounds on a machine that slows down by 20 % and then speeds up: each round's ratio is the
    same, so the median ratio is exact even though no rate is; the columns come from the median-rate run."""
    def run(rate, tag):
        return {"images": 1000, "wall": 1000 / rate, "tag": tag}
    rounds = [[("classic", run(300 * f, f"c{i}")), ("fast", run(690 * f, f"f{i}"))]
              for i, f in enumerate((1.0, 0.8, 1.1))]
    classic, fast = bench.summarise_rounds(rounds)
    assert [classic["name"], fast["name"]] == ["classic", "fast"]
    assert classic["ratio"] == pytest.approx(1.0) and fast["ratio"] == pytest.approx(2.3)
    assert fast["ratios"] == pytest.approx([2.3, 2.3, 2.3])
    assert fast["rate"] == pytest.approx(690) and fast["run"]["tag"] == "f0"  # 552 < 690 < 759
    assert bench.ratio_text(fast) == "2.30x (2.30-2.30)"


def test_summarise_rounds_of_one_round_and_of_two():
    def run(rate):
        return {"images": 100, "wall": 100 / rate}
    single = bench.summarise_rounds([[("classic", run(200)), ("fast", run(500))]])
    assert single[1]["ratio"] == pytest.approx(2.5) and bench.ratio_text(single[1]) == "2.50x"
    two = bench.summarise_rounds([[("classic", run(200)), ("fast", run(500))],
                                  [("classic", run(250)), ("fast", run(500))]])
    assert two[1]["ratio"] == pytest.approx(2.25)  # median of 2.5 and 2.0
    assert two[1]["rate"] == pytest.approx(500) and two[0]["rate"] == pytest.approx(200)  # the lower middle
    assert bench.ratio_text(two[1]) == "2.25x (2.00-2.50)"


def test_repeats_below_one_is_a_one_line_error(image_root, capsys):
    assert bench.main(["--data-dir", image_root, "--repeats", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bench.py: error: --repeats must be at least 1, got 0"]
