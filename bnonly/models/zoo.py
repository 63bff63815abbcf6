"""torchvision's classification models by name (`-a torchvision:NAME`), randomly initialised.

Every model that `torchvision.models.list_models(module=torchvision.models)` lists builds with
`num_classes` outputs and weights=None: nothing is downloaded, and conv and linear weights keep
torchvision's own init for that family. BatchNorm does not: after construction every BN's gamma is drawn
by `bn_init` (default U[0,1), the paper's) and its beta set to 0, as in the CIFAR ResNets, so that a BN-only
run starts where the paper's do whatever the family. (torchvision sets gamma 1, and 0 in each residual
block's last BN with zero_init_residual=True; that flag stays at its default, False, and would be
overwritten anyway.) GoogLeNet and Inception v3 are built without their auxiliary classifiers
(aux_logits=False): those add training-time outputs that a loop expecting one logits tensor cannot use.

The sizes are torchvision's: no width multiplier. Some models need larger images than CIFAR's 32 pixels:
inception_v3 at least 75, and ViT and MaxViT exactly the 224 they are built for.
"""

import difflib

import torch.nn as nn
import torchvision

from bnonly.models import ModelError
from bnonly.models.resnet import init_batchnorm

PREFIX = "torchvision:"
# constructor arguments besides num_classes and weights (see the module docstring)
EXTRA_ARGUMENTS = {"googlenet": {"aux_logits": False, "init_weights": True},
                   "inception_v3": {"aux_logits": False, "init_weights": True}}


def model_names() -> list:
    """The classification models of torchvision.models, sorted (resnet18, vgg16_bn, vit_b_16, ...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_name(name: str) -> str:
    """`name` (without the prefix) if torchvision has that classification model; else a ModelError
    that suggests the closest names."""
    names = model_names()
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = ("did you mean " + ", ".join(PREFIX + n for n in close) + "?") if close else \
        "torchvision.models.list_models(module=torchvision.models) lists them"
    raise ModelError(f"torchvision has no classification model {name!r}; {hint}")


def build_torchvision(name: str, num_classes: int = 10, bn_init: str = "uniform") -> nn.Module:
    """torchvision's model `name` (e.g. 'resnet50', without the prefix) with `num_classes` outputs,
    random conv/linear weights from torchvision's init, BN gamma by `bn_init` and beta 0."""
    model = torchvision.models.get_model(check_name(name), weights=None, num_classes=num_classes,
                                         **EXTRA_ARGUMENTS.get(name, {}))
    init_batchnorm(model, bn_init)
    return model
