"""The shared data-module machinery: in-memory uint8 splits, loaders, and on-device preprocessing.

A subclass only says how to get the images (:meth:`InMemoryImageDataModule._load_data`); this class
does the rest:

* ``prepare_data()`` (once per node: Lightning runs it on local rank 0) loads the data — download,
  decode, write the decoding cache — and keeps it; ``setup()`` (every process) takes it from there or
  loads it itself (then from the cache), holds out the validation split, and builds the datasets and
  the preprocessing. Both are idempotent: calling them again is free.
* loaders are plain ``DataLoader`` s over :class:`~qat.data.dataset.TensorImageDataset` with
  ``__getitems__`` and a pass-through collate, yielding ``(uint8 [N, C, H, W], int64 [N])``; under DDP
  Lightning swaps in a ``DistributedSampler`` as usual.
* ``on_after_batch_transfer`` runs on the training device: uint8 -> float, augmentation only while
  training (``trainer.training``), normalisation — all by :attr:`preprocess`, a
  :class:`~qat.data.augment.BatchPreprocess` to reuse outside Lightning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from qat.data.augment import BatchPreprocess, channel_stats
from qat.data.dataset import TensorImageDataset, passthrough_collate

log = logging.getLogger(__name__)


@dataclass
class LoadedData:
    """What a subclass's ``_load_data`` returns. ``val_*`` is ``None`` unless the source has its own
    validation split (then no hold-out is taken from train)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # e.g. source path, cache file, decode time


