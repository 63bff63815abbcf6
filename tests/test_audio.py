"""Audio: WAV reading, the audiofolder cache, log-mel features, augmentation, the speaker split, the 1-D
ResNets, and synthetic-audio runs (tests make their own recordings; they never read ../shared)."""

import json
import math
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch

from bnonly.data import audio
from bnonly.data import datasets as data
from bnonly.config import parse_args
from conftest import REPO, TINY_AUTO, assert_one_line_error, read_csv, run_train, without_timings
from bnonly.data.datasets import load_dataset
from bnonly.models.resnet import build_model, count_parameters, freeze

AUDIO = ["--dataset", "synthetic-audio", "--train-size", "192", "--test-size", "64", "-a", "resnet1d8", "--width", "1",
         "-b", "32", "--precision", "fp32", "--no-progress"]


def write_wav(path, samples, rate=8000, channels=1, width=2):
    """samples: float array in [-1, 1] of shape (frames,) or (frames, channels)."""
    frames = np.asarray(samples, dtype=np.float64).reshape(-1, channels)
    if width == 2:
        raw = np.round(frames * 32767).astype("<i2").tobytes()
    else:
        raw = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(raw)
    return path


def tone(hz, seconds, rate, level=0.5):
    t = np.arange(round(seconds * rate)) / rate
    return level * np.sin(2 * math.pi * hz * t)


def make_speech_folder(root, speakers=("ann", "bob", "cy"), per_speaker=2, test=False):
    """DIGIT_SPEAKER_INDEX.wav files in train/<digit>/ (FSDD's naming), a tone per digit."""
    for split in ("train", "test") if test else ("train",):
        for digit in range(2):
            for speaker in speakers:
                for index in range(per_speaker):
                    write_wav(root / split / str(digit) / f"{digit}_{speaker}_{index}.wav",
                              tone(300 + 500 * digit, 0.3 + 0.1 * index, 8000))
    return root


def audio_cfg(root, cache, *extra):
    return parse_args(["--dataset", "audiofolder", "--data-dir", str(root), "--cache-dir", str(cache), "-j", "1",
                       *extra])[0]


def test_wav_reading_mixes_channels_and_resamples_without_aliasing(tmp_path):
    mono = write_wav(tmp_path / "mono.wav", tone(440, 0.5, 16000), rate=16000)
    samples, rate = audio.read_wav(str(mono))
    assert rate == 16000 and len(samples) == 8000 and abs(samples.max() - 0.5) < 1e-3
    left, right = tone(440, 0.25, 8000), tone(440, 0.25, 8000, level=0.1)
    stereo = write_wav(tmp_path / "stereo.wav", np.stack([left, right], 1), channels=2)
    samples, rate = audio.read_wav(str(stereo))
    assert rate == 8000 and np.allclose(samples, (left + right) / 2, atol=1e-4)
    eight_bit = write_wav(tmp_path / "u8.wav", tone(440, 0.1, 8000), width=1)
    assert np.allclose(audio.read_wav(str(eight_bit))[0], tone(440, 0.1, 8000), atol=0.01)
    # 16 kHz -> 8 kHz: a 1 kHz tone stays, a 6 kHz one (above the new Nyquist frequency) is removed, not folded
    down = audio.resample(tone(1000, 1, 16000) + tone(6000, 1, 16000), 16000, 8000)
    spectrum = np.abs(np.fft.rfft(down))
    assert len(down) == 8000 and spectrum[1000] > 1000 * spectrum[2000]  # 6 kHz would alias to 2 kHz


def test_clips_are_padded_and_cropped_around_their_centre():
    assert audio.fit_clip(np.ones(4, np.float32), 8).tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert audio.fit_clip(np.arange(10, dtype=np.float32), 4).tolist() == [3, 4, 5, 6]


