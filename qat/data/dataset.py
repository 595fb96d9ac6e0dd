"""An in-memory image data set: one uint8 tensor ``[N, C, H, W]`` and one int64 label tensor ``[N]``.

``__getitems__`` makes the standard ``DataLoader`` fetch a whole batch with one tensor index
(PyTorch calls it instead of ``__getitem__`` per sample when the data set defines it); the batch is
already a ``(images, labels)`` pair, so the loader uses :func:`passthrough_collate`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N] with N={images.shape[0]}, got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


def passthrough_collate(batch):
    """The batch from ``__getitems__`` is already collated."""
    return batch
