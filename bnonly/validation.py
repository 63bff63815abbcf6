"""The checks of a resolved Config (config.resolve calls `validate`): each raises ConfigError with one
line that names the bad value and the fix."""

import importlib.util
import math
import os
import re

from bnonly.choices import ADAM_FAMILY, AUDIO_DATASETS, AUDIO_DEFAULTS, STREAMED_DATASETS, ConfigError
from bnonly.phases import phase_settings, run_optimizers


def validate(cfg, given=frozenset()) -> None:
    """Raise ConfigError naming the first bad value."""
    def require(ok, message):
        if not ok:
            raise ConfigError(message)

    for name in ("epochs", "batch_size", "width", "lbfgs_history", "lbfgs_max_iter", "lbfgs_batch_size",
                 "save_every", "image_size", "workers"):
        require(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    require(cfg.lbfgs_max_eval is None or cfg.lbfgs_max_eval >= 1,
            f"--lbfgs-max-eval must be at least 1, got {cfg.lbfgs_max_eval}")
    require("width" not in given or not cfg.arch.startswith("torchvision:"), f"--width does not apply to "
            f"-a {cfg.arch}, whose sizes are torchvision's: drop --width (imagenet:resnetD takes one)")
    require("init_from" not in given or cfg.init_from is None or os.path.isfile(os.path.expanduser(cfg.init_from)),
            f"--init-from {cfg.init_from}: no such file")
    validate_lbfgs(cfg, require)
    validate_audio(cfg, require, given)
    require(cfg.lbfgs_chunk_size >= 0, f"--lbfgs-chunk-size must be 0 or more, got {cfg.lbfgs_chunk_size}")
    shortest = min(phase[1] for phase in cfg.phases) if cfg.phases else cfg.epochs
    require(0 <= cfg.warmup_epochs < shortest, f"--warmup-epochs must be at least 0 and below the "
            f"{'shortest phase' if cfg.phases else 'epochs'} ({shortest}), got {cfg.warmup_epochs}")
    require(0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    for name in ("train_size", "test_size"):
        value = getattr(cfg, name)
        require(value is None or value >= 1, f"--{name.replace('_', '-')} must be at least 1, got {value}")
    require(0 <= cfg.seed < 2**32, f"--seed must be between 0 and 2**32 - 1, got {cfg.seed}")
    require(cfg.val_split >= 0, f"--val-split must be 0 or more, got {cfg.val_split}")
    require(cfg.bn_recalibrate >= 0, f"--bn-recalibrate must be 0 or more, got {cfg.bn_recalibrate}")
    streamed = cfg.dataset in STREAMED_DATASETS
    require(not (streamed and cfg.bn_adapt), f"--bn-adapt needs a held-out split in memory; --dataset {cfg.dataset} "
            f"streams its images from disk")
    require(not (streamed and cfg.bn_recalibrate and "bn_recalibrate" in given), f"--bn-recalibrate needs the "
            f"training images in memory; --dataset {cfg.dataset} streams them from disk (give --bn-recalibrate 0)")
    require(math.isfinite(cfg.checkpoint_minutes) and cfg.checkpoint_minutes >= 0,
            f"--checkpoint-minutes must be a finite number >= 0, got {cfg.checkpoint_minutes}")
    require(cfg.print_freq >= 0, f"--print-freq must be 0 or more, got {cfg.print_freq}")
    require(math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a finite number above 0, got {cfg.lr}")
    for name in ("momentum", "weight_decay"):
        value = getattr(cfg, name)
        require(math.isfinite(value) and value >= 0, f"--{name.replace('_', '-')} must be finite and >= 0, got {value}")
    used = run_optimizers(cfg)
    named = "/".join(sorted(used))
    require(not cfg.nesterov or ("sgd" in used and cfg.momentum > 0),
            "--nesterov needs --optimizer sgd and --momentum above 0")
    require(cfg.betas is None or used & set(ADAM_FAMILY), f"--betas is for {', '.join(ADAM_FAMILY)}, not {named}")
    require(cfg.eps is None or used - {"sgd", "lbfgs", "ngd"}, f"--eps is not a setting of {named}")
    require(cfg.betas is None or all(0 <= b < 1 for b in cfg.betas),
            f"--betas must be two numbers in [0, 1), got {cfg.betas}")
    require(cfg.eps is None or (math.isfinite(cfg.eps) and cfg.eps > 0), f"--eps must be above 0, got {cfg.eps}")
    if cfg.schedule == "multistep" and cfg.milestones is not None:
        require(all(m >= 1 for m in cfg.milestones) and cfg.milestones == sorted(cfg.milestones),
                f"--milestones must be increasing epochs >= 1, got {cfg.milestones}")
    if "ngd" in used:
        validate_ngd(cfg, require)
    require(not (cfg.precision == "fp16" and cfg.optimizer == "lbfgs"),
            "--precision fp16 needs loss scaling, which L-BFGS's line search cannot use; use --precision bf16 or fp32")
    require(cfg.compile or cfg.compile_mode == "default",
            f"--compile-mode {cfg.compile_mode} needs --compile true")
    require(not cfg.tensorboard or importlib.util.find_spec("tensorboard") is not None,
            "--tensorboard needs the tensorboard package, which is not installed: pip install tensorboard")
    require(cfg.evaluate is False or cfg.resume, "--evaluate needs --resume PATH (the checkpoint to evaluate)")
    device = cfg.device
    require(device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit()),
            f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


def validate_ngd(cfg, require) -> None:
    """--optimizer ngd's settings, and what it cannot be combined with."""
    modes = {phase[0] for index, phase in enumerate(cfg.phases) if phase_settings(cfg, index).optimizer == "ngd"} \
        if cfg.phases else {cfg.trainable}
    require(modes == {"bn"}, "--optimizer ngd trains BatchNorm's gamma and beta only: use -t bn (or give it "
            "phases of bn)")
    require(cfg.precision != "fp16", "--optimizer ngd cannot use fp16's loss scaling; use --precision bf16 or fp32")
    require(not cfg.compile, "--optimizer ngd reads per-sample gradients through hooks that --compile would "
            "not keep; leave --compile off")
    require(math.isfinite(cfg.ngd_damping) and cfg.ngd_damping > 0,
            f"--ngd-damping must be a finite number above 0, got {cfg.ngd_damping}")
    require(0 <= cfg.ngd_ema < 1, f"--ngd-ema must be in [0, 1), got {cfg.ngd_ema}")
    require(cfg.ngd_refresh >= 1, f"--ngd-refresh must be at least 1, got {cfg.ngd_refresh}")
    require(math.isfinite(cfg.ngd_power) and cfg.ngd_power > 0, f"--ngd-power must be above 0, got {cfg.ngd_power}")


def domain_known(cfg, given) -> bool:
    """Whether cfg.dataset is the run's data: on --resume without --dataset the data are the checkpoint's,
    known only when resume_config resolves again."""
    return "dataset" in given or not cfg.resume


def validate_audio(cfg, require, given) -> None:
    """The model and the audio settings against the data (1-D models for audio, 2-D ones for images)."""
    audio_data = cfg.dataset in AUDIO_DATASETS
    require(cfg.arch.startswith("resnet1d") == audio_data or not domain_known(cfg, given),
            f"-a {cfg.arch} is a {'1-D (audio)' if cfg.arch.startswith('resnet1d') else '2-D (image)'} model and "
            f"--dataset {cfg.dataset} has {'audio' if audio_data else 'images'}: use "
            f"{'resnet1dD, e.g. ' + AUDIO_DEFAULTS['arch'] if audio_data else 'resnetD, e.g. resnet32'}")
    require(1000 <= cfg.sample_rate <= 384000, f"--sample-rate must be 1000 to 384000 Hz, got {cfg.sample_rate}")
    for name in ("clip_seconds", "frame_ms", "hop_ms", "top_db"):
        value = getattr(cfg, name)
        require(math.isfinite(value) and value > 0, f"--{name.replace('_', '-')} must be above 0, got {value}")
    require(cfg.frame_ms <= 1000 * cfg.clip_seconds, f"--frame-ms {cfg.frame_ms:g} is longer than the clip "
            f"(--clip-seconds {cfg.clip_seconds:g})")
    require(cfg.n_mels >= 1, f"--n-mels must be at least 1, got {cfg.n_mels}")
    require(math.isfinite(cfg.time_shift_ms) and cfg.time_shift_ms >= 0,
            f"--time-shift-ms must be 0 or more, got {cfg.time_shift_ms}")
    require(math.isfinite(cfg.freq_warp) and 0 <= cfg.freq_warp < 0.5,
            f"--freq-warp must be in [0, 0.5), got {cfg.freq_warp}")
    for name in ("time_mask", "freq_mask"):
        require(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} must be 0 or more, got {getattr(cfg, name)}")
    require(not (cfg.val_groups and cfg.val_split), "--val-groups and --val-split both choose the validation "
            "set; give one of them")
    try:
        groups = re.compile(cfg.group_regex).groups
    except re.error as e:
        raise ConfigError(f"--group-regex {cfg.group_regex!r} is not a regular expression: {e}") from None
    require(groups <= 1, f"--group-regex needs at most one capture group (the group's name), got {groups}")


def validate_lbfgs(cfg, require) -> None:
    """The L-BFGS settings that only some variants take."""
    variant = cfg.lbfgs_variant
    require((cfg.lbfgs_line_search == "strong_wolfe") <= (variant == "torch") and
            (cfg.lbfgs_line_search == "armijo") <= (variant != "torch"),
            f"--lbfgs-line-search {cfg.lbfgs_line_search} is not one of the {variant} variant's: use "
            f"{'strong_wolfe or none' if variant == 'torch' else 'armijo or none'}")
    require(cfg.lbfgs_max_eval is None or variant == "torch", "--lbfgs-max-eval is a setting of the torch variant")
    require(cfg.lbfgs_history_mode == "persist" or variant in ("torch", "batch"),
            f"--lbfgs-history-mode reset would forget the pairs the {variant} variant forms across steps; it "
            f"is for the torch and batch variants")
    require(cfg.lbfgs_damping is None or variant != "torch", "--lbfgs-damping is a setting of the stochastic "
            "variants (batch, multibatch, hvp), not torch's")
    require(cfg.lbfgs_damping is None or (math.isfinite(cfg.lbfgs_damping) and cfg.lbfgs_damping >= 0),
            f"--lbfgs-damping must be finite and >= 0, got {cfg.lbfgs_damping}")
    require(variant != "hvp" or not (cfg.compile or cfg.sync_bn), "the hvp variant's double backward works "
            "neither with --compile true nor with --sync-bn true (torch differentiates neither twice)")
    require(0 <= cfg.lbfgs_momentum < 1, f"--lbfgs-momentum must be in [0, 1), got {cfg.lbfgs_momentum}")
    require(not cfg.lbfgs_momentum or (variant != "torch" and cfg.lbfgs_line_search == "none"),
            "--lbfgs-momentum needs a stochastic variant (batch, multibatch, hvp) and --lbfgs-line-search none")
    require(not cfg.lbfgs_variance_scaling or variant != "torch",
            "--lbfgs-variance-scaling is a setting of the stochastic variants, not torch's")
    require(variant != "batch" or cfg.lbfgs_max_iter >= 2, "the batch variant forms its curvature pairs "
            f"between iterations on one batch: --lbfgs-max-iter must be at least 2, got {cfg.lbfgs_max_iter}")
    require(variant != "multibatch" or (cfg.lbfgs_batch_size >= 2 and cfg.lbfgs_batch_size % 2 == 0),
            f"the multibatch variant shares half of each batch with the next: --lbfgs-batch-size must be even, "
            f"got {cfg.lbfgs_batch_size}")