def test_a_recorders_dc_offset_is_removed_before_the_clip_is_padded(tmp_path):
    offset = write_wav(tmp_path / "offset.wav", tone(300, 0.5, 8000, level=0.3) + 0.2)
    clip = audio.decode_clip(str(offset), 8000, 8000).astype(np.float64) / 32767
    assert abs(clip[2000:6000].mean()) < 1e-3 and abs(clip[2000:6000].max() - 0.3) < 1e-2  # the tone, centred
    assert not clip[:1999].any() and not clip[6001:].any()  # the padding is silence, not an offset


@pytest.mark.parametrize("content, words", [(b"RIFF\x24\x00\x00\x00WAVEfmt ", ["broken.wav"]),
                                            (b"not audio at all", ["broken.wav", "WAV"])])
def test_a_truncated_or_foreign_file_is_a_one_line_error_naming_it(tmp_path, content, words):
    root = make_speech_folder(tmp_path / "speech")
    (root / "train" / "1" / "broken.wav").write_bytes(content)
    result = run_train("--dataset", "audiofolder", "--data-dir", root, "--cache-dir", tmp_path / "cache", "-j", "1",
                       "--epochs", "1", "--save-dir", tmp_path / "run")
    assert_one_line_error(result, *words)
    assert not (tmp_path / "run").exists()


def test_a_wav_cut_short_is_an_error_naming_it(tmp_path):
    path = write_wav(tmp_path / "cut.wav", tone(440, 0.5, 8000))
    path.write_bytes(path.read_bytes()[:-100])  # the header still promises every frame
    with pytest.raises(ValueError, match="cut.wav.*truncated"):
        audio.read_wav(str(path))


def test_empty_class_folders_and_folders_without_wavs_are_one_line_errors(tmp_path):
    root = make_speech_folder(tmp_path / "speech")
    (root / "train" / "2").mkdir()
    result = run_train("--dataset", "audiofolder", "--data-dir", root, "--cache-dir", tmp_path / "cache", "--epochs",
                       "1", "--save-dir", tmp_path / "run")
    assert_one_line_error(result, "no WAV files", "2")
    empty = tmp_path / "empty" / "train"
    empty.mkdir(parents=True)
    assert_one_line_error(run_train("--dataset", "audiofolder", "--data-dir", empty.parent, "--save-dir",
                                    tmp_path / "run2"), "no class folders")


def test_audiofolder_is_cached_and_a_changed_folder_decoded_again(tmp_path, monkeypatch):
    root = make_speech_folder(tmp_path / "speech", test=True)
    cfg = audio_cfg(root, tmp_path / "cache", "--clip-seconds", "0.5")
    ds = load_dataset(cfg)
    waves, labels = ds.splits["train"]
    assert waves.shape == (12, 4000) and waves.dtype == torch.int16 and labels.tolist() == [0] * 6 + [1] * 6
    assert ds.splits["test"][0].shape == (12, 4000) and ds.classes == ["0", "1"] and len(ds.mean) == 40
    monkeypatch.setattr(audio, "_decode_chunk", lambda *a: pytest.fail("decoded again although the cache is valid"))
    again = load_dataset(cfg)
    assert torch.equal(again.splits["train"][0], waves)
    monkeypatch.undo()
    write_wav(root / "train" / "1" / "1_dan_0.wav", tone(800, 0.2, 8000))
    assert len(load_dataset(cfg).splits["train"][1]) == 13
    other_rate = load_dataset(audio_cfg(root, tmp_path / "cache", "--clip-seconds", "0.5", "--sample-rate", "16000"))
    assert other_rate.splits["train"][0].shape == (13, 8000)  # the settings are part of the key
    assert len(list((tmp_path / "cache").glob("audiofolder-*.npz"))) == 3


