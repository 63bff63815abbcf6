"""The run configuration: one dataclass, and the command line generated from it.

Every field of `Config` is a flag (`batch_size` -> `--batch-size`, also `--batch_size`); the help text,
short aliases and choices live in the field's metadata. Values come, in rising priority, from the
defaults, a `--config FILE` (JSON or YAML, keys are flag names) and the command line.
"""

import argparse
import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

from bnonly.choices import (ARCHS, AUDIO_ARCHS, AUDIO_DATASETS, AUDIO_DEFAULTS, AUDIO_SETTINGS, BN_INITS,
                            COMPILE_MODES, DATASETS, DEFAULT_BN_RECALIBRATE, DEFAULT_LBFGS_VARIANT, DEFAULT_LR,
                            FSDD_GROUP_REGEX, IMAGE_DEFAULTS, IMAGENET_DEFAULTS, IMAGENET_DEPTHS, IMAGENET_RECIPE,
                            LBFGS_DEFAULTS, LBFGS_LR, LBFGS_VARIANTS, NGD_POWER_LR, OPTIMIZERS, PRECISIONS,
                            STREAMED_DATASETS, TRAINABLE, ConfigError, default_lr)
from bnonly.phases import default_milestones, phase_list
from bnonly.validation import domain_known, validate


def _variant_defaults(name: str) -> str:
    return ", ".join(f"{variant} {values[name]}" for variant, values in LBFGS_DEFAULTS.items() if name in values)


