"""CIFAR ResNets (He et al. 2016, section 4.2) with the option-A shortcut, and parameter freezing.

Depth = 6n + 2: a 3x3 conv (16 channels) + BN + ReLU, three stages of n BasicBlocks with 16, 32 and 64
channels (times `width`; stride 2 entering stages 2 and 3), global average pooling and a linear layer.
The downsampling shortcut has no parameters: it subsamples with stride 2 and zero-pads the channels.
Conv and linear weights get Kaiming-normal init; BatchNorm gamma is U[0,1) ("uniform", as in Frankle
et al. 2020) or 1 ("ones"), beta is 0.

Run `python resnet.py` for the parameter counts of every depth.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110, "resnet1202": 1202}
TRAINABLE_MODES = ("all", "bn", "bn+fc", "fc", "none")


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every second pixel, zero-pad channels on both sides."""

    def __init__(self, pad_channels: int):
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_channels, self.pad_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut((planes - in_planes) // 2)

    def forward(self, x):  # in-place ReLU and sum: fewer passes over memory (neither input is needed backward)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out, inplace=True)


class ResNet(nn.Module):
    """CIFAR ResNet with `blocks_per_stage` BasicBlocks in each of its three stages."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, width: int = 1, bn_init: str = "uniform"):
        super().__init__()
        channels = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        in_planes = channels[0]
        stages = []
        for index, planes in enumerate(channels):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(channels[2], num_classes)
        init_weights(self, bn_init)

    def forward(self, x):  # x: (N, 3, H, W) float, normalised
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)  # (N, num_classes) logits


def init_weights(model: nn.Module, bn_init: str = "uniform") -> None:
    """Kaiming-normal conv/linear weights; BN gamma U[0,1) or 1, beta 0."""
    if bn_init not in ("uniform", "ones"):
        raise ValueError(f"unknown bn_init: {bn_init}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if bn_init == "uniform":
                nn.init.uniform_(m.weight, 0.0, 1.0)
            else:
                nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


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


CONSTRUCTORS = {f.__name__: f for f in (resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202)}


def build_model(arch: str, num_classes: int = 10, width: int = 1, bn_init: str = "uniform") -> ResNet:
    """The ResNet named `arch` (one of DEPTHS)."""
    if arch not in CONSTRUCTORS:
        raise ValueError(f"unknown arch: {arch}")
    return CONSTRUCTORS[arch](num_classes, width, bn_init)


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def select_parameters(model: nn.Module, mode: str) -> list:
    """The parameters that `mode` trains, chosen by module type, in model order."""
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"unknown trainable mode: {mode}")
    chosen = []
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if mode == "all":
            chosen += own
        elif is_batchnorm(module) and mode in ("bn", "bn+fc"):
            chosen += own
        elif isinstance(module, nn.Linear) and mode in ("fc", "bn+fc"):
            chosen += own
    return chosen


def freeze(model: nn.Module, mode: str) -> list:
    """Set requires_grad so that only `mode`'s parameters train; returns them.

    BatchNorm running statistics are buffers, not parameters: they keep updating in train mode.
    """
    chosen = {id(p) for p in select_parameters(model, mode)}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module, mode: str = "all") -> int:
    return sum(p.numel() for p in select_parameters(model, mode))


def parameter_table() -> str:
    """One row per depth: total, BN gamma/beta, BN + fc parameter counts (CIFAR-10 head)."""
    lines = [f"{'arch':<11} {'depth':>5} {'total':>12} {'bn':>8} {'bn+fc':>8}"]
    with torch.device("meta"):  # shapes only: no memory, no init cost
        for arch, depth in DEPTHS.items():
            model = build_model(arch)
            lines.append(f"{arch:<11} {depth:>5} {count_parameters(model):>12,} "
                         f"{count_parameters(model, 'bn'):>8,} {count_parameters(model, 'bn+fc'):>8,}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(parameter_table())
