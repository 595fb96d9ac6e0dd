"""Batch preprocessing on tensors: uint8 -> float, train-time augmentation, per-channel normalisation.

This is the one place where images are turned into network inputs. The data modules call it from
``on_after_batch_transfer`` (so it runs on the training device), and a plain-PyTorch loop or the
integer runtime reuses the very same object::

    pre = datamodule.preprocess                  # a BatchPreprocess
    x = pre(images_uint8, train=False)           # eval: float32, normalised, no randomness

Augmentation (only with ``train=True`` and ``augment=True``) is the standard CIFAR recipe, vectorised
over the batch with no per-image Python code: a random ``H x W`` crop of the image zero-padded by
``pad`` pixels on each side (zero = black, in uint8 pixel space, as torchvision's
``RandomCrop(padding=pad)`` does before ``Normalize``) and a random horizontal flip with probability
1/2. The random numbers (per-sample crop offsets and flip bits) are drawn on the CPU from the given
``torch.Generator`` — in that order: row offsets, column offsets, flip bits — and then moved to the
batch's device, so a seeded run augments identically on CPU and GPU.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

# Per-channel mean/std of the CIFAR-10 training set (pixel values in [0, 1]). The std is the plain
# per-pixel standard deviation over the whole training set (not the often-copied 0.2023/0.1994/0.2010,
# which is a mean of per-image stds).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


def random_crop_flip(x: torch.Tensor, pad: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with ``pad``-pixel zero padding and random horizontal flip of a batch ``[N, C, H, W]``.

    Any dtype; the output has the input's shape, dtype and device. One gather for the whole batch:
    output pixel ``(n, c, i, j)`` is padded pixel ``(n, c, oy[n] + i, ox[n] + j')`` with
    ``j' = W - 1 - j`` when sample ``n`` is flipped.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch [N, C, H, W], got shape {tuple(x.shape)}")
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n, _, h, w = x.shape
    if n == 0 or (pad == 0 and not flip):
        return x
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if pad > 0:
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gen_device)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gen_device)
    else:
        oy = ox = torch.zeros(n, dtype=torch.long, device=gen_device)
    dev = x.device
    oy, ox = oy.to(dev), ox.to(dev)
    ar_w = torch.arange(w, device=dev)
    cols = ar_w.expand(n, w)
    if flip:
        flipped = torch.randint(0, 2, (n,), generator=generator, device=gen_device).to(dev).bool()
        cols = torch.where(flipped[:, None], (w - 1) - ar_w, ar_w)
    rows = oy[:, None] + torch.arange(h, device=dev)           # [N, H]
    cols = ox[:, None] + cols                                   # [N, W]
    hp, wp = h + 2 * pad, w + 2 * pad
    # Linear index of each output pixel in its padded image, shared by all channels: one gather.
    lin = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, x.shape[1], h * w)
    xp = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    return torch.gather(xp.reshape(n, x.shape[1], hp * wp), 2, lin).view(x.shape)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (over all images and pixels, values scaled to [0, 1]) of a uint8
    ``[N, C, H, W]`` tensor, computed exactly from a 256-bin histogram per channel. A constant
    channel gets std 1/255 (so normalising never divides by zero)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"need a non-empty uint8 batch [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        p = hist / hist.sum()
        mean = float((p * values).sum())
        var = float((p * (values - mean).square()).sum())
        means.append(round(mean / 255.0, 6))
        stds.append(round(max(math.sqrt(var) / 255.0, 1.0 / 255.0), 6))
    return tuple(means), tuple(stds)


class BatchPreprocess:
    """``uint8 [N, C, H, W]`` -> normalised ``float32 [N, C, H, W]``, augmenting only when ``train``.

    ``x_out = (x / 255 - mean[c]) / std[c]``. Deterministic for ``train=False`` (or ``augment=False``).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], augment: bool = True,
                 pad: int = 4, flip: bool = True):
        mean = tuple(float(m) for m in mean)
        std = tuple(float(s) for s in std)
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean {mean} and std {std} must be non-empty and the same length")
        if not all(s > 0 and math.isfinite(s) for s in std):
            raise ValueError(f"std must be positive and finite, got {std}")
        if int(pad) < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.mean, self.std = mean, std
        self.augment, self.pad, self.flip = bool(augment), int(pad), bool(flip)
        self._consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _scale_shift(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._consts:
            std = torch.tensor(self.std, dtype=torch.float64)
            mean = torch.tensor(self.mean, dtype=torch.float64)
            scale = (1.0 / (255.0 * std)).to(torch.float32).view(1, -1, 1, 1).to(device)
            shift = (mean / std).to(torch.float32).view(1, -1, 1, 1).to(device)
            self._consts[device] = (scale, shift)
        return self._consts[device]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 ``(x/255 - mean)/std`` (no augmentation)."""
        self._check(x)
        scale, shift = self._scale_shift(x.device)
        return x.to(torch.float32).mul_(scale).sub_(shift)

    def __call__(self, x: torch.Tensor, train: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        self._check(x)
        if train and self.augment:
            x = random_crop_flip(x, self.pad, self.flip, generator)
        return self.normalize(x)

    def _check(self, x: torch.Tensor) -> None:
        if x.dtype != torch.uint8:
            raise TypeError(f"BatchPreprocess expects uint8 images, got {x.dtype}")
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected uint8 [N, {self.channels}, H, W], got shape {tuple(x.shape)}")

    def __repr__(self) -> str:
        return (f"BatchPreprocess(mean={self.mean}, std={self.std}, augment={self.augment}, "
                f"pad={self.pad}, flip={self.flip})")


def prepare_batch(x: torch.Tensor, train: bool, mean: Sequence[float], std: Sequence[float],
                  augment: bool = True, pad: int = 4, flip: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Functional form of :class:`BatchPreprocess` (builds the constants each call)."""
    return BatchPreprocess(mean, std, augment=augment, pad=pad, flip=flip)(x, train=train, generator=generator)
