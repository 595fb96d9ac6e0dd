"""A multilayer perceptron: flatten, then ``depth`` blocks of Linear - BatchNorm1d - ReLU."""

from __future__ import annotations

from torch import nn

from qat.models.vgg import _size


def mlp(num_classes: int, in_channels: int = 3, image_size=(32, 32), hidden: int = 256, depth: int = 2) -> nn.Sequential:
    if hidden < 1 or depth < 1:
        raise ValueError(f"mlp needs hidden >= 1 and depth >= 1, got hidden={hidden}, depth={depth}")
    h, w = _size(image_size)
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_channels * h * w
    for _ in range(depth):
        layers += [nn.Linear(prev, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        prev = hidden
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)
