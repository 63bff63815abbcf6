"""Parameter counts of the CIFAR ResNets and their 1-D analogues: total, BN gamma/beta, BN + fc and the
random control's, as in Frankle et al.'s tables (the models are in bnonly/models/resnet.py).

    python resnet.py                 # He et al.'s depths and the 1-D audio models
    python resnet.py 14 resnet866    # any depth 6n+2
"""

import sys

import torch

from bnonly.models.resnet import (AUDIO_ARCHS, AUDIO_CHANNELS, DEPTHS, build_model, count_parameters, depth_of,
                                  freeze, is_1d)


def parameter_table(archs=tuple(DEPTHS) + AUDIO_ARCHS) -> str:
    """One row per model: total, BN gamma/beta, BN + fc and random-mode parameter counts (10 classes; the
    1-D models for AUDIO_CHANNELS mel bands and width 2, the audio default)."""
    lines = [f"{'arch':<14} {'depth':>5} {'total':>12} {'bn':>8} {'bn+fc':>8} {'random':>8}"]
    with torch.device("meta"):  # shapes only: no memory, no init cost
        for arch in archs:
            depth = depth_of(arch)
            model = build_model(arch, in_channels=AUDIO_CHANNELS, width=2) if is_1d(arch) else build_model(arch)
            freeze(model, "random")
            lines.append(f"{arch + (' x2' if is_1d(arch) else ''):<14} {depth:>5} {count_parameters(model):>12,} "
                         f"{count_parameters(model, 'bn'):>8,} {count_parameters(model, 'bn+fc'):>8,} "
                         f"{count_parameters(model, 'random'):>8,}")
    return "\n".join(lines)


def main(argv) -> int:
    """python resnet.py [DEPTH, resnetD or resnet1dD ...]: the table for those models (default: He et al.'s
    depths and the 1-D audio models)."""
    if {"-h", "--help"} & set(argv):
        print("usage: python resnet.py [DEPTH | 1dDEPTH | resnetD | resnet1dD ...]\n\nparameter counts (total, "
              "BN, BN+fc, the random control's) of CIFAR ResNets of depth D = 6n + 2 (1-D ones at width 2 over "
              f"{AUDIO_CHANNELS} mel bands); with no argument, He et al.'s depths and the 1-D audio models")
        return 0
    archs = [a if a.startswith("resnet") else f"resnet{a}" for a in argv]
    try:
        for arch in archs:
            depth_of(arch)
    except ValueError as e:
        print(f"resnet.py: error: {e}", file=sys.stderr)
        return 2
    print(parameter_table(archs) if archs else parameter_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