def as_hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``32`` -> ``(32, 32)``; ``[24, 32]`` (list, tuple or Hydra ListConfig) -> ``(24, 32)``."""
    if size is None:
        return None
    if isinstance(size, int):
        hw = (size, size)
    else:
        vals = [int(v) for v in size]
        if len(vals) != 2:
            raise ValueError(f"image_size must be an int or [H, W], got {list(size)}")
        hw = (vals[0], vals[1])
    if min(hw) <= 0:
        raise ValueError(f"image_size must be positive, got {hw}")
    return hw


def holdout_split(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random hold-out: ``(train_indices, val_indices)``, each sorted."""
    if not 0 <= n_val < n:
        raise ValueError(f"validation hold-out of {n_val} images needs 0 <= n_val < {n} (training set size)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def class_interleaved(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed, seeded order of ``labels`` (a permutation) in which the classes are interleaved, so
    that any prefix — a limited evaluation such as ``trainer.limit_test_batches=2`` — holds every class
    in proportion to its share. Within a class the order is a seeded shuffle; sample ``i`` of a class of
    ``n`` goes to position key ``(i + 1/2) / n``, keys are sorted (ties by class index)."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    g = torch.Generator().manual_seed(_mix_seed(seed, 3, 0))
    keys = torch.empty(labels.numel(), dtype=torch.float64)
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        keys[idx] = (torch.arange(idx.numel(), dtype=torch.float64) + 0.5) / idx.numel()
    # stable sort on (key, class): ties keep class order
    order = torch.argsort(labels.to(torch.float64), stable=True)
    return order[torch.argsort(keys[order], stable=True)]


def _mix_seed(seed: int, stream: int, rank: int) -> int:
    return (int(seed) * 0x9E3779B1 + stream * 0x85EBCA77 + rank * 0xC2B2AE3D) % (2**63 - 1)


class InMemoryImageDataModule(pl.LightningDataModule):
    """Base class; see the module docstring. Common arguments:

    batch_size: training batch size.
    eval_batch_size: validation/test batch size (``None``: ``batch_size``).
    num_workers: loader workers (0: the data are in memory, workers rarely help).
    seed: seeds the training-loader shuffle and the augmentation ``torch.Generator`` (offset by the
        global rank under DDP), so runs are reproducible.
    split_seed: seeds the validation hold-out; kept apart from ``seed`` so that runs with different
        seeds are validated on the same images.
    augment / pad / flip: random crop with ``pad``-pixel zero padding and random horizontal flip,
        while training only.
    pin_memory: pin loader batches for a fast copy to the GPU; ``None``: when the trainer runs on CUDA.
    mean / std: per-channel normalisation (values in [0, 1]); ``None``: the subclass default
        (:meth:`default_mean_std`).
    """

    def __init__(self, batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 0,
                 seed: int = 0, augment: bool = True, pad: int = 4, flip: bool = True,
                 pin_memory: bool | None = False, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, split_seed: int = 0):
        super().__init__()
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if eval_batch_size is not None and int(eval_batch_size) <= 0:
            raise ValueError(f"eval_batch_size must be positive, got {eval_batch_size}")
        if int(num_workers) < 0 or int(pad) < 0:
            raise ValueError(f"num_workers and pad must be >= 0, got {num_workers}, {pad}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.split_seed = int(split_seed)
        self.augment, self.pad, self.flip = bool(augment), int(pad), bool(flip)
        self.pin_memory = bool(pin_memory) if pin_memory is not None else None
        self._mean_std_arg = (tuple(float(v) for v in mean), tuple(float(v) for v in std)) if mean is not None else None

        self._loaded: LoadedData | None = None
        self._ready = False
        self._class_names: list[str] | None = None
        self._chw: tuple[int, int, int] | None = None
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None
        self.preprocess: BatchPreprocess | None = None
        self.info: dict[str, Any] = {}
        self._aug_generator: torch.Generator | None = None
        self._aug_state: torch.Tensor | None = None
        # The train loader's shuffle generator advances once per epoch; its state goes into
        # checkpoints so that a resumed run draws the same batch order as an uninterrupted one.
        self._shuffle_generator: torch.Generator | None = None
        self._shuffle_state: torch.Tensor | None = None

    # ---- subclass interface -------------------------------------------------------------------
    def _load_data(self, download: bool) -> LoadedData:
        """Return all splits as uint8 tensors. ``download`` is True only from ``prepare_data``."""
        raise NotImplementedError

    def _val_holdout_size(self, n_train: int) -> int:
        """How many training images to hold out for validation (when the source has no val split)."""
        raise NotImplementedError

    def default_mean_std(self, train_images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Normalisation when none is given: the per-channel mean/std of the training split."""
        return channel_stats(train_images)

    # ---- Lightning hooks ------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self._ready or self._loaded is not None:
            return
        self._loaded = self._load_data(download=True)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        data = self._loaded if self._loaded is not None else self._load_data(download=False)
        self._loaded = None  # the split copies below replace it; free the full tensors
        self.info = dict(data.info)

        if data.val_images is not None:
            train_x, train_y = data.train_images, data.train_labels
            val_x, val_y = data.val_images, data.val_labels
        else:
            tr, va = holdout_split(data.train_images.shape[0], self._val_holdout_size(data.train_images.shape[0]),
                                   self.split_seed)
            va = va[class_interleaved(data.train_labels.index_select(0, va), self.split_seed)]
            train_x, train_y = data.train_images.index_select(0, tr), data.train_labels.index_select(0, tr)
            val_x, val_y = data.train_images.index_select(0, va), data.train_labels.index_select(0, va)
        self.train_set = TensorImageDataset(train_x, train_y)
        self.val_set = TensorImageDataset(val_x, val_y)
        self.test_set = TensorImageDataset(data.test_images, data.test_labels)
        self._class_names = list(data.class_names)
        self._chw = tuple(int(v) for v in train_x.shape[1:])  # type: ignore[assignment]

        mean, std = self._mean_std_arg or self.default_mean_std(train_x)
        if len(mean) != self._chw[0]:
            raise ValueError(f"mean/std have {len(mean)} values but the images have {self._chw[0]} channels")
        self.preprocess = BatchPreprocess(mean, std, augment=self.augment, pad=self.pad, flip=self.flip)
        self._ready = True
        log.info("%s", self.summary())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._need(self.train_set), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._need(self.val_set), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._need(self.test_set), self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        train = self.trainer is not None and self.trainer.training
        gen = self.augment_generator() if train and self.augment else None
        return self._need(self.preprocess)(x, train=train, generator=gen), y

    def state_dict(self) -> dict[str, Any]:
        """Lightning stores this in checkpoints: the augmentation RNG, for an exact resume."""
        state = {}
        if self._aug_generator is not None:
            state["augment_rng_state"] = self._aug_generator.get_state()
        if self._shuffle_generator is not None:
            state["shuffle_rng_state"] = self._shuffle_generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        st = state_dict.get("augment_rng_state")
        if st is not None:
            self._aug_state = st.clone()
            if self._aug_generator is not None:
                self._aug_generator.set_state(self._aug_state)
        st = state_dict.get("shuffle_rng_state")
        if st is not None:
            self._shuffle_state = st.clone()
            if self._shuffle_generator is not None:
                self._shuffle_generator.set_state(self._shuffle_state)

    # ---- public helpers -----------------------------------------------------------------------
    def augment_generator(self) -> torch.Generator:
        """The CPU generator that draws the augmentation; seeded from ``seed`` and the global rank."""
        if self._aug_generator is None:
            rank = int(getattr(self.trainer, "global_rank", 0) or 0) if self.trainer is not None else 0
            g = torch.Generator().manual_seed(_mix_seed(self.seed, 1, rank))
            if self._aug_state is not None:
                g.set_state(self._aug_state)
            self._aug_generator = g
        return self._aug_generator

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._need(self._class_names, "class_names"))

    @property
    def in_channels(self) -> int:
        return self._need(self._chw, "in_channels")[0]

    @property
    def image_size(self) -> tuple[int, int]:
        chw = self._need(self._chw, "image_size")
        return (chw[1], chw[2])

    @property
    def mean(self) -> tuple[float, ...]:
        return self._need(self.preprocess, "mean").mean

    @property
    def std(self) -> tuple[float, ...]:
        return self._need(self.preprocess, "std").std

    def summary(self) -> str:
        if not self._ready:
            return f"{type(self).__name__} (not set up)"
        return (f"{type(self).__name__}: train {len(self.train_set)}, val {len(self.val_set)}, "
                f"test {len(self.test_set)} images of {self.in_channels}x{self.image_size[0]}x{self.image_size[1]}, "
                f"{self.num_classes} classes; {self.preprocess}")

    # ---- internals ----------------------------------------------------------------------------
    def _need(self, value, what: str = "the data"):
        if value is None:
            raise RuntimeError(f"{type(self).__name__}: {what} is available after prepare_data() and setup()")
        return value

    def _pin_memory(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        strategy = getattr(self.trainer, "strategy", None) if self.trainer is not None else None
        return bool(strategy is not None and strategy.root_device.type == "cuda")

    def _loader(self, ds: TensorImageDataset, batch_size: int, shuffle: bool) -> DataLoader:
        kwargs: dict[str, Any] = {}
        if shuffle:
            g = torch.Generator().manual_seed(_mix_seed(self.seed, 0, 0))
            if self._shuffle_state is not None:
                g.set_state(self._shuffle_state)
            self._shuffle_generator = kwargs["generator"] = g
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=passthrough_collate, pin_memory=self._pin_memory(), drop_last=False,
                          persistent_workers=self.num_workers > 0, **kwargs)
