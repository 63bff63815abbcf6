"""What the settings may be and their defaults where a flag is not given, and the error a bad one
raises: what config.py (the flags), phases.py and validation.py share. Imports nothing of the project."""

ARCHS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202")  # He et al.'s; any 6n+2 builds
AUDIO_ARCHS = ("resnet1d20", "resnet1d32", "resnet1d56")  # their 1-D analogues over time; any 6n+2 builds
IMAGENET_DEPTHS = (18, 34, 50, 101, 152, 200)  # imagenet:resnetD (LAYERS of bnonly/models/imagenet_resnet.py)
DATASETS = ("cifar10", "cifar100", "imagefolder", "imagenet", "synthetic", "audiofolder", "synthetic-audio")
AUDIO_DATASETS = ("audiofolder", "synthetic-audio")
FOLDER_DATASETS = ("imagefolder", "imagenet", "audiofolder")  # read from DATA_DIR/train/<class>/
# audio data's defaults where the flag is not given (docs/results.md: speech)
IMAGE_DEFAULTS = {"arch": "resnet32", "width": 1, "epochs": 160, "batch_size": 128}
AUDIO_DEFAULTS = {"arch": "resnet1d32", "width": 2, "epochs": 30, "batch_size": 64}
# --dataset imagenet: the paper's framework's ImageNet recipe (OpenLTH; docs/usage.md says where this departs)
IMAGENET_DEFAULTS = {"arch": "torchvision:resnet50", "width": 1, "epochs": 90, "batch_size": 256}
IMAGENET_RECIPE = {"warmup_fraction": 5 / 90, "image_size": 224, "lr_per_1024": 0.4,  # lr for a global batch of 1024
                   "milestone_fractions": (30 / 90, 60 / 90, 80 / 90)}  # x0.1 at epochs 30, 60 and 80 of 90
STREAMED_DATASETS = ("imagenet",)  # never held in memory: no --bn-adapt, --bn-recalibrate over the whole split
AUDIO_SETTINGS = ("sample_rate", "clip_seconds", "n_mels", "frame_ms", "hop_ms", "top_db", "time_shift_ms",
                  "time_mask", "freq_mask", "freq_warp", "group_regex")
FSDD_GROUP_REGEX = r"^[^_]*_([^_]*)_"  # {digit}_{speaker}_{index}.wav: the speaker
TRAINABLE = ("all", "bn", "bn+fc", "fc", "none", "random")
PHASE_MODES = ("all", "bn", "bn+fc", "fc", "none")  # random draws its entries once, so it cannot be a later phase
BN_INITS = ("uniform", "ones", "normal", "signed")
OPTIMIZERS = ("sgd", "lbfgs", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam", "ngd")
PHASE_OPTIMIZERS = tuple(o for o in OPTIMIZERS if o != "lbfgs")  # L-BFGS's batches and steps are the whole run's
ADAM_FAMILY = ("adam", "adamw", "nadam", "radam")  # the optimizers that take --betas
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
# used when --lr is not given: the classic CIFAR ResNet value for SGD, torch.optim's defaults otherwise, and
# for ngd its best on issue 29's screen (docs/results.md): 1.6 at its default --ngd-power 0.5
DEFAULT_LR = {"sgd": 0.1, "lbfgs": 1.0, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-2, "adagrad": 1e-2,
              "nadam": 2e-3, "radam": 1e-3, "ngd": 1.6}
# ngd's default lr at other powers: the natural gradient (power 1) did best at 0.4 and fell apart at 1.6
NGD_POWER_LR = {1.0: 0.4}
LBFGS_VARIANTS = ("torch", "batch", "multibatch", "hvp")
DEFAULT_LBFGS_VARIANT = "multibatch"  # what --use-lbfgs True runs (docs/results.md: L-BFGS variants)
# each variant's settings where the flag is not given; torch's are those of the runs before the variants
# (torch's LBFGS has no damping: the setting stays None there)
LBFGS_DEFAULTS = {
    "torch": {"lbfgs_batch_size": 512, "lbfgs_max_iter": 5, "lbfgs_history": 10, "lbfgs_line_search": "strong_wolfe",
              "lbfgs_variance_scaling": False},
    "batch": {"lbfgs_batch_size": 128, "lbfgs_max_iter": 2, "lbfgs_history": 7, "lbfgs_line_search": "armijo",
              "lbfgs_variance_scaling": True, "lbfgs_damping": 1e-6},
    "multibatch": {"lbfgs_batch_size": 256, "lbfgs_max_iter": 1, "lbfgs_history": 10, "lbfgs_line_search": "none",
                   "lbfgs_variance_scaling": False, "lbfgs_damping": 0.05},
    "hvp": {"lbfgs_batch_size": 256, "lbfgs_max_iter": 1, "lbfgs_history": 10, "lbfgs_line_search": "none",
            "lbfgs_variance_scaling": False, "lbfgs_damping": 1e-6},
}

# the multibatch variant's fixed step: of 0.3, 1 and 2, 2 did best in the sweep of docs/results.md (L-BFGS variants)
LBFGS_LR = {"multibatch": 2.0}

DEFAULT_BN_RECALIBRATE = {"lbfgs": 4096}  # images; used when --bn-recalibrate is not given (0 if not listed)


def default_lr(optimizer: str, ngd_power: float = None) -> float:
    """The lr an optimizer takes when none is given (not L-BFGS's variants: LBFGS_LR)."""
    if optimizer == "ngd" and ngd_power in NGD_POWER_LR:
        return NGD_POWER_LR[ngd_power]
    return DEFAULT_LR[optimizer]


class ConfigError(ValueError):
    """A bad setting; its message is one line that names the problem and the fix."""
