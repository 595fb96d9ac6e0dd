"""A small seeded synthetic image-classification set for tests and smoke runs (built in milliseconds).

Class ``k`` has a fixed random low-frequency prototype image (a coarse random grid, bilinearly
upsampled — smooth, so a few pixels of crop shift keep it recognisable); a sample is its class's
prototype plus independent Gaussian pixel noise (``noise``, in 0..255 pixel units), rounded and
clipped to uint8. Labels are balanced. A small model trained for a few epochs gets well above chance;
a model that ignores the input stays at ``1/num_classes``.

Unlike the file-backed modules, ``num_classes``, ``in_channels`` and ``image_size`` are arguments here:
they define the data. Normalisation: the per-channel mean/std of the training split.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from qat.data.base import InMemoryImageDataModule, LoadedData, _mix_seed, as_hw


def make_synthetic(num_classes: int, in_channels: int, image_size: tuple[int, int], sizes: Sequence[int],
                   seed: int = 0, noise: float = 48.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(uint8 [n, C, H, W], int64 [n]) for n in sizes]`` sharing the same class prototypes."""
    h, w = image_size
    g = torch.Generator().manual_seed(_mix_seed(seed, 7, 0))
    coarse = torch.rand(num_classes, in_channels, max(2, h // 4), max(2, w // 4), generator=g)
    protos = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * 192.0 + 32.0
    out = []
    for n in sizes:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        x = protos[labels] + noise * torch.randn(n, in_channels, h, w, generator=g)
        out.append((x.round().clamp(0, 255).to(torch.uint8), labels.to(torch.int64)))
    return out


class SyntheticDataModule(InMemoryImageDataModule):
    """Seeded prototype-plus-noise images (see the module docstring).

    num_classes / in_channels / image_size (int or [H, W]): the data's shape.
    n_train / n_val / n_test: split sizes (generated separately; no hold-out).
    noise: pixel noise std in 0..255 units (higher: harder).
    seed: generates the data, and seeds shuffle and augmentation as in every data module.
    Other arguments: see :class:`~qat.data.base.InMemoryImageDataModule`.
    """

    def __init__(self, num_classes: int = 4, in_channels: int = 3, image_size: int | Sequence[int] = 16,
                 n_train: int = 512, n_val: int = 128, n_test: int = 128, noise: float = 48.0, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 2 or int(in_channels) < 1:
            raise ValueError(f"need num_classes >= 2 and in_channels >= 1, got {num_classes}, {in_channels}")
        if min(int(n_train), int(n_val), int(n_test)) < 1:
            raise ValueError(f"split sizes must be >= 1, got {n_train}, {n_val}, {n_test}")
        self.n_classes = int(num_classes)
        self.n_channels = int(in_channels)
        self.hw = as_hw(image_size)
        self.n_train, self.n_val, self.n_test = int(n_train), int(n_val), int(n_test)
        self.noise = float(noise)

    # The data's shape is given: known before setup.
    @property
    def num_classes(self) -> int:
        return self.n_classes

    @property
    def in_channels(self) -> int:
        return self.n_channels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.hw

    @property
    def class_names(self) -> list[str]:
        return [f"class_{i}" for i in range(self.n_classes)]

    def _load_data(self, download: bool) -> LoadedData:
        (tx, ty), (vx, vy), (sx, sy) = make_synthetic(self.n_classes, self.n_channels, self.hw,
                                                      (self.n_train, self.n_val, self.n_test), self.seed, self.noise)
        return LoadedData(train_images=tx, train_labels=ty, test_images=sx, test_labels=sy,
                          class_names=self.class_names, val_images=vx, val_labels=vy,
                          info={"layout": "synthetic"})

    def _val_holdout_size(self, n_train: int) -> int:
        return 0
