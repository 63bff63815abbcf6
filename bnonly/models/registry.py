"""Every model family by name: the one place where `-a`'s value becomes a model.

    resnetD, resnet1dD     CIFAR ResNets of depth 6n + 2 and their 1-D analogues over time (resnet.py)
    imagenet:resnetD       ImageNet ResNets, D = 18, 34, 50, 101, 152, 200, channels x width (imagenet_resnet.py)
    torchvision:NAME       any classification model of torchvision.models, random init (zoo.py)

The two torchvision-based families are imported only when named: importing torchvision costs about 1.6 s
of start-up that a CIFAR run does not need.
"""

import torch.nn as nn

from bnonly.models import ModelError, resnet

FAMILIES = ("imagenet", "torchvision")  # the prefixes before ':'


def split_name(arch: str) -> tuple:
    """('torchvision', 'resnet50') for 'torchvision:resnet50', ('', 'resnet32') for a CIFAR name."""
    family, _, name = str(arch).rpartition(":")
    if family and family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r} in {arch!r}: use resnetD, resnet1dD, imagenet:resnetD "
                         f"or torchvision:NAME")
    return family, name


def build_model(arch: str, num_classes: int = 10, width: int = 1, bn_init: str = "uniform",
                in_channels: int = 3) -> nn.Module:
    """The model named `arch` with `num_classes` outputs for inputs of `in_channels` channels (mel bands
    for the 1-D ResNets; 3 for every image model); `width` multiplies the channels of the ResNets of
    this project, torchvision's models have their own sizes (width must be 1)."""
    family, name = split_name(arch)
    if family and in_channels != 3:
        raise ModelError(f"{arch} is a model of RGB images (3 input channels), not of {in_channels}-channel input")
    if family == "imagenet":
        from bnonly.models.imagenet_resnet import build_imagenet_resnet
        return build_imagenet_resnet(name, num_classes, width, bn_init)
    if family == "torchvision":
        if width != 1:
            raise ModelError(f"{arch} has torchvision's own sizes: a width multiplier ({width}) does not apply")
        from bnonly.models.zoo import build_torchvision
        return build_torchvision(name, num_classes, bn_init)
    return resnet.build_model(arch, num_classes, width, bn_init, in_channels)

