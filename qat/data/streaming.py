"""Streaming image files: decode per batch in the DataLoader workers, for data sets larger than memory.

A :class:`ImageFileDataset` holds only file paths and labels. The loader's sampler
(:class:`EpochSampler`) yields ``(index, epoch)`` pairs; ``__getitems__`` receives a whole batch of
them in a worker, reads the files, decodes the JPEGs of the batch with one
``torchvision.io.decode_jpeg`` call (other formats with ``decode_image``, anything else with PIL, as
:mod:`qat.data.decode` does) and applies ``torchvision.transforms.v2`` on uint8 tensors:

* training: ``RandomResizedCrop(size, scale)`` + ``RandomHorizontalFlip`` (Szegedy et al. 2015's
  Inception crop, the standard ImageNet recipe);
* evaluation: ``Resize(size / crop_fraction)`` (shorter side) + ``CenterCrop(size)``.

The batch leaves the worker as ``(uint8 [N, C, H, W], int64 [N])``; conversion to float and
normalisation run on the training device (the data module's :class:`~qat.data.augment.BatchPreprocess`).

Randomness: the crop and flip of sample ``i`` in epoch ``e`` are drawn from a generator seeded with
``(seed, e, i)``, not from the worker's RNG, so they do not depend on the number of workers or on
which worker gets the batch, and a run resumed at an epoch boundary draws exactly what the
uninterrupted run drew (the sampler's permutation is seeded by ``(seed, e)`` as well).

:class:`EpochSampler` is a ``DistributedSampler``: under DDP each rank gets its share of every epoch
(Lightning calls ``set_epoch`` and, seeing a ``DistributedSampler``, does not replace it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import v2

from qat.data.decode import _JPEG_MAGIC, _pil_decode, _read_bytes


def _mix(*values: int) -> int:
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h % (2**63 - 1)


def decode_batch(paths: Sequence[Path], channels: int) -> list[torch.Tensor]:
    """Decode files to uint8 ``[channels, H, W]`` each (``channels`` 1: grayscale, 3: RGB); the JPEGs
    of the batch in one ``decode_jpeg`` call. A bad file raises :class:`ImageDecodeError` naming it."""
    return decode_bytes([_read_bytes(p) for p in paths], paths, channels)


def decode_bytes(datas: Sequence[torch.Tensor], names: Sequence, channels: int) -> list[torch.Tensor]:
    """:func:`decode_batch` of encoded images already in memory (uint8 tensors; ``names`` for errors)."""
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    out: list[torch.Tensor | None] = [None] * len(datas)
    jpeg = [i for i, d in enumerate(datas) if d[:3].numpy().tobytes() == _JPEG_MAGIC]
    if jpeg:
        try:
            for i, img in zip(jpeg, decode_jpeg([datas[i] for i in jpeg], mode=mode)):
                out[i] = img
        except Exception:  # noqa: BLE001 - some file is bad: decode one by one below to name it
            pass
    for i, img in enumerate(out):
        if img is not None:
            continue
        try:
            img = decode_image(datas[i], mode=mode)
            img = img[0] if img.dim() == 4 else img
            if img.dtype != torch.uint8:
                raise TypeError(f"decoded as {img.dtype}")
        except Exception:  # noqa: BLE001 - formats torchvision cannot read: PIL names the file if it fails too
            img = _pil_decode(datas[i], names[i])
            if img.shape[0] != channels:
                img = img.expand(3, -1, -1).contiguous() if channels == 3 else \
                    v2.functional.rgb_to_grayscale(img, num_output_channels=1)
        out[i] = img
    return out  # type: ignore[return-value]


def train_transform(size: tuple[int, int], scale: Sequence[float] = (0.08, 1.0), flip: bool = True) -> v2.Transform:
    ops: list[v2.Transform] = [v2.RandomResizedCrop(list(size), scale=tuple(scale), antialias=True)]
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops)


def eval_transform(size: tuple[int, int], crop_fraction: float = 0.875) -> v2.Transform:
    resize = [round(s / crop_fraction) for s in size]
    return v2.Compose([v2.Resize(min(resize), antialias=True), v2.CenterCrop(list(size))])


def seeded_transform(transform: v2.Transform, img: torch.Tensor, train: bool, seed: int, epoch: int,
                     index: int) -> torch.Tensor:
    """``transform(img)``; for training with its random draws seeded by ``(seed, epoch, index)``."""
    if not train:
        return transform(img)
    # fork: the worker's (or, with num_workers=0, the main process's) RNG is left untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(seed, epoch, index))
        return transform(img)


def make_transform(size: tuple[int, int], train: bool, crop_scale: Sequence[float] = (0.08, 1.0), flip: bool = True,
                   crop_fraction: float = 0.875) -> v2.Transform:
    """The training or the evaluation transform, its options checked."""
    if not 0.0 < float(crop_fraction) <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    lo, hi = (float(v) for v in crop_scale)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {list(crop_scale)}")
    return train_transform(size, (lo, hi), flip) if train else eval_transform(size, crop_fraction)


class ImageFileDataset(Dataset):
    """``files[i]`` with label ``labels[i]``, decoded and transformed on access (see the module docstring).

    ``train``: random crop/flip seeded by ``(seed, epoch, index)``; otherwise the deterministic
    evaluation transform. Indexing takes an int (epoch 0) or an ``(index, epoch)`` pair.
    """

    def __init__(self, files: Sequence[str | os.PathLike], labels: Sequence[int], size: tuple[int, int],
                 channels: int, train: bool, seed: int = 0, crop_scale: Sequence[float] = (0.08, 1.0),
                 flip: bool = True, crop_fraction: float = 0.875):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        # One numpy string array, not a list of Python objects: each worker's copy stays shared memory
        # (reading a Python object writes its reference count, which copies the page; pytorch#13246).
        self.files = np.array([str(f) for f in files])
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.size, self.channels, self.train, self.seed = tuple(size), int(channels), bool(train), int(seed)
        self.transform = make_transform(self.size, self.train, crop_scale, flip, crop_fraction)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([item])
        return x[0], y[0]

    def __getitems__(self, items: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [(int(it[0]), int(it[1])) if isinstance(it, (tuple, list)) else (int(it), 0) for it in items]
        idx = [i for i, _ in pairs]
        images = decode_batch([Path(str(self.files[i])) for i in idx], self.channels)
        out = torch.empty((len(idx), self.channels, *self.size), dtype=torch.uint8)
        for k, ((i, epoch), img) in enumerate(zip(pairs, images)):
            out[k] = seeded_transform(self.transform, img, self.train, self.seed, epoch, i)
        return out, self.labels[torch.tensor(idx, dtype=torch.long)]


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` yielding ``(index, epoch)``: rank ``rank`` of ``num_replicas`` gets every
    ``num_replicas``-th index of the epoch's permutation (seeded by ``seed + epoch``; the index order
    without ``shuffle``); without ``drop_last`` the last ranks repeat a few indices so all get the same
    count (as ``DistributedSampler``)."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = int(self.epoch)
        return ((int(i), epoch) for i in super().__iter__())
