"""Parameter counts of the models: total, BN gamma/beta, BN + fc and the random control's, as in Frankle
et al.'s tables. The CIFAR ResNets and their 1-D analogues are bnonly/models/resnet.py's; imagenet:resnetD
and torchvision:NAME (bnonly/models/registry.py) count with ImageNet's 1,000 classes.

    python resnet.py                 # He et al.'s depths and the 1-D audio models
    python resnet.py 14 resnet866    # any depth 6n+2
    python resnet.py torchvision:resnet50 imagenet:resnet200
"""

import sys

import torch

from bnonly.models.freezing import count_parameters, freeze, untrainable
from bnonly.models.registry import build_model
from bnonly.models.resnet import AUDIO_ARCHS, AUDIO_CHANNELS, DEPTHS, depth_of, is_1d

IMAGENET_CLASSES = 1000  # the classes of the imagenet: and torchvision: models' rows


def build(arch: str) -> torch.nn.Module:
    """The model of `arch`'s row, on the meta device (shapes only: no memory, no init cost) where its
    constructor allows: 1-D ones at width 2 over AUDIO_CHANNELS mel bands (the audio default), prefixed
    ones with 1,000 classes, CIFAR ones with 10."""
    if is_1d(arch):
        arguments = {"in_channels": AUDIO_CHANNELS, "width": 2}
    else:
        arguments = {"num_classes": IMAGENET_CLASSES} if ":" in arch else {}
    try:
        with torch.device("meta"):
            return build_model(arch, **arguments)
    except NotImplementedError:  # a constructor that reads tensor values (RegNet computes its widths): the CPU
        return build_model(arch, **arguments)


def depth_column(arch: str) -> str:
    """D of resnetD, resnet1dD and imagenet:resnetD; '-' for torchvision's models."""
    if arch.startswith("torchvision:"):
        return "-"
    return str(depth_of(arch)) if ":" not in arch else arch.rpartition("resnet")[2]


def random_column(model: torch.nn.Module) -> str:
    """Mode random's trainable count (2 per conv output channel); '-' for a model it cannot freeze."""
    if untrainable(model, "random"):
        return "-"
    try:
        freeze(model, "random")
    except ValueError:  # a conv with fewer than 2 weights per output channel
        return "-"
    return f"{count_parameters(model, 'random'):,}"


def parameter_table(archs=tuple(DEPTHS) + AUDIO_ARCHS) -> str:
    """One row per model: total, BN gamma/beta, BN + fc and random-mode parameter counts (10 classes; the
    1-D models for AUDIO_CHANNELS mel bands and width 2, the audio default; imagenet:resnetD and
    torchvision:NAME for 1,000 classes)."""
    width = max(14, *(len(arch) + 3 for arch in archs))
    lines = [f"{'arch':<{width}} {'depth':>5} {'total':>12} {'bn':>8} {'bn+fc':>9} {'random':>8}"]
    for arch in archs:
        model = build(arch)
        counts = [count_parameters(model), count_parameters(model, "bn"), count_parameters(model, "bn+fc")]
        lines.append(f"{arch + (' x2' if is_1d(arch) else ''):<{width}} {depth_column(arch):>5} "
                     f"{counts[0]:>12,} {counts[1]:>8,} {counts[2]:>9,} {random_column(model):>8}")
    return "\n".join(lines)


def main(argv) -> int:
    """python resnet.py [DEPTH, resnetD, resnet1dD, imagenet:resnetD or torchvision:NAME ...]: the table for
    those models (default: He et al.'s depths and the 1-D audio models)."""
    if {"-h", "--help"} & set(argv):
        print("usage: python resnet.py [DEPTH | 1dDEPTH | resnetD | resnet1dD ...] [imagenet:resnetD ...] "
              "[torchvision:NAME ...]\n\nparameter counts (total, BN, BN+fc, the random control's) of CIFAR ResNets of depth D = 6n + 2 "
              f"(1-D ones at width 2 over {AUDIO_CHANNELS} mel bands), of the ImageNet ResNets imagenet:resnetD "
              "(D = 18, 34, 50, 101, 152, 200) and of torchvision's classification models (those two with 1,000 "
              "classes); with no argument, He et al.'s depths and the 1-D audio models")
        return 0
    archs = [a if a.startswith("resnet") or ":" in a else f"resnet{a}" for a in argv]
    try:
        for arch in archs:
            if ":" not in arch:
                depth_of(arch)
        table = parameter_table(archs) if archs else parameter_table()
    except ValueError as e:  # ModelError included: an unknown torchvision or ImageNet model
        print(f"resnet.py: error: {e}", file=sys.stderr)
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
