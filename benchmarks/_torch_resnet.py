"""ResNet-18 in plain PyTorch, for benchmarks on a machine where torchvision does not import.

The layout and shapes are torchvision's ``resnet18``: a 7×7 stride-2 stem convolution (64 channels, no bias),
batch-norm, ReLU, a 3×3 stride-2 max-pool, four stages of two basic blocks (64, 128, 256, 512 channels; the
first block of stages 2–4 halves the resolution and projects its shortcut with a 1×1 stride-2 convolution and
a batch-norm), global average pooling and one linear layer. The attribute names match torchvision's
(``conv1``, ``bn1``, ``layer1`` … ``layer4``, ``downsample``, ``fc``) so that hooks placed on ``model.layer4``
or ``model.fc`` find the same modules. 11,689,512 parameters for 1000 classes, as torchvision's.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch-norm, added to the (projected when the shape changes) input."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu(h + skip)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths, c_in = (64, 128, 256, 512), 64
        for k, width in enumerate(widths, start=1):
            stride = 1 if k == 1 else 2
            setattr(self, f"layer{k}", nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width)))
            c_in = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(*, weights=None, num_classes: int = 1000) -> ResNet18:
    """torchvision's ``resnet18(weights=None, num_classes=...)`` signature; pretrained weights are not offered."""
    if weights is not None:
        raise ValueError("the hand-written ResNet-18 has no pretrained weights; pass weights=None")
    return ResNet18(num_classes=num_classes)
