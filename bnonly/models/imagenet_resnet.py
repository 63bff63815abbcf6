"""ImageNet ResNets (He et al. 2016, table 1) with a width multiplier: the BN-only paper's ImageNet models.

`imagenet:resnetD`, D one of LAYERS' depths: a 7x7 stride-2 conv of 64K channels + BN + ReLU and a 3x3
stride-2 max-pool, four stages of BasicBlocks (D = 18, 34) or Bottlenecks (D >= 50) with 64K, 128K, 256K
and 512K channels (a Bottleneck outputs 4 times its channels; stride 2 entering stages 2 to 4, where a 1x1
conv + BN projects the shortcut), global average pooling and a linear layer. Depth = 2 x blocks + 2 with
BasicBlocks, 3 x blocks + 2 with Bottlenecks. ResNet-200, which torchvision lacks, is [3, 24, 36, 3]
Bottlenecks, as the paper's framework (OpenLTH) builds it.

At K = 1 every module name and shape is torchvision's resnetD's (D <= 152), so the parameter counts are
equal and torchvision's state dicts load (--init-from). The blocks are torchvision's. Init: conv weights
Kaiming-normal (fan_out, as torchvision's ResNets), the linear layer torch's default, then every BN's
gamma by `bn_init` (default U[0,1), the paper's) and beta 0.
"""

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from bnonly.models import ModelError
from bnonly.models.resnet import init_batchnorm

PREFIX = "imagenet:"
LAYERS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
          101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3)), 200: (Bottleneck, (3, 24, 36, 3))}
BASE_CHANNELS = 64  # of the stem and the first stage, times the width K


def make_stage(block, in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` blocks of `planes` channels (times block.expansion at their output); the first one
    strides and, where the shape changes, projects its shortcut with a 1x1 conv + BN."""
    out_planes = planes * block.expansion
    shortcut = None
    if stride != 1 or in_planes != out_planes:
        shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(out_planes))
    return nn.Sequential(block(in_planes, planes, stride, shortcut),
                         *(block(out_planes, planes) for _ in range(blocks - 1)))


class ImageNetResNet(nn.Module):
    """ResNet of `layers` blocks per stage of `block`, for (N, 3, H, W) images (224 x 224 on ImageNet;
    any H, W >= 32 run)."""

    def __init__(self, block, layers, num_classes: int = 1000, width: int = 1, bn_init: str = "uniform"):
        super().__init__()
        base = BASE_CHANNELS * width
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, in_planes = [], base
        for index, blocks in enumerate(layers):
            stages.append(make_stage(block, in_planes, base * 2 ** index, blocks, 1 if index == 0 else 2))
            in_planes = base * 2 ** index * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        init_batchnorm(self, bn_init)

    def forward(self, x):  # x: (N, 3, H, W) float, normalised
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64K, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512K x expansion, H/32, W/32)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (N, num_classes) logits


def build_imagenet_resnet(name: str, num_classes: int = 1000, width: int = 1,
                          bn_init: str = "uniform") -> ImageNetResNet:
    """The model 'resnetD' (without the prefix) for D in LAYERS, its channels times `width`."""
    depth = int(name[len("resnet"):]) if name.startswith("resnet") and name[len("resnet"):].isdigit() else 0
    if depth not in LAYERS:
        raise ModelError(f"unknown ImageNet ResNet {PREFIX}{name}: the depths are "
                         + ", ".join(f"{PREFIX}resnet{d}" for d in LAYERS))
    block, layers = LAYERS[depth]
    return ImageNetResNet(block, layers, num_classes, width, bn_init)
