"""Lightning checkpoint I/O that writes atomically and never unpickles arbitrary objects."""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning_fabric.utilities.cloud_io import _load as pl_load
from pytorch_lightning.plugins.io import TorchCheckpointIO

from qat.utils.io import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """``save_checkpoint`` serialises to memory, then writes a temporary file and renames it: a crash or a
    full disk mid-write leaves the previous checkpoint intact, never a truncated one.
    ``load_checkpoint`` loads with ``weights_only=True`` (tensors and plain containers only)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return pl_load(path, map_location=map_location or (lambda storage, loc: storage), weights_only=True)