def test_the_speaker_split_puts_no_speaker_on_both_sides(tmp_path):
    root = make_speech_folder(tmp_path / "speech", per_speaker=3)
    ds = load_dataset(audio_cfg(root, tmp_path / "cache", "--val-groups", "bob"))
    assert len(ds.splits["val"][1]) == 6 and len(ds.splits["train"][1]) == 12
    names = [f"{d}_{s}_{i}.wav" for d in range(2) for s in ("ann", "bob") for i in range(2)]
    train, val = audio.group_split(names, r"^[^_]*_([^_]*)_", ["bob"])
    assert {names[i].split("_")[1] for i in val} == {"bob"} and {names[i].split("_")[1] for i in train} == {"ann"}
    by_field = audio.group_split(names, r"_(\d+)\.wav$", ["1"])[1]  # any grouping: here the index field
    assert all(names[i].endswith("_1.wav") for i in by_field)
    for regex, held, words in ((r"^x(\d)", ["ann"], ["--group-regex", "does not match"]),
                               (r"^[^_]*_([^_]*)_", ["zed"], ["'zed'", "ann"]),
                               (r"^[^_]*_([^_]*)_", ["ann", "bob"], ["every training file"])):
        with pytest.raises(data.DataError) as error:
            audio.group_split(names, regex, held)
        assert all(word in str(error.value) for word in words), str(error.value)


def test_log_mel_shapes_levels_and_the_per_bin_normalisation():
    features = audio.Features(sample_rate=8000, n_mels=40, frame_ms=25, hop_ms=10, top_db=80)
    assert (features.win_length, features.hop_length, features.n_fft, features.frames(8000)) == (200, 80, 256, 101)
    log_mel = audio.LogMel(features, "cpu")
    quiet, loud = torch.tensor(tone(1000, 1, 8000, 0.01)).float(), torch.tensor(tone(1000, 1, 8000, 0.5)).float()
    x = log_mel(torch.stack([quiet, loud]))
    assert x.shape == (2, 40, 101)
    torch.testing.assert_close(x[0], x[1], atol=0.1, rtol=0)  # dB below each clip's maximum: the level drops out
    assert float(x.max()) == pytest.approx(0, abs=1e-4) and float(x.min()) >= -80 - 1e-4
    centres = np.linspace(0, audio.hz_to_mel(4000), 42)[1:-1]  # the bands' centres on the mel scale
    assert int(x[1, :, 50].argmax()) == int(np.argmin(np.abs(centres - audio.hz_to_mel(1000))))  # 1 kHz's band
    noise = np.random.default_rng(0).normal(0, 0.01, (6, 8000))
    waves = audio.to_int16(np.stack([tone(300 * (k + 1), 1, 8000) for k in range(6)]) + noise)
    mean, std = audio.feature_stats(torch.from_numpy(waves), features)
    inputs = audio.AudioInputs(features, audio.Augmentation(0, 0, 0), mean, std, "cpu")
    normalised = inputs.prepare(torch.from_numpy(waves))
    torch.testing.assert_close(normalised.mean((0, 2)), torch.zeros(40), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalised.std((0, 2), unbiased=False), torch.ones(40), atol=1e-3, rtol=0)


def test_too_many_mel_bands_and_bad_audio_flags_are_one_line_errors(tmp_path):
    for args, words in ((["--n-mels", "120", "--frame-ms", "8"], ["--n-mels 120", "fewer bands"]),
                        (["--sample-rate", "0"], ["--sample-rate"]), (["--clip-seconds", "-1"], ["--clip-seconds"]),
                        (["--hop-ms", "nan"], ["--hop-ms"]), (["--freq-mask", "-2"], ["--freq-mask"]),
                        (["--freq-warp", "0.5"], ["--freq-warp"]),
                        (["--frame-ms", "2000"], ["--frame-ms", "longer than the clip"]),
                        (["-a", "resnet32"], ["resnet32", "resnet1d"])):
        result = run_train(*AUDIO, "--epochs", "1", *args, "--save-dir", tmp_path / "run")
        assert_one_line_error(result, *words)
    assert_one_line_error(run_train(*TINY_AUTO, "-a", "resnet1d20", "--save-dir", tmp_path / "run"), "resnet1d20")
    assert_one_line_error(run_train(*TINY_AUTO, "--n-mels", "20", "--save-dir", tmp_path / "run"), "--n-mels", "audio")
    assert not (tmp_path / "run").exists()


