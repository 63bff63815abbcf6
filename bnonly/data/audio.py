"""Audio classification data: WAV folders decoded once into a cache, log-mel features and augmentation
computed on the training device, on whole batches.

A split is a pair (waves (N, L) int16, labels (N,) int64), every clip resampled to one sample rate and
padded or cropped to L samples around its centre, so audio moves through the trainer like images do
(uint8 there). `AudioInputs` is the input pipeline the trainer calls: `augment` (random time shift, then
SpecAugment-style time and frequency masks, drawing every random number from the run's generator) and
`prepare` (log-mel features normalised per mel bin with the training split's statistics).

The features are log-mel energies in dB relative to each clip's loudest cell, floored `top_db` below it
(librosa's power_to_db with ref=max does the same): a clip's recording level drops out, and the digital
silence that pads a short clip becomes one floor value instead of log(0).

WAV files are read with the standard library's `wave` (PCM, 8/16/24/32-bit, any channel count, mixed to
mono; WAVE_FORMAT_EXTENSIBLE headers, which ffmpeg writes for 24-bit and multichannel files, need Python
3.12's `wave`); torchaudio would pin torch to an older release.
"""

import math
import os
import re
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from bnonly.data.folder_cache import DataError, cache_file, class_folders, read_cache, split_folders, write_cache

AUDIO_EXTENSIONS = (".wav",)
LOG_FLOOR = 1e-10  # added to the mel energies before the logarithm (the top_db floor does the real work)
WARP_KNEE = 0.8  # --freq-warp scales frequencies below this fraction of Nyquist (Jaitly & Hinton's VTLP)


# ---------------------------------------------------------------- reading, resampling, clips

