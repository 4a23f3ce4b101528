"""A torchvision-free ResNet-50 (He et al. 2016, the v1.5 layout: stride on the 3x3 conv), random weights.

Only for timing: the architecture (and so the cost of a forward+backward) is ResNet-50's; the
weights are seeded random numbers, so the predictions are meaningless.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4), plus a projected or identity shortcut."""

    def __init__(self, cin: int, mid: int, stride: int):
        super().__init__()
        cout = 4 * mid
        self.a = _conv_bn(cin, mid, 1)
        self.b = _conv_bn(mid, mid, 3, stride)
        self.c = _conv_bn(mid, cout, 1)
        self.short = _conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act(self.a(x))
        y = self.act(self.b(y))
        return self.act(self.c(y) + self.short(x))


class ResNet50(nn.Module):
    STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, first stride)

    def __init__(self, n_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for width, blocks, stride in self.STAGES:
            for i in range(blocks):
                layers.append(Block(cin, width, stride if i == 0 else 1))
                cin = 4 * width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet50(seed: int = 0) -> ResNet50:
    """ResNet-50 with seeded He-normal weights (BN at identity statistics), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    m = ResNet50()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                fan_out = mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan_out) ** 0.5)
            elif isinstance(mod, nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.01)
                mod.bias.zero_()
    return m.eval()


if __name__ == "__main__":  # parameter count check: torchvision's resnet50 has 25,557,032
    print(sum(p.numel() for p in resnet50().parameters()))