def test_augmentation_is_a_function_of_the_generator_and_masks_hold_the_bin_mean():
    features = audio.Features()
    inputs = audio.AudioInputs(features, audio.Augmentation(100, 10, 8, 0.1), [-30.0] * 40, [10.0] * 40, "cpu")
    waves = torch.from_numpy(audio.to_int16(np.stack([tone(400 + 100 * k, 1, 8000) for k in range(8)])))
    first = inputs.augment(waves, torch.Generator().manual_seed(5))
    assert torch.equal(first, inputs.augment(waves, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, inputs.augment(waves, torch.Generator().manual_seed(6)))
    assert first.shape == (8, 40, 101) and bool((first == -30.0).any())  # masked cells: the bin's mean
    assert bool((inputs.prepare(first) == 0).any())
    shifted = audio.time_shift(torch.arange(1, 11)[None].repeat(50, 1), 3, torch.Generator().manual_seed(0))
    offsets = {int(row.nonzero()[0]) - int(row[row.nonzero()[0]]) + 1 for row in shifted}  # where value 1 went
    assert offsets <= set(range(-3, 4)) and len(offsets) > 3
    assert all((row[row > 0].diff() == 1).all() for row in shifted)  # shifted, not scrambled; silence fills in
    cfg = parse_args(["--dataset", "synthetic-audio", "--freq-warp", "0.1", "--time-mask", "3"])[0]
    assert data.input_pipeline(cfg, {"mean": [0.0] * 40, "std": [1.0] * 40}, "cpu").augmentation == \
        audio.Augmentation(100, 3, 8, 0.1)  # the flags reach the pipeline


def test_frequency_warp_moves_a_tone_by_its_clips_factor_and_keeps_both_ends():
    power = torch.zeros(200, 129, 3)
    power[:, 50] = 1.0
    warped = audio.warp_frequencies(power, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(warped, audio.warp_frequencies(power, 0.1, torch.Generator().manual_seed(0)))
    factor = torch.rand(200, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.9  # the draw it made
    centre = (warped[:, :, 0] * torch.arange(129)).sum(1) / warped[:, :, 0].sum(1)
    torch.testing.assert_close(centre, 50 * factor, atol=0.51, rtol=0)  # below the knee: bin 50 -> 50 a
    assert 45 <= float(centre.min()) < 46 and 54 < float(centre.max()) <= 55  # the draws span 0.9-1.1
    ramp = torch.linspace(1, 2, 129)[None, :, None].repeat(4, 1, 2)
    moved = audio.warp_frequencies(ramp, 0.1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(moved[:, [0, -1]], ramp[:, [0, -1]])  # 0 Hz and Nyquist stay where they are
    assert bool((moved.diff(dim=1) >= 0).all())  # a monotone map of the axis: a ramp stays a ramp
    assert audio.warp_frequencies(power, 0, None) is power
    high = torch.zeros(1, 129, 1)
    high[0, 110] = 1.0  # above the knee (at most 0.8 x 128 = 102.4): bin 110 maps linearly towards 128
    factors = []
    for seed in range(6):
        a = 1 + 0.1 * (2 * float(torch.rand(1, generator=torch.Generator().manual_seed(seed))) - 1)  # its draw
        moved = audio.warp_frequencies(high, 0.1, torch.Generator().manual_seed(seed))[0, :, 0]
        knee = 0.8 * 128 * min(a, 1)  # where the knee is on the output axis; it reads source bin knee / a
        expected = knee + (110 - knee / a) * (128 - knee) / (128 - knee / a)  # the output bin that reads 110
        assert float((moved * torch.arange(129)).sum() / moved.sum()) == pytest.approx(expected, abs=0.5), a
        factors.append(a)
    assert min(factors) < 1 < max(factors)  # both sides of the knee's rule


def test_1d_resnets_count_like_their_2d_models_and_freeze_the_same_way():
    model = build_model("resnet1d20", num_classes=10, width=1, in_channels=40)
    assert count_parameters(model, "bn") == count_parameters(build_model("resnet20"), "bn") == 1376
    assert count_parameters(model, "bn+fc") == 1376 + 64 * 10 + 10
    trained = freeze(model, "random", seed=0)
    assert sum(p.numel() for p in trained) == 1376  # 2 conv entries per output channel, as many as BN has
    logits = model(torch.randn(3, 40, 101))
    assert logits.shape == (3, 10)
    wide = build_model("resnet1d32", width=2, in_channels=40)
    assert count_parameters(wide, "bn") == 2 * 2 * (16 + 2 * 5 * (16 + 32 + 64)) == 4544


def test_synthetic_audio_learns_and_the_defaults_follow_the_data(tmp_path):
    cfg = parse_args(["--dataset", "synthetic-audio"])[0]
    assert (cfg.arch, cfg.width, cfg.epochs, cfg.batch_size) == ("resnet1d32", 2, 30, 64)
    result = run_train(*AUDIO, "-t", "all", "--epochs", "4", "--schedule", "constant", "--lr", "0.05", "--val-groups",
                       "s1", "--save-dir", tmp_path / "run")  # 144 clips of 3 speakers; s1's 48 held out
    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "run" / "history.csv")
    assert float(rows[-1]["val_acc"]) >= 50 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # 10 classes
    assert "training clips" in result.stdout


def test_adapted_bn_holds_the_splits_statistics_inside_and_restores_the_models_after():
    from bnonly.training.compute import Compute
    from bnonly.training.engine import adapted_bn

    class Identity:
        def prepare(self, batch):
            return batch
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3)).train()
    model(torch.randn(64, 3, 10))  # running statistics of some training data
    before = [b.clone() for b in model[0].buffers()]
    split = torch.randn(200, 3, 10, generator=torch.Generator().manual_seed(0)) * 2 + 5
    with adapted_bn(model.eval(), split, Identity(), Compute(torch.device("cpu"))):
        torch.testing.assert_close(model[0].running_mean, split.mean((0, 2)))
        torch.testing.assert_close(model[0].running_var, split.transpose(0, 1).reshape(3, -1).var(1))
        assert not model.training
    assert all(torch.equal(b, saved) for b, saved in zip(model[0].buffers(), before))
    halves = torch.cat([torch.randn(300, 3, 10), torch.randn(300, 3, 10) + 10])  # sorted, as classes often are
    with adapted_bn(model, halves, Identity(), Compute(torch.device("cpu")), batch_size=256):
        # three batches of a shuffled order: each holds both halves, so the variance between them (25) counts
        torch.testing.assert_close(model[0].running_var, halves.transpose(0, 1).reshape(3, -1).var(1), rtol=0.05,
                                   atol=0)


def test_bn_adapt_adds_adapted_evaluations_and_changes_nothing_else(tmp_path):
    args = [*AUDIO, "-t", "bn", "--epochs", "2", "--val-groups", "s1"]
    plain = run_train(*args, "--save-dir", tmp_path / "plain")
    adapted = run_train(*args, "--bn-adapt", "true", "--save-dir", tmp_path / "adapted")
    assert plain.returncode == 0 and adapted.returncode == 0, adapted.stderr
    rows, adapted_rows = read_csv(tmp_path / "plain" / "history.csv"), read_csv(tmp_path / "adapted" / "history.csv")
    extra = {f"{split}_adapted_{metric}" for split in ("val", "test") for metric in ("loss", "acc")}
    assert set(adapted_rows[0]) - set(rows[0]) == extra
    assert without_timings([{k: v for k, v in row.items() if k not in extra} for row in adapted_rows]) == \
        without_timings(rows)  # training, and the evaluations with the training statistics, are unchanged
    assert all(0 <= float(row["val_adapted_acc"]) <= 100 for row in adapted_rows)
    first, second = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]
                     for name in ("plain", "adapted"))
    assert all(torch.equal(first[k], second[k]) for k in first)  # the training statistics were put back
    summary = json.loads((tmp_path / "adapted" / "summary.json").read_text())
    assert summary["final"]["val_adapted_acc"] == float(adapted_rows[-1]["val_adapted_acc"])
    assert "best_val_adapted_acc" in summary and "(adapted" in adapted.stdout
    evaluated = run_train("--resume", tmp_path / "adapted", "-e", "--no-progress")
    assert evaluated.returncode == 0, evaluated.stderr
    printed = dict(zip(*[iter(evaluated.stdout.split()[-4:])] * 2))  # test_adapted_loss X test_adapted_acc Y
    assert float(printed["test_adapted_acc"]) == pytest.approx(float(adapted_rows[-1]["test_adapted_acc"]), abs=0.01)
    plain_evaluated = run_train("--resume", tmp_path / "plain", "-e", "--bn-adapt", "true", "--no-progress")
    assert plain_evaluated.returncode == 0, plain_evaluated.stderr  # -e may add the adapted evaluation
    assert plain_evaluated.stdout.split()[-4:] == evaluated.stdout.split()[-4:]
    root = make_speech_folder(tmp_path / "speech")  # no test/ folder, and no --val-groups: nothing to adapt to
    nowhere = run_train("--dataset", "audiofolder", "--data-dir", root, "--cache-dir", tmp_path / "cache", "-a",
                        "resnet1d8", "--bn-adapt", "true", "--save-dir", tmp_path / "nowhere")
    assert_one_line_error(nowhere, "--bn-adapt", "--val-groups")
    assert not (tmp_path / "nowhere").exists()
    script = subprocess.run([sys.executable, "scripts/adapt_checkpoints.py", str(tmp_path / "plain")],
                            capture_output=True, text=True, cwd=REPO)  # the plain run's checkpoint, adapted now
    assert script.returncode == 0, script.stderr
    plain_acc, adapted_acc = (float(cell) for cell in script.stdout.splitlines()[-1].strip("| ").split(" | ")[1:])
    assert plain_acc == pytest.approx(float(rows[-1]["val_acc"]), abs=0.01)
    assert adapted_acc == pytest.approx(float(adapted_rows[-1]["val_adapted_acc"]), abs=0.01)
    no_folder = subprocess.run([sys.executable, "scripts/adapt_checkpoints.py"], capture_output=True, text=True, cwd=REPO)
    assert_one_line_error(no_folder, "RUN_DIR")


