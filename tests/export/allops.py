"""A small custom CNN that uses every op the exporter covers for torchvision's CNNs, each in more than
one spelling where torch has several."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, gate=nn.Hardsigmoid, functional_pool: bool = False):
        super().__init__()
        self.functional_pool = functional_pool
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // 2, 1)
        self.fc2 = nn.Conv2d(c // 2, c, 1)
        self.act = nn.ReLU()  # a module: under bnn prepare swaps it (F.relu before a sign is refused)
        self.gate = gate()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True) if self.functional_pool else self.pool(x)
        s = self.gate(self.fc2(self.act(self.fc1(s))))
        return x * s


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.reshape(x.shape[0], -1, h, w)


class AllOps(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.ReLU6)
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.dw = conv_bn(16, 16, groups=16, act=nn.SiLU)
        self.grouped = conv_bn(16, 16, k=1, groups=2, act=nn.Hardswish)
        self.se = SqueezeExcite(16)
        self.branch = conv_bn(8, 8)
        self.se2 = SqueezeExcite(16, gate=nn.Sigmoid, functional_pool=True)
        self.avg = nn.AvgPool2d(2, ceil_mode=True)
        self.expand = conv_bn(16, 32, stride=1)
        self.drop_path = StochasticDepth(0.2, "row")
        self.skip = nn.Identity()
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(32 + 16, num_classes)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = x + self.drop_path(self.grouped(self.dw(x)))
        x = self.se(x)
        x = channel_shuffle(x, 2)
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, self.branch(b)), dim=1)
        x = self.se2(x)
        x = self.avg(x)
        y = self.expand(self.skip(x))
        y = F.adaptive_avg_pool2d(y, (1, 1)).flatten(1)
        z = x.mean([2, 3])
        return self.head(self.drop(torch.cat([y, z.view(z.size(0), -1)], 1)))
