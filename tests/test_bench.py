"""bench.py: its device choice and its timing helper (no GPU needed)."""

import pytest
import torch

from bnonly.benchmarks import image_bench as bench
from bnonly.benchmarks import optimizer_bench
from bnonly.training import compute


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
    """Three rounds whose median classic and median fast runs come from different rounds: the ratio is
    the median of the same-round ratios (2.0, 2.5, 2.8 -> 2.5), not the ratio of the medians (600 / 250 =
    2.4); the rate and the other columns come from the median-rate run."""
    def run(rate, tag):
        return {"images": 1000, "wall": 1000 / rate, "tag": tag}
    rounds = [[("classic", run(classic, f"c{i}")), ("fast", run(fast, f"f{i}"))]
              for i, (classic, fast) in enumerate(((300, 600), (200, 500), (250, 700)))]
    classic, fast = bench.summarise_rounds(rounds)
    assert [classic["name"], fast["name"]] == ["classic", "fast"]
    assert classic["ratio"] == pytest.approx(1.0) and fast["ratio"] == pytest.approx(2.5)
    assert fast["ratios"] == pytest.approx([2.0, 2.5, 2.8])
    assert fast["rate"] == pytest.approx(600) and fast["run"]["tag"] == "f0"
    assert classic["rate"] == pytest.approx(250) and classic["run"]["tag"] == "c2"
    assert bench.ratio_text(fast) == "2.50x (2.00-2.80)"


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


@pytest.mark.parametrize("emulated", [True, False])
def test_main_interleaves_rounds_and_leaves_an_emulated_bf16_out(monkeypatch, capsys, image_root, emulated):
    """bench.main with every measurement faked: the whole runs go classic, default[, bf16] per round, and
    where the CPU emulates bf16 there is no bf16 row, run or matmul peak."""
    calls, peaks = [], []
    monkeypatch.setattr(bench, "resolve_precision", lambda precision, device: "fp32")
    monkeypatch.setattr(compute, "cpu_emulates", lambda precision: emulated and precision != "fp32")  # Compute.emulated
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, device: peaks.append(dtype) or 100.0)
    monkeypatch.setattr(bench, "step_flops", lambda trainable: 1e8)
    monkeypatch.setattr(bench, "make_step", lambda trainable, arithmetic: arithmetic.precision)
    monkeypatch.setattr(bench, "best_rate", lambda step, items, device=None: {"fp32": 300.0, "bf16": 600.0}[step])
    monkeypatch.setattr(bench, "data_path_ms", lambda arithmetic: 1.0)
    monkeypatch.setattr(bench, "eval_seconds", lambda arithmetic: 2.0)
    parts = {"import": 1.0, "cache_load": 0.5, "model_build": 0.01}
    monkeypatch.setattr(bench, "startup_parts", lambda data_dir, device: parts)
    run = {"images": 1000, "train_seconds": 3.0, "eval_seconds": 1.0, "startup_seconds": 1.0, "rss_mib": 900.0,
           "val_acc": 10.0}

    def classic(data_dir, trainable, train_size, device):
        calls.append(("classic", trainable))
        return {**run, "wall": 5.0}

    def project(data_dir, trainable, train_size, extra, device):
        calls.append((" ".join(extra) or "default", trainable))
        return {**run, "wall": 2.0 if not extra else 1.0}
    monkeypatch.setattr(bench, "classic_whole_run", classic)
    monkeypatch.setattr(bench, "project_whole_run", project)
    assert bench.main(["--data-dir", image_root, "--repeats", "2", "--lbfgs-train-size", "0"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| bn") or line.startswith("| all")]
    pipelines = ["classic", "default"] + ([] if emulated else ["--precision bf16"])
    assert calls == [(p, t) for t in ("bn", "all") for _ in range(2) for p in pipelines]
    assert peaks == ([torch.float32] if emulated else [torch.float32, torch.bfloat16])
    assert len(rows) == 2 * 2 * len(pipelines)  # per trained: the whole runs, then the bare steps of the same three
    assert "| bn | train.py (default: fp32, channels-last) | 500 | 2.50x (2.50-2.50) |" in out
    assert ("bf16: left out" in out) == emulated
    assert any("bf16" in row for row in rows) != emulated
    assert emulated or "| bn | train.py --precision bf16 | 1000 | 5.00x (5.00-5.00) |" in out
    assert "bn, round 2: classic recipe 200 img/s; train.py 500 img/s" in out


def test_optimizer_bench_times_sgd_and_the_chosen_rows(capsys):
    assert optimizer_bench.main(["-a", "resnet8", "-b", "4", "--rounds", "1", "--steps", "50", "--warmup", "0",
                                 "--only", "refresh 50"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    names = [cells[0].strip() for cells in rows[1:]]  # after the header row
    assert names == ["sgd", "ngd --ngd-power 0.5 --ngd-refresh 50 (the default)"]
    assert rows[1][2].strip() == "1.00" and float(rows[2][1]) > 0


def test_optimizer_bench_refuses_what_it_cannot_time_fairly(capsys):
    assert optimizer_bench.main(["--only", "lion"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "bench_optimizers.py: error: --only 'lion' matches no optimizer row"]
    assert optimizer_bench.main(["--only", "refresh 50", "--steps", "20"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "not a multiple of" in error[0] and "refresh 50" in error[0]
