"""CIFAR ResNets (He et al. 2016, section 4.2) with the option-A shortcut, and parameter freezing.

Depth = 6n + 2: a 3x3 conv (16 channels) + BN + ReLU, three stages of n BasicBlocks with 16, 32 and 64
channels (times `width`; stride 2 entering stages 2 and 3), global average pooling and a linear layer.
The downsampling shortcut has no parameters: it subsamples with stride 2 and zero-pads the channels.
`resnet1dD` is the same network over time (Conv1d, BatchNorm1d, stride 2 halving the time steps) for
(N, mel bands, frames) audio features. Conv and linear weights get Kaiming-normal init. BatchNorm gamma
(`bn_init`, one of BN_INITS) is U[0,1) ("uniform", as in Frankle et al. 2020), 1 ("ones"), N(0,1) ("normal") or U[-1,1) ("signed");
beta is always 0.

Freezing (`freeze(model, mode, seed)`, one of TRAINABLE_MODES) leaves trainable only the parameters of
"all", "bn" (BN gamma/beta), "bn+fc", "fc" or "none". "random" is the paper's control: it trains as many
randomly chosen conv weights as BN has gamma/beta, 2 per conv output channel (every conv is followed by
a BN of as many channels), and freezes everything else, BN and the linear layer included.

Run `python resnet.py` for the parameter counts of the classic depths, `python resnet.py 14 218 866` for
any others.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from bnonly.config import arch_depth

AUDIO_ARCHS = ("resnet1d20", "resnet1d32", "resnet1d56")
DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110, "resnet1202": 1202}  # He et al.'s
PAPER_DEPTHS = (14, 32, 56, 110, 218, 434, 866)  # Frankle et al.'s BN-only depths
TRAINABLE_MODES = ("all", "bn", "bn+fc", "fc", "none", "random")
BN_INITS = ("uniform", "ones", "normal", "signed")
RANDOM_PER_CHANNEL = 2  # conv weights trained per output channel in mode "random": as many as BN's gamma and beta


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


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


class ChosenEntries(nn.Module):
    """Parametrization of a frozen weight in which only the entries at `index` train.

    `index` (long, (k,)) holds flat positions in the weight's logical NCHW order, whatever its memory
    format; `values` ((k,)) holds the trainable entries there. The weight it returns keeps the original's
    memory format, so a channels-last conv stays channels-last.
    """

    def __init__(self, weight: torch.Tensor, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index.to(weight.device))
        self.values = nn.Parameter(weight.detach().flatten()[self.index].clone())

    def forward(self, weight):
        # out-of-place index_put: a copy of the frozen weight (same strides), differentiable w.r.t. values
        return weight.index_put(unravel(self.index, weight.shape), self.values)


def unravel(flat: torch.Tensor, shape) -> tuple:
    """Flat row-major positions -> one index tensor per dimension (torch.unravel_index needs torch >= 2.2)."""
    coordinates = []
    for size in reversed(shape):
        coordinates.append(flat % size)
        flat = flat // size
    return tuple(reversed(coordinates))


def draw_positions(out_channels: int, fan_in: int, per_channel: int, generator: torch.Generator) -> torch.Tensor:
    """Flat NCHW positions of `per_channel` distinct weights in each output channel, sorted; (out * per,)."""
    if per_channel > fan_in:
        raise ValueError(f"cannot choose {per_channel} of {fan_in} weights per output channel")
    scores = torch.rand(out_channels, fan_in, generator=generator, device="cpu")  # CPU: same draw on any device
    columns = scores.topk(per_channel, dim=1).indices.sort(dim=1).values  # a uniform random subset per row
    return (torch.arange(out_channels, device="cpu").unsqueeze(1) * fan_in + columns).flatten()


def choose_conv_entries(model: nn.Module, per_channel: int = RANDOM_PER_CHANNEL, seed: int = 0) -> None:
    """Parametrize every conv weight so that only `per_channel` random entries per output channel train."""
    generator = torch.Generator().manual_seed(seed)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]  # listed first: registering adds modules
    for conv in convs:
        if parametrize.is_parametrized(conv, "weight"):
            raise ValueError("the conv weights already have chosen entries: build a fresh model")
        out_channels = conv.weight.shape[0]
        index = draw_positions(out_channels, conv.weight[0].numel(), per_channel, generator)
        parametrize.register_parametrization(conv, "weight", ChosenEntries(conv.weight, index))


def trains(module: nn.Module, mode: str) -> bool:
    """Whether `mode` trains `module`'s own parameters (not those of its children)."""
    if isinstance(module, ChosenEntries):
        return mode == "random"  # `values` copy entries of a conv weight, which "all" already counts
    if mode == "all":
        return True
    if is_batchnorm(module):
        return mode in ("bn", "bn+fc")
    if isinstance(module, nn.Linear):
        return mode in ("fc", "bn+fc")
    return False


def select_parameters(model: nn.Module, mode: str) -> list:
    """The parameters that `mode` trains, chosen by module type, in model order.

    Mode "random" needs the conv entries chosen first (`freeze(model, "random", seed)` does it).
    """
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"unknown trainable mode: {mode}")
    chosen = [p for module in model.modules() if trains(module, mode) for p in module.parameters(recurse=False)]
    if mode == "random" and not chosen:
        raise ValueError("mode random: call freeze(model, 'random', seed) first to choose the conv entries")
    return chosen


def freeze(model: nn.Module, mode: str, seed: int = 0) -> list:
    """Set requires_grad so that only `mode`'s parameters train; returns them.

    Mode "random" first parametrizes the conv weights (`choose_conv_entries`, positions drawn from `seed`;
    the other modes ignore it). The frozen entries then stay bit-identical whatever the optimizer does,
    weight decay and momentum included, since only `values` reach it.
    BatchNorm running statistics are buffers, not parameters: they keep updating in train mode.
    """
    if mode == "random":
        choose_conv_entries(model, RANDOM_PER_CHANNEL, seed)
    chosen = {id(p) for p in select_parameters(model, mode)}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module, mode: str = "all") -> int:
    """How many scalars `mode` trains ("all": the model's own size, chosen entries not counted twice)."""
    return sum(p.numel() for p in select_parameters(model, mode))