@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("lbfgs", marks=pytest.mark.slow)])
def test_audio_runs_resume_to_the_bit(tmp_path, optimizer):
    common = [*AUDIO, "-t", "bn", "--optimizer", optimizer, "--lbfgs-batch-size", "64"]
    straight = run_train(*common, "--epochs", "2", "--save-dir", tmp_path / "straight")
    first = run_train(*common, "--epochs", "1", "--milestones", "1", "--save-dir", tmp_path / "split")
    resumed = run_train("--resume", tmp_path / "split", "--epochs", "2", "--no-progress")
    for result in (straight, first, resumed):
        assert result.returncode == 0, result.stderr
    assert without_timings(read_csv(tmp_path / "split" / "history.csv")) == without_timings(
        read_csv(tmp_path / "straight" / "history.csv"))


@pytest.mark.slow  # a torchrun job; the fast suite has the image one
def test_two_ranks_with_sync_bn_follow_one_process_on_audio(tmp_path):
    """Every rank draws the same shifts and masks for the global batch, so 2 x 16 clips with --sync-bn train
    like 1 x 32; --bn-adapt's one batch per rank pools both halves of a split, so the adapted statistics are
    the whole split's, as in one process."""
    from test_distributed import torchrun
    args = [*AUDIO, "-t", "bn", "--epochs", "1", "--val-groups", "s1", "--bn-adapt", "true"]
    single = run_train(*args, "-b", "32", "--save-dir", tmp_path / "single")
    double = torchrun(*args, "-b", "16", "--sync-bn", "true", "--save-dir", tmp_path / "double")
    assert single.returncode == 0, single.stderr
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = read_csv(tmp_path / "single" / "history.csv"), read_csv(tmp_path / "double" / "history.csv")
    for column in ("train_loss", "val_loss", "test_loss", "val_adapted_loss", "test_adapted_loss"):
        assert float(two[0][column]) == pytest.approx(float(one[0][column]), rel=1e-4), column


