"""Freezing by module type, shared by every model family: which parameters a trainable mode trains.

`freeze(model, mode, seed)` (one of TRAINABLE_MODES) leaves trainable only the parameters of "all", "bn"
(the gamma/beta of every BatchNorm, 1-D, 2-D, 3-D or synchronised), "bn+fc", "fc" (the final classifier:
the model's last nn.Linear in module order, since VGG, MobileNet or ViT hold several) or "none". "random"
is the paper's control: it trains 2 randomly chosen conv weights per conv output channel (as many as BN
has gamma/beta where every conv is followed by a BN of as many channels, as in the ResNets) and freezes
everything else, BN and the classifier included.
"""

from typing import Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

TRAINABLE_MODES = ("all", "bn", "bn+fc", "fc", "none", "random")
RANDOM_PER_CHANNEL = 2  # conv weights trained per output channel in mode "random": as many as BN's gamma and beta


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


def final_linear(model: nn.Module) -> Optional[nn.Linear]:
    """The model's classifier, the layer that modes "fc" and "bn+fc" train: its last nn.Linear in module
    order (VGG's classifier.6, MobileNet's classifier.3, ViT's heads.head); None where it has none."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def trains(module: nn.Module, mode: str, classifier: Optional[nn.Module]) -> bool:
    """Whether `mode` trains `module`'s own parameters (not those of its children); `classifier` is the
    model's final_linear."""
    if isinstance(module, ChosenEntries):
        return mode == "random"  # `values` copy entries of a conv weight, which "all" already counts
    if mode == "all":
        return True
    if is_batchnorm(module):
        return mode in ("bn", "bn+fc")
    if module is classifier:
        return mode in ("fc", "bn+fc")
    return False


def select_parameters(model: nn.Module, mode: str) -> list:
    """The parameters that `mode` trains, chosen by module type, in model order.

    Mode "random" needs the conv entries chosen first (`freeze(model, "random", seed)` does it).
    """
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"unknown trainable mode: {mode}")
    classifier = final_linear(model)
    chosen = [p for module in model.modules() if trains(module, mode, classifier)
              for p in module.parameters(recurse=False)]
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


def untrainable(model: nn.Module, mode: str) -> str:
    """Why `mode` would train nothing of what it names in `model` ("" when it would): "bn" and "bn+fc" need
    a BatchNorm with gamma/beta, "fc" and "bn+fc" a final nn.Linear, "random" a conv."""
    if mode in ("bn", "bn+fc") and not any(is_batchnorm(m) and m.affine for m in model.modules()):
        return "has no BatchNorm layer with gamma/beta"
    if mode in ("fc", "bn+fc") and final_linear(model) is None:
        return "has no nn.Linear classifier"
    if mode == "random" and not any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules()):
        return "has no Conv1d or Conv2d layer to choose weights from"
    return ""
