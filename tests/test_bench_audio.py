"""bench_audio.py: its errors, a real whole run read back, and the report (measurements faked)."""

import pytest
import torch

from bnonly.benchmarks import audio_bench as bench_audio
from test_audio import make_speech_folder


def test_a_folder_without_train_is_a_one_line_error(tmp_path, capsys):
    assert bench_audio.main(["--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench_audio.py: error: no train/ folder in")
    root = make_speech_folder(tmp_path)
    assert bench_audio.main(["--data-dir", str(root), "--device", "tpu"]) == 2
    assert capsys.readouterr().err.startswith("bench_audio.py: error: --device must be")
    assert bench_audio.main(["--data-dir", str(root), "--cache-dir", str(tmp_path / "cache")]) == 2  # no george
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench_audio.py: error:") and "george" in err[0]


def test_whole_run_reads_every_epoch_and_projects_the_default_length(tmp_path):
    root = make_speech_folder(tmp_path / "speech")
    extra = ["-a", "resnet1d8", "--width", "1", "--precision", "fp32", "--cache-dir", str(tmp_path / "cache")]
    r = bench_audio.whole_run(str(root), "bn", ["--val-groups", "bob", *extra], torch.device("cpu"))
    assert r["clips"] == 8  # ann and cy, 2 digits x 2 recordings
    assert len(r["epochs"]) == bench_audio.EPOCHS and all(e > 0 for e in r["epochs"])
    assert 0 < r["startup"] < r["wall"]
    assert r["later"] == pytest.approx(sorted(r["epochs"][1:])[1])  # the median of epochs 2-4
    assert r["default_run"] == pytest.approx(r["startup"] + r["epochs"][0] + 29 * r["later"])
    assert 0 <= float(r["val_acc"]) <= 100 and r["rss_mib"] > 0


def test_the_report_has_a_row_per_run_and_per_bare_step(tmp_path, monkeypatch, capsys):
    root = make_speech_folder(tmp_path)
    runs = []
    monkeypatch.setattr(bench_audio, "resolve_precision", lambda precision, device: "fp32")
    monkeypatch.setattr(bench_audio, "best_rate", lambda step, items, device=None: 500.0)
    monkeypatch.setattr(bench_audio, "make_step", lambda trainable, compute: None)
    monkeypatch.setattr(bench_audio, "load_dataset", lambda cfg: None)
    monkeypatch.setattr(bench_audio, "feature_path_ms", lambda device, augment: 4.0 if augment else 2.0)

    def whole_run(data_dir, trainable, extra, device):
        runs.append((trainable, extra))
        return {"clips": 2000, "wall": 20.0, "rss_mib": 800.0, "startup": 6.0, "epochs": [8.0, 6.0, 7.0, 5.0],
                "later": 6.0, "eval": 0.5,
                "loop_rate": 364.0, "default_run": 188.0, "val_acc": "80.0"}
    monkeypatch.setattr(bench_audio, "whole_run", whole_run)
    monkeypatch.setattr(bench_audio.Compute, "emulated", lambda self: self.precision == "bf16")
    assert bench_audio.main(["--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert runs == [("bn", ["--val-groups", "george", "--precision", "fp32"]),
                    ("all", ["--val-groups", "george", "--precision", "fp32"])]
    assert "4.00 ms with augmentation (3.1 % of the bare BN-only step, 128.0 ms)" in out
    assert "| bn | train.py, fp32 (default) | 400 | 364 | 6.0 | 8.0 / 6.0 | 0.50 | 20 | 800 | 188 | 80.0 |" in out
    assert out.count("bare step, synthetic features (fp32)") == 2 and "bf16 left out" in out