def test_a_checkpoint_whose_normalisation_does_not_fit_its_data_is_refused(tmp_path):
    run = run_train(*AUDIO, "-t", "bn", "--epochs", "1", "--n-mels", "20", "--save-dir", tmp_path / "run")
    assert run.returncode == 0, run.stderr
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert len(state["normalization"]["mean"]) == 20  # one per mel band
    state["normalization"] = {"mean": [0.5] * 3, "std": [0.2] * 3}  # an image run's
    torch.save(state, tmp_path / "damaged.pt")
    assert_one_line_error(run_train("--resume", tmp_path / "damaged.pt", "-e"), "not a train.py checkpoint")


def test_an_audio_run_resumes_with_audio_flags_and_its_features_ignore_autocast(tmp_path):
    """--resume names no --dataset: the audio flags given with it are checked against the checkpoint's data.
    Features are computed in float32 even inside evaluation's bf16 autocast."""
    first = run_train(*AUDIO, "-t", "bn", "--epochs", "1", "--save-dir", tmp_path / "run")
    assert first.returncode == 0, first.stderr
    resumed = run_train("--resume", tmp_path / "run", "--epochs", "2", "-a", "resnet1d8", "--n-mels", "40",
                        "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert_one_line_error(run_train("--resume", tmp_path / "run", "--n-mels", "20"), "--n-mels 20", "checkpoint")
    log_mel = audio.LogMel(audio.Features(), "cpu")
    waves = torch.from_numpy(audio.to_int16(np.stack([tone(440, 1, 8000), tone(900, 1, 8000, 0.1)])))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = log_mel(waves)
    assert inside.dtype == torch.float32 and torch.equal(inside, log_mel(waves))


def test_wav_headers_out_of_range_are_errors_naming_the_file(tmp_path):
    path = write_wav(tmp_path / "odd.wav", tone(440, 0.1, 8000))
    raw = bytearray(path.read_bytes())
    raw[34:36] = (40).to_bytes(2, "little")  # bits per sample: 40
    raw[32:34] = (5).to_bytes(2, "little")  # block align to match
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="odd.wav"):
        audio.read_wav(str(path))
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0))
    with pytest.raises(ValueError, match="empty.wav.*no audio"):
        audio.read_wav(str(empty))


def test_one_class_or_other_test_classes_are_one_line_errors(tmp_path):
    single = make_speech_folder(tmp_path / "single")
    for path in (single / "train" / "1").iterdir():
        path.unlink()
    (single / "train" / "1").rmdir()
    assert_one_line_error(run_train("--dataset", "audiofolder", "--data-dir", single, "--cache-dir", tmp_path / "c",
                                    "--save-dir", tmp_path / "r1"), "one class folder", "at least two")
    extra = make_speech_folder(tmp_path / "extra", test=True)
    write_wav(extra / "test" / "7" / "7_ann_0.wav", tone(900, 0.3, 8000))
    assert_one_line_error(run_train("--dataset", "audiofolder", "--data-dir", extra, "--cache-dir", tmp_path / "c",
                                    "--save-dir", tmp_path / "r2"), "'7'", "only in", "test")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
