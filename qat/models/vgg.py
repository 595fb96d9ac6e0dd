"""The BinaryNet CIFAR-10 ConvNet of Courbariaux, Hubara et al. 2016 ("Binarized Neural Networks"):
2x128C3 - MP2 - 2x256C3 - MP2 - 2x512C3 - MP2 - 2x1024FC - classifier.

``width`` multiplies every hidden size (1.0 is the paper's network, 14 M parameters; the default 0.25
fits a CPU budget). Pooling comes before BatchNorm, as in the paper, so that a binary network's
BN + sign can later fold into one integer threshold.
"""

from __future__ import annotations

from torch import nn


def _size(x) -> tuple[int, int]:
    if x is None:
        return (32, 32)
    if isinstance(x, int):
        return (x, x)
    return (int(x[0]), int(x[1]))


class VGGSmall(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, image_size=(32, 32), width: float = 0.25):
        super().__init__()
        if width <= 0:
            raise ValueError(f"vgg_small width multiplier must be > 0, got {width}")
        h, w = _size(image_size)
        if h % 8 or w % 8:
            raise ValueError(f"vgg_small pools three times by 2: image size must be a multiple of 8, got {h}x{w}"
                             " (set data.image_size)")
        c = [max(1, round(k * width)) for k in (128, 256, 512, 1024)]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, ch in enumerate((c[0], c[0], c[1], c[1], c[2], c[2])):
            layers.append(nn.Conv2d(prev, ch, 3, padding=1, bias=False))
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
            prev = ch
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        feat = prev * (h // 8) * (w // 8)
        self.classifier = nn.Sequential(
            nn.Linear(feat, c[3], bias=False), nn.BatchNorm1d(c[3]), nn.ReLU(inplace=True),
            nn.Linear(c[3], c[3], bias=False), nn.BatchNorm1d(c[3]), nn.ReLU(inplace=True),
            nn.Linear(c[3], num_classes),
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def vgg_small(num_classes: int, in_channels: int = 3, image_size=(32, 32), width: float = 0.25) -> VGGSmall:
    return VGGSmall(num_classes, in_channels, image_size, width)