def str2bool(text: str) -> bool:
    """Parse true/false/1/0/yes/no (any case); anything else is an error."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "y", "on"):
        return True
    if value in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false/1/0/yes/no), got {text!r}")


def arch_depth(name) -> int:
    """The depth D of a model name resnetD or resnet1dD when D = 6n + 2 with n >= 1; else 0."""
    match = re.fullmatch(r"resnet(1d)?(\d+)", str(name))
    depth = int(match[2]) if match else 0
    return depth if depth >= 8 and (depth - 2) % 6 == 0 else 0


def imagenet_depth(name) -> int:
    """The depth D of imagenet:resnetD when D is one of IMAGENET_DEPTHS; else 0."""
    match = re.fullmatch(r"imagenet:resnet(\d+)", str(name))
    return int(match[1]) if match and int(match[1]) in IMAGENET_DEPTHS else 0


def arch_name(text) -> str:
    """Check a model name: resnetD or resnet1dD with depth D = 6n + 2, n >= 1; imagenet:resnetD with D in
    IMAGENET_DEPTHS; torchvision:NAME, whose NAME is checked against torchvision's list when the model is
    built (this module does not import torch)."""
    text = str(text)
    if text.startswith("imagenet:"):
        if not imagenet_depth(text):
            raise argparse.ArgumentTypeError(f"expected imagenet:resnetD with D one of "
                                             f"{', '.join(map(str, IMAGENET_DEPTHS))}, got {text!r}")
    elif text.startswith("torchvision:"):
        if not re.fullmatch(r"torchvision:[A-Za-z]\w*", text):
            raise argparse.ArgumentTypeError(f"expected torchvision:NAME with NAME a torchvision classification "
                                             f"model such as resnet50 or vgg16_bn, got {text!r}")
    elif not arch_depth(text):
        raise argparse.ArgumentTypeError(f"expected resnetD (images) or resnet1dD (audio) with depth D = 6n + 2 "
                                         f"(resnet8, resnet14, resnet20, ..., resnet866), imagenet:resnetD or "
                                         f"torchvision:NAME, got {text!r}")
    return text


def name_list(text) -> list:
    """Parse 'george,theo' (or a config file's list) into a list of names."""
    values = text if isinstance(text, (list, tuple)) else str(text).split(",")
    values = [str(v).strip() for v in values if str(v).strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def int_list(text) -> list:
    """Parse '80,120' (or a list from a config file) into a list of ints."""
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    try:
        return [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text, length: int) -> list:
    """Parse '0.9,0.999' (or a list from a config file) into `length` floats."""
    values = text if isinstance(text, (list, tuple)) else str(text).replace(" ", "").split(",")
    try:
        values = [float(v) for v in values]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {length} comma-separated numbers, got {text!r}") from None
    if len(values) != length:
        raise argparse.ArgumentTypeError(f"expected {length} comma-separated numbers, got {text!r}")
    return values


def _flag(help, *aliases, **kwargs):
    return {"help": help, "aliases": aliases, **kwargs}


@dataclass
class Config:  # in the order of SECTIONS
    arch: Optional[str] = field(default=None, metadata=_flag(
        "CIFAR ResNet resnetD of any depth D = 6n+2: He et al.'s " + ", ".join(ARCHS) + ", the BN-only paper's "
        "resnet14, resnet218, resnet434, resnet866, or any other; for audio data its 1-D analogue resnet1dD ("
        + ", ".join(AUDIO_ARCHS) + ", ...); the paper's ImageNet ResNets imagenet:resnetD, D = " +
        ", ".join(map(str, IMAGENET_DEPTHS)) + "; or torchvision:NAME, any classification model of "
        "torchvision.models (torchvision:resnet50, torchvision:vgg16_bn, torchvision:mobilenet_v3_small, ...), "
        "randomly initialised, BN gamma by --bn-init (default " + IMAGE_DEFAULTS["arch"] + "; " +
        AUDIO_DEFAULTS["arch"] + " with audio data)",
        "-a", type=arch_name, metavar="ARCH"))
    width: Optional[int] = field(default=None, metadata=_flag(
        f"channel multiplier: the CIFAR ResNets' stages have 16K/32K/64K channels, imagenet:resnetD's "
        f"64K/128K/256K/512K; not for torchvision:NAME, whose sizes are torchvision's (default "
        f"{IMAGE_DEFAULTS['width']}; {AUDIO_DEFAULTS['width']} with audio data)", metavar="K"))
    trainable: str = field(default="all", metadata=_flag(
        "parameters to train: all | bn (BatchNorm gamma/beta only) | bn+fc | fc (final linear) | "
        "none (forward passes only: BN running statistics still update) | random (the paper's control: 2 "
        "randomly chosen conv weights per output channel, as many as BN has gamma/beta; BN stays frozen)",
        "-t", choices=TRAINABLE))
    phases: Optional[list] = field(default=None, metadata=_flag(
        "train in phases instead of one -t mode, e.g. bn:5,all:155 (5 BN-only epochs, then 155 of full "
        "training); the optimizer and the schedule start afresh in each phase; --epochs is their sum. A phase "
        "may name its own optimizer and lr, e.g. bn:3:ngd:1.6,all:27:sgd:0.1 (without an lr: --lr for "
        "--optimizer's, the optimizer's default lr for another; not lbfgs)",
        type=phase_list, metavar="MODE:EPOCHS[:OPTIMIZER[:LR]],..."))
    bn_init: str = field(default="uniform", metadata=_flag(
        "BatchNorm gamma init: uniform U[0,1), ones, normal N(0,1) or signed U[-1,1); beta = 0 (for every "
        "model, torchvision's too, after its own init)",
        choices=BN_INITS))
    init_from: Optional[str] = field(default=None, metadata=_flag(
        "start from the weights in FILE, loaded before freezing: a state dict (torchvision's or timm's .pth) or a "
        "train.py checkpoint.pt; the final linear layer keeps its random init if its class count differs from "
        "the data's; not read on --resume (the checkpoint's weights win)", metavar="FILE"))
    optimizer: str = field(default="sgd", metadata=_flag(
        "a torch.optim optimizer, or ngd: full-matrix RMSprop or natural gradient over BatchNorm's gamma and "
        "beta (-t bn; docs/natural_gradient.md)", choices=OPTIMIZERS))
    use_lbfgs: Optional[bool] = field(default=None, metadata=_flag(
        "true/false: shorthand for --optimizer lbfgs / sgd", type=str2bool, metavar="BOOL"))
    epochs: Optional[int] = field(default=None, metadata=_flag(
        f"number of epochs (default {IMAGE_DEFAULTS['epochs']}; {AUDIO_DEFAULTS['epochs']} with audio data)"))
    batch_size: Optional[int] = field(default=None, metadata=_flag(
        f"SGD mini-batch size (images or clips) (default {IMAGE_DEFAULTS['batch_size']}; "
        f"{AUDIO_DEFAULTS['batch_size']} with audio data)",
        "-b"))
    lr: Optional[float] = field(default=None, metadata=_flag(
        "learning rate; for L-BFGS the step, or the line search's first trial (default per optimizer: " +
        ", ".join(f"{name} {lr:g}" for name, lr in DEFAULT_LR.items()) + " (with --ngd-power 1: "
        f"{NGD_POWER_LR[1.0]:g}); the multibatch L-BFGS "
        f"{LBFGS_LR['multibatch']:g})"))
    momentum: float = field(default=0.9, metadata=_flag("SGD momentum"))
    nesterov: bool = field(default=False, metadata=_flag("SGD: Nesterov momentum", type=str2bool, metavar="BOOL"))
    betas: Optional[list] = field(default=None, metadata=_flag(
        "adam/adamw/nadam/radam: the two moment decay rates, e.g. 0.9,0.999 (default: torch's)",
        type=lambda text: float_list(text, 2), metavar="B1,B2"))
    eps: Optional[float] = field(default=None, metadata=_flag(
        "adaptive optimizers: the denominator's epsilon (default: torch's for each optimizer)"))
    weight_decay: float = field(default=1e-4, metadata=_flag(
        "L2 weight decay, applied to every trainable parameter (BatchNorm's too unless --bn-weight-decay false)",
        "--wd"))
    bn_weight_decay: bool = field(default=True, metadata=_flag(
        "apply --weight-decay to BatchNorm gamma/beta as well", type=str2bool, metavar="BOOL"))
    label_smoothing: float = field(default=0.0, metadata=_flag(
        "training loss: cross-entropy against labels smoothed by this much (evaluation uses plain labels)"))
    schedule: str = field(default="multistep", metadata=_flag(
        "learning-rate schedule, stepped per epoch: multistep (x0.1 at the milestones), cosine, constant",
        choices=("multistep", "cosine", "constant")))
    milestones: Optional[list] = field(default=None, metadata=_flag(
        "multistep epochs, e.g. 80,120 (default: 50%% and 75%% of --epochs, or of each phase)", type=int_list,
        metavar="E1,E2"))
    warmup_epochs: Optional[int] = field(default=None, metadata=_flag(
        "raise the learning rate linearly over this many first epochs (of each phase) before the schedule "
        "(default 0; --dataset imagenet: 5/90 of the epochs, rounded)"))
    lbfgs_variant: Optional[str] = field(default=None, metadata=_flag(
        "L-BFGS algorithm: torch (torch.optim.LBFGS, strong-Wolfe search; its pairs mix two batches), batch "
        "(pairs within one batch, variance-scaled Armijo backtracking), multibatch (pairs from the half "
        "that consecutive batches share), hvp (pairs from Hessian-vector products); default " +
        DEFAULT_LBFGS_VARIANT + " (docs/results.md: L-BFGS variants)", choices=LBFGS_VARIANTS))
    lbfgs_history: Optional[int] = field(default=None, metadata=_flag(
        "L-BFGS memory, curvature pairs (default per variant: " + _variant_defaults("lbfgs_history") + ")"))
    lbfgs_max_iter: Optional[int] = field(default=None, metadata=_flag(
        "L-BFGS iterations per optimizer step (per batch) (default per variant: " +
        _variant_defaults("lbfgs_max_iter") + ")"))
    lbfgs_max_eval: Optional[int] = field(default=None, metadata=_flag(
        "torch variant: L-BFGS loss evaluations per optimizer step, line-search calls included (default: "
        "torch's, max-iter x 5/4, which can end a step before its max-iter iterations: max-iter 2 gives one)"))
    lbfgs_batch_size: Optional[int] = field(default=None, metadata=_flag(
        "images in the fixed batch of one L-BFGS step; multibatch: half of them are the previous step's "
        "(default per variant: " + _variant_defaults("lbfgs_batch_size") + ")"))
    lbfgs_chunk_size: int = field(default=0, metadata=_flag(
        "L-BFGS: evaluate the batch in chunks of this many images and sum their gradients, for batches "
        "larger than memory allows (BatchNorm normalises each chunk on its own; 0: the whole batch at once)"))
    lbfgs_line_search: Optional[str] = field(default=None, metadata=_flag(
        "L-BFGS step length: strong_wolfe (torch variant), armijo (backtracking from lr, the others), or none "
        "(fixed steps of --lr) (default per variant: " + _variant_defaults("lbfgs_line_search") + ")",
        choices=("strong_wolfe", "armijo", "none")))
    lbfgs_variance_scaling: Optional[bool] = field(default=None, metadata=_flag(
        "stochastic variants: scale each step (the line search's first trial) by the gradients' "
        "signal-to-noise ratio across batches, |mean|^2 / (|mean|^2 + trace of the covariance) (default per "
        "variant: " + _variant_defaults("lbfgs_variance_scaling") + ")", type=str2bool, metavar="BOOL"))
    lbfgs_damping: Optional[float] = field(default=None, metadata=_flag(
        "stochastic variants: y += damping x s in every curvature pair of positive curvature, which bounds "
        "the inverse Hessian by 1/damping (default per variant: " + _variant_defaults("lbfgs_damping") + "; "
        "1e-6 is the batch mode's, which bounds nothing in practice)"))
    lbfgs_momentum: float = field(default=0.0, metadata=_flag(
        "stochastic variants with --lbfgs-line-search none: apply L-BFGS to a running average of the "
        "gradients, m = b m + (1 - b) g, instead of each batch's own (0: off)"))
    lbfgs_history_mode: str = field(default="persist", metadata=_flag(
        "torch and batch variants: curvature memory across batches: persist, or reset before every batch",
        choices=("persist", "reset")))
    ngd_fisher: str = field(default="empirical", metadata=_flag(
        "ngd: per-sample gradients of the Fisher: empirical (the batch's labels, free) or sampled (labels drawn "
        "from the model's predictions: one more backward pass per step)", choices=("empirical", "sampled")))
    ngd_damping: float = field(default=1.0, metadata=_flag(
        "ngd: the initial Levenberg-Marquardt damping, in units of the Fisher's mean eigenvalue; it adapts at "
        "every refresh"))
    ngd_ema: float = field(default=0.95, metadata=_flag("ngd: decay per step of the Fisher's moving average"))
    ngd_refresh: int = field(default=50, metadata=_flag(
        "ngd: steps between factorisations of the damped Fisher (the damping adapts at each); 50 keeps a step "
        "within 1.5x SGD's (BENCHMARKS.md)"))
    ngd_power: float = field(default=0.5, metadata=_flag(
        "ngd: step (F + damping)^-power g: 0.5 full-matrix RMSprop (the fastest BN-only optimizer, "
        "docs/results.md), 1 natural gradient"))
    ngd_blocks: str = field(default="auto", metadata=_flag(
        "ngd: curvature blocks: full (one matrix), layer, channel (2x2 gamma/beta), auto (the coarsest whose "
        "blocks hold at most 4,096 parameters)", choices=("auto", "full", "layer", "channel")))
    bn_recalibrate: Optional[int] = field(default=None, metadata=_flag(
        "before each evaluation, re-estimate BN running statistics as the plain average over N fixed "
        "training images (0: keep the running averages; default 4096 for L-BFGS, whose few large steps "
        "leave the running averages stale, 0 for SGD)"))
    bn_adapt: bool = field(default=False, metadata=_flag(
        "also evaluate each held-out split with BN running statistics recomputed on that split's own inputs, "
        "never its labels (AdaBN: unsupervised adaptation to new data, e.g. an unseen speaker); history gains "
        "val_adapted_loss/_acc (test_ too); training and the checkpoint keep the training statistics",
        type=str2bool, metavar="BOOL"))
    seed: int = field(default=0, metadata=_flag("random seed: same seed and flags give the same run on the CPU"))
    dataset: str = field(default="cifar10", metadata=_flag(
        "cifar10 | cifar100 | imagefolder (DATA_DIR/train/<class>/*, optional test/ or val/) | synthetic | "
        "audiofolder (DATA_DIR/train/<class>/*.wav, optional test/ or val/) | synthetic-audio (tones and chirps)",
        choices=DATASETS))
    data_dir: str = field(default="./data", metadata=_flag("dataset folder"))
    download: bool = field(default=True, metadata=_flag(
        "download CIFAR with torchvision if missing (--no-download: never)", action=argparse.BooleanOptionalAction))
    train_size: Optional[int] = field(default=None, metadata=_flag(
        "use the first N training images of a fixed seeded permutation"))
    test_size: Optional[int] = field(default=None, metadata=_flag(
        "use the first N test images of a fixed seeded permutation"))
    val_split: int = field(default=0, metadata=_flag(
        "hold out N training images (stratified, fixed seed) as a validation set"))
    val_groups: Optional[list] = field(default=None, metadata=_flag(
        "audio data: hold out every training file of these groups (speakers) as the validation set; a file's "
        "group is what --group-regex captures in its name", type=name_list, metavar="NAME,..."))
    group_regex: str = field(default=FSDD_GROUP_REGEX, metadata=_flag(
        "with --val-groups: a file name's group is this regex's first capture group (the default captures the "
        "second _-separated field, FSDD's speaker in {digit}_{speaker}_{index}.wav)"))
    sample_rate: int = field(default=8000, metadata=_flag(
        "audio: clips are resampled to this rate, Hz (8000: the speech band to 4 kHz, FSDD's own rate)"))
    clip_seconds: float = field(default=1.0, metadata=_flag(
        "audio: clips are padded with silence or cropped around their centre to this length (1 s holds "
        "99.8 %% of FSDD's recordings whole)"))
    n_mels: int = field(default=40, metadata=_flag("audio: mel bands of the log-mel features (the model's input channels)"))
    frame_ms: float = field(default=25.0, metadata=_flag("audio: analysis window of the spectrogram, ms"))
    hop_ms: float = field(default=10.0, metadata=_flag("audio: step between spectrogram frames, ms"))
    top_db: float = field(default=80.0, metadata=_flag(
        "audio: log-mel energies are in dB below each clip's loudest, floored this far below it"))
    time_shift_ms: float = field(default=100.0, metadata=_flag(
        "audio augmentation: shift each training clip by up to this much either way, ms (0: off)"))
    time_mask: int = field(default=10, metadata=_flag(
        "audio augmentation: mask one run of up to this many frames per training clip (0: off)"))
    freq_mask: int = field(default=8, metadata=_flag(
        "audio augmentation: mask one run of up to this many mel bands per training clip (0: off)"))
    freq_warp: float = field(default=0.0, metadata=_flag(
        "audio augmentation: scale each training clip's frequency axis by a random factor within 1 ± this "
        "(vocal-tract-length perturbation, e.g. 0.1; 0: off)"))
    image_size: Optional[int] = field(default=None, metadata=_flag(
        "imagefolder: images are resized to this square size (default 32); imagenet: the side of the training "
        "crops and of the evaluation's centre crop (default 224)"))
    streamed_crop: str = field(default="random-resized", metadata=_flag(
        "imagenet: the training crop: random-resized (RandomResizedCrop, the ImageNet recipe; evaluation: "
        "resize to 256/224 of --image-size, centre crop) or padded (the CIFAR recipe: the whole image resized, "
        "zero-padded by 4, a random crop back; evaluation: the whole image resized)",
        choices=("random-resized", "padded")))
    cache_dir: str = field(default=os.path.join("~", ".cache", "bn-only"), metadata=_flag(
        "imagefolder: where decoded images are cached"))
    workers: int = field(default=min(4, os.cpu_count() or 1), metadata=_flag(
        "processes decoding imagefolder images; imagenet: DataLoader worker processes per split", "-j"))
    device: str = field(default="auto", metadata=_flag(
        "auto | cpu | cuda | cuda:N | mps (auto: cuda, mps, cpu; under torchrun auto/cuda is cuda:LOCAL_RANK)"))
    sync_bn: bool = field(default=False, metadata=_flag(
        "under torchrun: BatchNorm normalises with the statistics of the global batch (all processes) instead "
        "of each process's own", type=str2bool, metavar="BOOL"))
    precision: str = field(default="auto", metadata=_flag(
        "arithmetic of convolutions and matmuls: fp32, or bf16/fp16 autocast (BatchNorm statistics, parameters "
        "and the loss stay fp32); auto: the fastest precision whose accuracy matched fp32, i.e. bf16 on CPUs "
        "with AMX except with L-BFGS, fp32 elsewhere (BENCHMARKS.md); a resumed run keeps the precision it "
        "started with", choices=PRECISIONS))
    half: Optional[bool] = field(default=None, metadata=_flag(
        "shorthand for --precision fp16 (the original project's flag)", action="store_true"))
    channels_last: bool = field(default=True, metadata=_flag(
        "keep images and activations in channels-last (NHWC) memory layout", type=str2bool, metavar="BOOL"))
    compile: bool = field(default=False, metadata=_flag(
        "torch.compile the model (slower on the CPU, where it is off by default: see BENCHMARKS.md)",
        type=str2bool, metavar="BOOL"))
    compile_mode: str = field(default="default", metadata=_flag(
        "with --compile true: torch.compile's mode for the model's forward and backward (the loss and the "
        "optimizer step stay eager); reduce-overhead replays them as CUDA graphs, meant for the GPU step, "
        "whose time goes mostly to kernel launches (not measured yet: BENCHMARKS.md)", choices=COMPILE_MODES))
    save_dir: Optional[str] = field(default=None, metadata=_flag(
        "run folder (default runs/<arch>_<optimizer>_<trainable>_<timestamp>)"))
    resume: Optional[str] = field(default=None, metadata=_flag(
        "continue a run: its folder or a checkpoint file", metavar="PATH"))
    evaluate: bool = field(default=False, metadata=_flag(
        "with --resume: print the checkpoint's test loss and accuracy, then exit", "-e", action="store_true"))
    save_every: int = field(default=1, metadata=_flag("write checkpoint.pt every N epochs (and at the end)"))
    checkpoint_minutes: float = field(default=0.0, metadata=_flag(
        "also write checkpoint.pt within an epoch when this many minutes passed since the last one (0: off)"))
    print_freq: int = field(default=0, metadata=_flag(
        "also print the running train loss every N batches (0: only one line per epoch)"))
    no_progress: bool = field(default=False, metadata=_flag("no tqdm progress bar", action="store_true"))
    tensorboard: bool = field(default=False, metadata=_flag(
        "also write the curves as TensorBoard event files into RUN_DIR/tensorboard: the history.csv columns "
        "each epoch, the running train loss every --print-freq steps, gamma/beta histograms per stage, the "
        "settings (needs pip install tensorboard)", action=argparse.BooleanOptionalAction))
    overwrite: bool = field(default=False, metadata=_flag(
        "replace the files of an existing run in --save-dir", action="store_true"))
    config: Optional[str] = field(default=None, metadata=_flag(
        "JSON or YAML file of settings (keys are flag names); command-line flags override it", metavar="FILE"))


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# the first field of each group of --help and of docs/flags.md
SECTIONS = {"arch": "model", "optimizer": "optimisation", "dataset": "data", "precision": "speed",
            "save_dir": "run folder and output"}
# long aliases ("wd") -> field names, so config files may use every spelling of the command line
ALIASES = {a.lstrip("-").replace("-", "_"): f.name for f in FIELDS.values() for a in f.metadata["aliases"]
           if a.startswith("--")}
# Settings that say where or how to run; everything else defines the run and is fixed once it started,
# except that --epochs may extend it.
RUNTIME_SETTINGS = ("resume", "evaluate", "save_dir", "data_dir", "cache_dir", "workers", "device", "download",
                    "no_progress", "print_freq", "tensorboard", "overwrite", "config", "save_every",
                    "checkpoint_minutes", "epochs")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The command line for `Config`; only flags that were given appear in the parsed namespace."""
    parser = OneLineParser(prog=prog, argument_default=argparse.SUPPRESS,
                           description="Train a CIFAR ResNet, optionally only its BatchNorm parameters.")
    group = parser
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            group = parser.add_argument_group(SECTIONS[f.name])
        meta = {k: v for k, v in f.metadata.items() if k not in ("aliases", "help")}
        kwargs = {"help": help_text(f), **meta}
        if "action" not in kwargs and "type" not in kwargs:
            kwargs["type"] = {"int": int, "float": float}.get(_base_type(f), str)
        group.add_argument(*flag_names(f), dest=f.name, **kwargs)
    return parser


def flag_names(f) -> list:
    """A field's flags: its aliases, --dashed-name and, for names with an underscore, --underscored_name."""
    return [*f.metadata["aliases"], "--" + f.name.replace("_", "-")] + ([f"--{f.name}"] if "_" in f.name else [])


def help_text(f) -> str:
    """A field's help, as argparse formats it (%% stands for %), with its default."""
    return f.metadata["help"] + (f" (default: {f.default})" if f.default is not None else "")


def _base_type(f) -> str:
    text = str(f.type)
    return "float" if "float" in text else "int" if "int" in text else "str"


def read_config_file(path: str) -> dict:
    """Read a JSON or YAML settings file into {field name: value}."""
    try:
        with open(os.path.expanduser(path)) as fh:
            text = fh.read()
    except OSError as e:
        raise ConfigError(f"cannot read --config {path}: {e.strerror}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml
            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as e:
        raise ConfigError(f"--config {path} is not valid JSON/YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a mapping of flag names to values")
    return {setting_name(key): value for key, value in values.items()}


def setting_name(key) -> str:
    """The field name of a settings-file key written as a flag: "--use-lbfgs", "use_lbfgs", "wd"."""
    name = str(key).lstrip("-").replace("-", "_")
    return ALIASES.get(name, name)


def coerce(name: str, value):
    """Check and convert one value from a config file, as the command line would."""
    f = FIELDS.get(name)
    if f is None:
        raise ConfigError(f"unknown setting {name!r} in --config file; see train.py --help for the names")
    meta = f.metadata
    if value is None:
        if f.default is not None:
            raise ConfigError(f"{name} in --config file is empty; give a value or leave the key out")
        return None
    try:
        if "type" in meta:
            value = meta["type"](value)
        elif meta.get("action") in ("store_true", argparse.BooleanOptionalAction):
            value = str2bool(value)
        else:
            value = {"int": int, "float": float}.get(_base_type(f), str)(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        raise ConfigError(f"bad value for {name} in --config file: {e}") from None
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"bad value {value!r} for {name} in --config file; choose from {', '.join(meta['choices'])}")
    return value


def parse_args(argv=None) -> tuple:
    """Parse the command line (and --config file) into (Config, set of names given explicitly)."""
    given = vars(build_parser().parse_args(argv))
    values = {}
    if given.get("config"):
        values = {k: coerce(k, v) for k, v in read_config_file(given["config"]).items()}
    values.update(given)
    cfg = resolve(Config(**values), set(values))
    return cfg, set(values)


def resolve(cfg: Config, given: set) -> Config:
    """Fill the settings that depend on others, then validate; raises ConfigError."""
    if cfg.use_lbfgs is not None:
        wanted = "lbfgs" if cfg.use_lbfgs else "sgd"
        if "optimizer" in given and cfg.optimizer != wanted:
            raise ConfigError(f"--use-lbfgs {cfg.use_lbfgs} contradicts --optimizer {cfg.optimizer}; give one of them")
        cfg.optimizer = wanted
    cfg.use_lbfgs = cfg.optimizer == "lbfgs"
    if cfg.half:
        if "precision" in given and cfg.precision != "fp16":
            raise ConfigError(f"--half contradicts --precision {cfg.precision}; give one of them")
        cfg.precision = "fp16"
    cfg.half = cfg.precision == "fp16"
    audio_data = cfg.dataset in AUDIO_DATASETS
    defaults = AUDIO_DEFAULTS if audio_data else IMAGENET_DEFAULTS if cfg.dataset == "imagenet" else IMAGE_DEFAULTS
    for name, value in defaults.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    misplaced = [] if audio_data or not domain_known(cfg, given) else \
        [n for n in AUDIO_SETTINGS if n in given] + ["val_groups"] * bool(cfg.val_groups)
    if misplaced:
        raise ConfigError(f"--{misplaced[0].replace('_', '-')} is a setting of audio data (--dataset "
                          f"{' or '.join(AUDIO_DATASETS)}), not of {cfg.dataset}")
    cfg.lbfgs_variant = cfg.lbfgs_variant or DEFAULT_LBFGS_VARIANT
    if cfg.lr is None and cfg.dataset == "imagenet" and cfg.optimizer == "sgd":  # the recipe's linear scaling
        world_size = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; a resumed run keeps its saved lr
        cfg.lr = IMAGENET_RECIPE["lr_per_1024"] * cfg.batch_size * world_size / 1024
    if cfg.lr is None:
        cfg.lr = LBFGS_LR.get(cfg.lbfgs_variant, DEFAULT_LR["lbfgs"]) if cfg.optimizer == "lbfgs" \
            else default_lr(cfg.optimizer, cfg.ngd_power)
    for name, value in LBFGS_DEFAULTS[cfg.lbfgs_variant].items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    if cfg.bn_recalibrate is None:
        cfg.bn_recalibrate = 0 if cfg.dataset in STREAMED_DATASETS else DEFAULT_BN_RECALIBRATE.get(cfg.optimizer, 0)
    if cfg.phases:
        total = sum(phase[1] for phase in cfg.phases)
        if "trainable" in given and cfg.trainable != cfg.phases[0][0]:
            raise ConfigError("--phases sets what trains in each phase; drop -t/--trainable")
        if "epochs" in given and cfg.epochs != total:
            raise ConfigError(f"--epochs {cfg.epochs} contradicts --phases, whose epochs add up to {total}; "
                              f"drop --epochs")
        if "milestones" in given:
            raise ConfigError("--milestones cannot be combined with --phases: each phase's multistep schedule "
                              "drops at 50 % and 75 % of its own epochs")
        if cfg.optimizer == "lbfgs" and any(len(phase) > 2 for phase in cfg.phases):
            raise ConfigError("--optimizer lbfgs trains every phase (its batches and steps are the whole run's): "
                              "drop the phases' own optimizers, or use another --optimizer")
        cfg.epochs, cfg.trainable = total, cfg.phases[0][0]
    if cfg.dataset == "imagenet":  # after the phases: its warm-up and milestones follow the epochs
        imagenet_recipe(cfg)
    if cfg.milestones is None and cfg.schedule == "multistep" and not cfg.phases:
        cfg.milestones = default_milestones(cfg.epochs)
    cfg.image_size = 32 if cfg.image_size is None else cfg.image_size
    cfg.warmup_epochs = 0 if cfg.warmup_epochs is None else cfg.warmup_epochs
    validate(cfg, given)
    return cfg


def imagenet_recipe(cfg: Config) -> None:
    """--dataset imagenet's defaults where the flag is not given (nor saved, on --resume): warm-up over 5/90
    of the epochs (of the shortest phase with --phases; rounded, so none below 10), x0.1 at 1/3, 2/3 and
    8/9 of them (5 and 30, 60, 80 of 90), lr 0.4 per 1,024 images of global batch (-b times the processes
    under torchrun, from WORLD_SIZE), 224-pixel crops."""
    if cfg.warmup_epochs is None:
        shortest = min(phase[1] for phase in cfg.phases) if cfg.phases else cfg.epochs
        cfg.warmup_epochs = round(shortest * IMAGENET_RECIPE["warmup_fraction"])
    if cfg.image_size is None:
        cfg.image_size = IMAGENET_RECIPE["image_size"]
    if cfg.milestones is None and cfg.schedule == "multistep" and not cfg.phases:
        cfg.milestones = sorted({max(1, round(cfg.epochs * f)) for f in IMAGENET_RECIPE["milestone_fractions"]})


def to_dict(cfg: Config) -> dict:
    """Plain-data copy of the settings (for config.json and checkpoints)."""
    return dataclasses.asdict(cfg)


def fail(message: str, prog: str = "train.py", status: int = 2):
    """Print one line on stderr and exit; the way every expected error leaves the program."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(status)
