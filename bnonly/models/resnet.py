"""CIFAR ResNets (He et al. 2016, section 4.2) with the option-A shortcut, and their BatchNorm init.

Depth = 6n + 2: a 3x3 conv (16 channels) + BN + ReLU, three stages of n BasicBlocks with 16, 32 and 64
channels (times `width`; stride 2 entering stages 2 and 3), global average pooling and a linear layer.
The downsampling shortcut has no parameters: it subsamples with stride 2 and zero-pads the channels.
`resnet1dD` is the same network over time (Conv1d, BatchNorm1d, stride 2 halving the time steps) for
(N, mel bands, frames) audio features. Conv and linear weights get Kaiming-normal init. BatchNorm gamma
(`bn_init`, one of BN_INITS) is U[0,1) ("uniform", as in Frankle et al. 2020), 1 ("ones"), N(0,1) ("normal") or U[-1,1) ("signed");
beta is always 0.

Freezing (`freeze(model, mode, seed)`, one of TRAINABLE_MODES) is bnonly/models/freezing.py's, shared by
every family and imported back here. In these ResNets mode "random" trains exactly as many conv weights
as BN has gamma/beta, since every conv is followed by a BN of as many channels.

Run `python resnet.py` for the parameter counts of the classic depths, `python resnet.py 14 218 866` for
any others.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnonly.config import arch_depth
# freezing moved to freezing.py; its names stay importable from here (from bnonly.models.resnet import freeze)
from bnonly.models.freezing import (  # noqa: F401
    RANDOM_PER_CHANNEL, TRAINABLE_MODES, ChosenEntries, choose_conv_entries, count_parameters, draw_positions, freeze,
    is_batchnorm, select_parameters, trains, unravel)

AUDIO_ARCHS = ("resnet1d20", "resnet1d32", "resnet1d56")
DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110, "resnet1202": 1202}  # He et al.'s
PAPER_DEPTHS = (14, 32, 56, 110, 218, 434, 866)  # Frankle et al.'s BN-only depths
BN_INITS = ("uniform", "ones", "normal", "signed")


CONV = {1: nn.Conv1d, 2: nn.Conv2d}  # by the number of spatial dimensions: time, or height and width
BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
AUDIO_CHANNELS = 40  # the 1-D models' input channels in `python resnet.py`'s table: train.py's default --n-mels


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every second pixel (or time step), zero-pad channels on both sides."""

    def __init__(self, pad_channels: int):
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x):  # (N, C, H, W) or (N, C, T)
        spatial = x.dim() - 2
        x = x[(slice(None), slice(None)) + (slice(None, None, 2),) * spatial]
        return F.pad(x, (0, 0) * spatial + (self.pad_channels, self.pad_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, dims: int = 2):
        super().__init__()
        self.conv1 = CONV[dims](in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BATCHNORM[dims](planes)
        self.conv2 = CONV[dims](planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = BATCHNORM[dims](planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut((planes - in_planes) // 2)

    def forward(self, x):  # in-place ReLU and sum: fewer passes over memory (neither input is needed backward)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out, inplace=True)


class ResNet(nn.Module):
    """CIFAR ResNet with `blocks_per_stage` BasicBlocks in each of its three stages; `dims` 1 makes its
    analogue over time for (N, in_channels, T) input such as log-mel features."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, width: int = 1, bn_init: str = "uniform",
                 in_channels: int = 3, dims: int = 2):
        super().__init__()
        channels = [16 * width, 32 * width, 64 * width]
        self.conv1 = CONV[dims](in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = BATCHNORM[dims](channels[0])
        in_planes = channels[0]
        stages = []
        for index, planes in enumerate(channels):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, dims))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(channels[2], num_classes)
        init_weights(self, bn_init)

    def forward(self, x):  # x: (N, 3, H, W) or (N, in_channels, T) float, normalised
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1) if out.dim() == 4 else out.mean(2)  # global average pooling
        return self.linear(out)  # (N, num_classes) logits


def init_weights(model: nn.Module, bn_init: str = "uniform") -> None:
    """Kaiming-normal conv/linear weights; BN gamma by `bn_init` (one of BN_INITS), beta 0."""
    if bn_init not in BN_INITS:
        raise ValueError(f"unknown bn_init: {bn_init}")
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif is_batchnorm(m):
            init_gamma(m.weight, bn_init)
            nn.init.zeros_(m.bias)


def init_batchnorm(model: nn.Module, bn_init: str = "uniform") -> None:
    """Every BatchNorm's gamma by `bn_init` (one of BN_INITS) and beta 0, whatever the model's own init did;
    a BatchNorm without affine parameters has none to set."""
    if bn_init not in BN_INITS:
        raise ValueError(f"unknown bn_init: {bn_init}")
    for m in model.modules():
        if is_batchnorm(m) and m.affine:
            init_gamma(m.weight, bn_init)
            nn.init.zeros_(m.bias)


def init_gamma(gamma: torch.Tensor, bn_init: str) -> None:
    """Fill BN gamma in place: U[0,1), 1, N(0,1) or U[-1,1)."""
    if bn_init == "uniform":
        nn.init.uniform_(gamma, 0.0, 1.0)
    elif bn_init == "ones":
        nn.init.ones_(gamma)
    elif bn_init == "normal":
        nn.init.normal_(gamma, 0.0, 1.0)
    elif bn_init == "signed":
        nn.init.uniform_(gamma, -1.0, 1.0)
    else:
        raise ValueError(f"unknown bn_init: {bn_init}")


def _constructor(depth: int):
    def build(num_classes: int = 10, width: int = 1, bn_init: str = "uniform") -> ResNet:
        return ResNet((depth - 2) // 6, num_classes, width, bn_init)
    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for 32x32 images: {(depth - 2) // 6} blocks per stage."
    return build


resnet20 = _constructor(20)
resnet32 = _constructor(32)
resnet44 = _constructor(44)
resnet56 = _constructor(56)
resnet110 = _constructor(110)
resnet1202 = _constructor(1202)


def depth_of(arch: str) -> int:
    """The depth D of the name 'resnetD' or 'resnet1dD'; D must be 6n + 2 with n >= 1 blocks per stage."""
    depth = arch_depth(arch)
    if not depth:
        raise ValueError(f"unknown arch {arch!r}: a CIFAR ResNet is resnetD (resnet1dD over time) with depth "
                         f"D = 6n + 2 (resnet8, resnet14, resnet20, ..., resnet866)")
    return depth


def is_1d(arch: str) -> bool:
    return arch.startswith("resnet1d")


def build_model(arch: str, num_classes: int = 10, width: int = 1, bn_init: str = "uniform",
                in_channels: int = 3) -> ResNet:
    """The ResNet named `arch`: 'resnetD' for any depth D = 6n + 2, 'resnet1dD' for its 1-D analogue."""
    return ResNet((depth_of(arch) - 2) // 6, num_classes, width, bn_init, in_channels, 1 if is_1d(arch) else 2)