def read_wav(path: str) -> tuple:
    """(mono float32 samples in [-1, 1], sample rate) of a PCM WAV file; ValueError naming the file."""
    try:
        with wave.open(path, "rb") as reader:
            channels, width, rate, frames = (reader.getnchannels(), reader.getsampwidth(), reader.getframerate(),
                                             reader.getnframes())
            data = reader.readframes(frames)
    except Exception as e:  # wave.Error, EOFError, and RuntimeError from damaged chunk sizes
        raise ValueError(f"cannot read {path}: not an integer-PCM WAV file that Python's wave module reads "
                         f"({str(e) or type(e).__name__})") from None
    if width not in (1, 2, 3, 4) or rate <= 0 or channels < 1:
        raise ValueError(f"cannot read {path}: {8 * width}-bit samples at {rate} Hz in {channels} channels "
                         f"(8/16/24/32-bit PCM at a positive rate is read)")
    if not frames:
        raise ValueError(f"cannot read {path}: it holds no audio (0 frames)")
    if len(data) != frames * channels * width:
        raise ValueError(f"cannot read {path}: truncated (header says {frames} frames, "
                         f"{len(data) // max(channels * width, 1)} present)")
    if width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128) / 128
    elif width == 3:  # 24-bit: little-endian triplets, sign-extended through the top byte
        triplets = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        value = triplets[:, 0] | (triplets[:, 1] << 8) | (triplets[:, 2] << 16)
        samples = (np.where(value >= 1 << 23, value - (1 << 24), value) / float(1 << 23)).astype(np.float32)
    else:
        samples = np.frombuffer(data, {2: "<i2", 4: "<i4"}[width]).astype(np.float32) / float(1 << (8 * width - 1))
    return samples.reshape(-1, channels).mean(1), rate


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling by the FFT: the spectrum is cut (or zero-extended) at the new Nyquist
    frequency, so downsampling does not alias."""
    if rate == target:
        return samples
    length = max(1, round(len(samples) * target / rate))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    bins = length // 2 + 1
    spectrum = spectrum[:bins] if len(spectrum) >= bins else np.pad(spectrum, (0, bins - len(spectrum)))
    return (np.fft.irfft(spectrum, n=length) * (length / len(samples))).astype(np.float32)


def fit_clip(samples: np.ndarray, length: int) -> np.ndarray:
    """`length` samples around the centre: longer clips lose both ends, shorter ones get silence on both sides."""
    if len(samples) >= length:
        start = (len(samples) - length) // 2
        return samples[start:start + length]
    before = (length - len(samples)) // 2
    return np.pad(samples, (before, length - len(samples) - before))


def to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)


def decode_clip(path: str, sample_rate: int, clip_samples: int) -> np.ndarray:
    """A file's samples at `sample_rate`, less their mean (a recorder's DC offset would otherwise fill the
    lowest mel band: one FSDD speaker's is hundreds of times the others'), fitted to `clip_samples`, as int16."""
    samples, rate = read_wav(path)
    samples = resample(samples, rate, sample_rate)
    return to_int16(fit_clip(samples - samples.mean(), clip_samples))


def _decode_chunk(paths: list, sample_rate: int, clip_samples: int) -> np.ndarray:
    return np.stack([decode_clip(path, sample_rate, clip_samples) for path in paths])


# ---------------------------------------------------------------- audiofolder with a decoded cache

def list_files(folder: str, classes: list) -> list:
    """[(path, label, file name)] of the WAV files in folder/<class>/ (sorted, links followed)."""
    files = []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        found = []
        for parent, dirs, names in os.walk(class_dir, followlinks=True):
            dirs.sort()
            found += [os.path.join(parent, f) for f in sorted(names) if f.lower().endswith(AUDIO_EXTENSIONS)]
        if not found:
            raise DataError(f"no WAV files in {class_dir}: every class folder needs at least one .wav file")
        files += [(path, label, os.path.basename(path)) for path in found]
    return files


def load_audiofolder(data_dir: str, cache_dir: str, sample_rate: int, clip_samples: int, workers: int) -> tuple:
    """DATA_DIR/train/<class>/*.wav (+ test/ or val/) -> (splits, classes, names), decoded once into a cache
    keyed by every file's path, size and modification time and by the rate and clip length."""
    folders = split_folders(data_dir, "audiofolder", "<files>.wav")
    classes = class_folders(folders)  # two classes at least, the same in every split: checked before any cache hit
    settings = f"audio rate{sample_rate} samples{clip_samples} dc-removed"
    cache_path = cache_file(cache_dir, "audiofolder", folders, settings)
    cached = read_cache(cache_path)
    if cached is not None:
        return cached
    splits, names = {}, {}
    for split, folder in folders.items():
        files = list_files(folder, classes)
        paths = [path for path, _, _ in files]
        chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
        try:
            if workers > 1 and len(chunks) > 1:
                with ProcessPoolExecutor(workers) as pool:
                    parts = list(pool.map(_decode_chunk, chunks, [sample_rate] * len(chunks),
                                          [clip_samples] * len(chunks)))
            else:
                parts = [_decode_chunk(chunk, sample_rate, clip_samples) for chunk in chunks]
        except ValueError as e:
            raise DataError(str(e)) from None
        splits[split] = (torch.from_numpy(np.concatenate(parts)), torch.tensor([f[1] for f in files]))
        names[split] = [f[2] for f in files]
    write_cache(cache_path, splits, classes, names)
    return splits, classes, names


def synthetic_audio(train_n: int, test_n: int, sample_rate: int, clip_samples: int, num_classes: int = 10) -> tuple:
    """Deterministic clips whose class shows in a tone's pitch and a chirp's direction, at a random level,
    onset and length, in noise; names "{label}_s{speaker}_{index}.wav" with 4 speakers, who shift the pitch."""
    g = torch.Generator().manual_seed(4321)
    pitch = 200 + 1800 * torch.rand(num_classes, generator=g) * min(1.0, sample_rate / 8000)  # Hz, 200-2000 at the start
    sweep = torch.where(torch.rand(num_classes, generator=g) < 0.5, -1.0, 1.0) * 0.5  # the chirp's octave per second
    t = torch.arange(clip_samples) / sample_rate

    def make(n, seed, prefix):
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(num_classes, (n,), generator=g)
        speakers = torch.arange(n) % 4
        f0 = pitch[labels] * (1 + 0.05 * speakers)
        onset = torch.rand(n, generator=g) * 0.3 * t[-1]
        length = (0.3 + 0.4 * torch.rand(n, generator=g)) * t[-1]
        local = (t[None] - onset[:, None]).clamp_min(0)
        phase = 2 * math.pi * f0[:, None] * (2 ** (sweep[labels][:, None] * local) - 1) / (
            sweep[labels][:, None] * math.log(2))
        envelope = ((t[None] >= onset[:, None]) & (t[None] < (onset + length)[:, None])).float()
        level = 0.05 + 0.4 * torch.rand(n, 1, generator=g)
        waves = level * envelope * (torch.sin(phase) + 0.3 * torch.sin(2 * phase))
        waves = waves + 0.01 * torch.randn(n, clip_samples, generator=g)
        names = [f"{int(label)}_s{int(speaker)}_{prefix}{i}.wav" for i, (label, speaker) in
                 enumerate(zip(labels, speakers))]
        return (torch.from_numpy(to_int16(waves.numpy())), labels), names

    (train, train_names), (test, test_names) = make(train_n, 11, "a"), make(test_n, 12, "b")
    return {"train": train, "test": test}, [str(c) for c in range(num_classes)], {"train": train_names,
                                                                                   "test": test_names}


# ---------------------------------------------------------------- the split by speaker (any group)

def group_split(names: list, regex: str, held_out: list) -> tuple:
    """(train_index, val_index): every file whose group (the first capture group of `regex` searched in its
    file name, the whole match without one) is in `held_out` goes to validation."""
    pattern = re.compile(regex)
    groups = []
    for name in names:
        match = pattern.search(name)
        if match is None:
            raise DataError(f"--group-regex {regex!r} does not match the file name {name!r}")
        groups.append((match[1] if pattern.groups else match[0]) or "")  # an optional group that did not take part
    unknown = sorted(set(held_out) - set(groups))
    if unknown:
        raise DataError(f"--val-groups {unknown[0]!r} matches no training file; the groups are "
                        f"{', '.join(sorted(set(groups))[:12])}")
    is_val = torch.tensor([group in held_out for group in groups])
    if bool(is_val.all()):
        raise DataError(f"--val-groups {','.join(held_out)} holds out every training file")
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


# ---------------------------------------------------------------- features and augmentation

@dataclass(frozen=True)
class Features:
    """Log-mel settings: frames of `frame_ms` every `hop_ms`, `n_mels` bands between 0 Hz and Nyquist."""
    sample_rate: int = 8000
    n_mels: int = 40
    frame_ms: float = 25.0
    hop_ms: float = 10.0
    top_db: float = 80.0

    @property
    def win_length(self) -> int:
        return max(2, round(self.sample_rate * self.frame_ms / 1000))

    @property
    def hop_length(self) -> int:
        return max(1, round(self.sample_rate * self.hop_ms / 1000))

    @property
    def n_fft(self) -> int:
        return 1 << (self.win_length - 1).bit_length()  # the next power of two

    def frames(self, samples: int) -> int:
        return samples // self.hop_length + 1  # torch.stft with center=True

    def check(self) -> None:
        """DataError when a mel band would hold no FFT bin."""
        filters = mel_filters(self)
        if bool((filters.sum(1) == 0).any()):
            raise DataError(f"--n-mels {self.n_mels} is too many for {self.frame_ms:g} ms frames at "
                             f"{self.sample_rate} Hz: the narrowest mel bands hold no FFT bin; use fewer bands or "
                             f"longer frames")


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_filters(features: Features) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the HTK mel scale up to Nyquist."""
    edges = 700.0 * (10 ** (np.linspace(0, hz_to_mel(features.sample_rate / 2), features.n_mels + 2) / 2595) - 1)
    bins = np.linspace(0, features.sample_rate / 2, features.n_fft // 2 + 1)
    rising = (bins[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    falling = (edges[2:, None] - bins[None]) / (edges[2:] - edges[1:-1])[:, None]
    return torch.from_numpy(np.maximum(0, np.minimum(rising, falling))).float()


class LogMel:
    """int16 or float waves (B, L) -> (B, n_mels, frames) log-mel energies in dB below each clip's maximum."""

    def __init__(self, features: Features, device):
        self.features = features
        self.window = torch.hann_window(features.win_length, device=device)
        self.filters = mel_filters(features).to(device)

    def __call__(self, waves: torch.Tensor, warp: Optional[Callable] = None) -> torch.Tensor:
        """`warp`, when given, maps the power spectrum (B, n_fft // 2 + 1, frames) before the mel bands."""
        f = self.features
        x = waves.float() / 32768 if waves.dtype == torch.int16 else waves.float()
        with torch.autocast(x.device.type, enabled=False):  # evaluation calls it under autocast: fp16 overflows
            spectrum = torch.stft(x, f.n_fft, f.hop_length, f.win_length, self.window, center=True,
                                  return_complex=True)
            power = spectrum.abs().square()
            energies = self.filters @ (power if warp is None else warp(power))  # (B, n_mels, frames) float32
            db = 10 * torch.log10(energies + LOG_FLOOR)
            return (db - db.amax(dim=(1, 2), keepdim=True)).clamp_min(-f.top_db)


@dataclass(frozen=True)
class Augmentation:
    """Random time shift of up to `shift_ms` either way (silence fills in); one time mask of up to
    `time_mask` frames and one frequency mask of up to `freq_mask` mel bands per clip; each clip's
    frequency axis scaled by a random factor within 1 ± `freq_warp` (0: off, each)."""
    shift_ms: float = 100.0
    time_mask: int = 10
    freq_mask: int = 8
    freq_warp: float = 0.0


def time_shift(waves: torch.Tensor, most: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each clip of (B, L) by a random whole number of samples in [-most, most], filling with silence."""
    if most <= 0:
        return waves
    b, length = waves.shape
    shift = torch.randint(2 * most + 1, (b,), generator=generator, device=waves.device)  # most + the shift
    padded = torch.nn.functional.pad(waves, (most, most))
    columns = (2 * most - shift)[:, None] + torch.arange(length, device=waves.device)
    return padded.gather(1, columns)


def warp_frequencies(power: torch.Tensor, most: float, generator: torch.Generator) -> torch.Tensor:
    """Vocal-tract-length perturbation of a power spectrum (B, bins, frames): each clip's frequency axis is
    scaled by its own random factor a in [1 - most, 1 + most] below a knee (WARP_KNEE of Nyquist, times a
    when a < 1), then stretched linearly so that Nyquist stays Nyquist; bins are read by linear interpolation."""
    if most <= 0:
        return power
    b, bins, frames = power.shape
    a = (1 + most * (2 * torch.rand(b, generator=generator, device=power.device) - 1))[:, None]
    top = bins - 1
    out = torch.arange(bins, device=power.device, dtype=torch.float32)[None]  # (1, bins) output positions
    knee = WARP_KNEE * top * a.clamp(max=1)
    above = knee / a + (out - knee) * (top - knee / a) / (top - knee)
    source = torch.where(out <= knee, out / a, above).clamp(0, top)  # (b, bins) where each output bin reads
    low = source.floor().long().clamp(max=top - 1)
    weight = (source - low)[:, :, None]
    rows = power.gather(1, low[:, :, None].expand(b, bins, frames))
    following = power.gather(1, (low + 1)[:, :, None].expand(b, bins, frames))
    return rows * (1 - weight) + following * weight


def band_mask(size: int, count: int, widest: int, generator: torch.Generator, device) -> torch.Tensor:
    """(count, size) bool: per row one band of a random width in [0, widest] at a random start."""
    width = torch.randint(widest + 1, (count,), generator=generator, device=device)
    start = (torch.rand(count, generator=generator, device=device) * (size - width + 1)).floor().long()
    position = torch.arange(size, device=device)[None]
    return (position >= start[:, None]) & (position < (start + width)[:, None])


class AudioInputs:
    """The trainer's input pipeline for audio: `augment(waves, generator)` on a whole global batch, then
    `prepare` of the trainer's share (of augmented features or of raw int16 waves)."""

    def __init__(self, features: Features, augmentation: Augmentation, mean, std, device):
        self.log_mel = LogMel(features, device)
        self.augmentation = augmentation
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1)

    def augment(self, waves: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, L) int16 -> (B, n_mels, frames) float features, shifted, warped and masked; masked cells hold the
        bin's mean, so they are 0 once normalised."""
        a, f = self.augmentation, self.log_mel.features
        warp = (lambda power: warp_frequencies(power, a.freq_warp, generator)) if a.freq_warp else None
        x = self.log_mel(time_shift(waves, round(a.shift_ms * f.sample_rate / 1000), generator), warp)
        b, bins, frames = x.shape
        masked = torch.zeros_like(x, dtype=torch.bool)
        if a.time_mask:
            masked |= band_mask(frames, b, min(a.time_mask, frames), generator, x.device)[:, None, :]
        if a.freq_mask:
            masked |= band_mask(bins, b, min(a.freq_mask, bins), generator, x.device)[:, :, None]
        return torch.where(masked, self.mean, x)

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """Model input (B, n_mels, frames): features of raw int16 waves, or `augment`'s, normalised per bin."""
        x = self.log_mel(batch) if batch.dtype == torch.int16 else batch
        return (x - self.mean) / self.std


def feature_stats(waves: torch.Tensor, features: Features, batch_size: int = 512) -> tuple:
    """Per-mel-bin mean and std of the log-mel features of (N, L) int16 waves, over every clip and frame."""
    log_mel = LogMel(features, "cpu")
    total = torch.zeros(features.n_mels, dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for start in range(0, len(waves), batch_size):
        x = log_mel(waves[start:start + batch_size]).double()
        total += x.sum((0, 2))
        squares += x.square().sum((0, 2))
        count += x.shape[0] * x.shape[2]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-4).sqrt()  # >= 0.01 dB: a constant bin stays finite
    return tuple(mean.tolist()), tuple(std.tolist())
