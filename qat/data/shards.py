"""Streaming shards with LitData: data kept in object storage (``s3://``, ``gs://``, ...) or shared by
many nodes, read as compressed chunks instead of millions of small files.

``scripts/make_shards.py IMAGE_FOLDER OUT`` writes ``OUT/<split>/`` (LitData's ``optimize``: each item
is ``{"image": the file's encoded bytes, unchanged, "label": int}``, in chunks of ``--chunk-bytes``)
and ``OUT/classes.json``. :class:`ShardsDataModule` reads them with ``litdata.StreamingDataset`` (a
local folder or a cloud URL; remote chunks are downloaded ahead into ``cache_dir``) and
``StreamingDataLoader``, decoding and transforming in the loader workers exactly as
:mod:`qat.data.streaming` does (RandomResizedCrop + flip seeded by ``(seed, epoch, index)``;
Resize + CenterCrop for evaluation); normalisation on the device.

Under DDP, LitData gives each rank (and each worker) its own part of every epoch, from the
environment Lightning sets up; the shuffle is LitData's (chunks, then items within a window),
seeded by ``seed`` and the epoch, so a run resumed at an epoch boundary reads the same data.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from qat.data.augment import BatchPreprocess
from qat.data.base import InMemoryImageDataModule, as_hw
from qat.data.errors import DataRootError
from qat.data.streaming import decode_bytes, make_transform, seeded_transform

log = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"


def _litdata():
    try:
        import litdata
    except ImportError as e:  # an optional dependency
        raise ImportError("data=shards needs LitData: pip install 'qat[shards]' (or pip install litdata)") from e
    return litdata


def make_shard_dataset(input_dir: str, size: tuple[int, int], channels: int, train: bool, seed: int,
                       shuffle: bool, crop_scale: Sequence[float] = (0.08, 1.0), flip: bool = True,
                       crop_fraction: float = 0.875, cache_dir: str | None = None):
    """A ``litdata.StreamingDataset`` over ``input_dir`` yielding ``(uint8 [C, H, W], label)``."""
    litdata = _litdata()
    transform = make_transform(size, train, crop_scale, flip, crop_fraction)

    class ShardDataset(litdata.StreamingDataset):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            i = int(getattr(index, "index", index))
            raw = torch.frombuffer(bytearray(item["image"]), dtype=torch.uint8)
            img = decode_bytes([raw], [f"{input_dir}#{i}"], channels)[0]
            return seeded_transform(transform, img, train, seed, int(self.current_epoch), i), int(item["label"])

    return ShardDataset(input_dir, shuffle=shuffle, seed=seed, drop_last=False, cache_dir=cache_dir)


def _collate(batch):
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.int64)


class ShardsDataModule(InMemoryImageDataModule):
    """Shards written by ``scripts/make_shards.py`` (see the module docstring).

    root: the folder or URL holding ``train/``, ``test/`` (and ``val/``, else ``test/`` validates too)
        and ``classes.json``.
    image_size / channels: crop size and 1 or 3 channels (required: shards are not scanned).
    crop_scale / crop_fraction / flip / augment: as for ``data=imagefolder data.in_memory=false``.
    mean / std: required (a shard set has no cheap statistics; ImageNet's for ImageNet).
    cache_dir: where LitData keeps downloaded chunks of a remote ``root``.
    """

    def __init__(self, root: str, image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                 channels: int = 3, crop_scale: Sequence[float] = (0.08, 1.0), crop_fraction: float = 0.875,
                 cache_dir: str | None = None, **kwargs):
        super().__init__(mean=mean, std=std, **kwargs)
        if int(channels) not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.root = str(root)
        self.size = as_hw(image_size)
        if self.size is None:
            raise ValueError("data.image_size is required for shards (the crop size)")
        self.channels = int(channels)
        self.crop_scale, self.crop_fraction = tuple(float(v) for v in crop_scale), float(crop_fraction)
        make_transform(self.size, True, self.crop_scale, self.flip, self.crop_fraction)  # check now
        self.cache_dir = cache_dir

    def prepare_data(self) -> None:
        pass

    def _split_dir(self, split: str) -> str:
        return self.root.rstrip("/") + "/" + split

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        classes = self._read_classes()
        common: dict[str, Any] = dict(size=self.size, channels=self.channels, seed=self.seed, crop_scale=self.crop_scale,
                                      flip=self.flip, crop_fraction=self.crop_fraction, cache_dir=self.cache_dir)
        self.train_set = make_shard_dataset(self._split_dir("train"), train=self.augment, shuffle=True, **common)
        self.test_set = make_shard_dataset(self._split_dir("test"), train=False, shuffle=False, **common)
        val = "val" if self._has_split("val") else "test"
        self.val_set = make_shard_dataset(self._split_dir(val), train=False, shuffle=False, **common)
        self._class_names = classes
        self._chw = (self.channels, *self.size)
        mean, std = self._mean_std_arg  # type: ignore[misc]
        if len(mean) != self.channels:
            raise ValueError(f"mean/std have {len(mean)} values but the images have {self.channels} channels")
        self.preprocess = BatchPreprocess(mean, std, augment=False)
        self.info = {"root": self.root, "shards": True}
        self._ready = True
        log.info("%s", self.summary())

    def _has_split(self, split: str) -> bool:
        if "://" in self.root:
            return split != "val"  # remote: give val/ explicitly by writing it; probing costs a request
        return (Path(self.root) / split / "index.json").is_file()

    def _read_classes(self) -> list[str]:
        if "://" in self.root:
            raise DataRootError(f"remote shards need a local copy of {CLASSES_FILE}: not supported for {self.root}; "
                                "download the folder's classes.json and the shards, or mount the bucket")
        path = Path(self.root) / CLASSES_FILE
        if not path.is_file():
            raise DataRootError(f"'{path}' does not exist: point data.root at the output of scripts/make_shards.py")
        return list(json.loads(path.read_text())["classes"])

    def _loader(self, ds, batch_size: int, shuffle: bool):
        return _litdata().StreamingDataLoader(ds, batch_size=batch_size, num_workers=self.num_workers,
                                               collate_fn=_collate, pin_memory=self._pin_memory(),
                                               persistent_workers=self.num_workers > 0)

    def default_mean_std(self, train_images):
        raise ValueError("data=shards needs data.mean and data.std")


def write_shards(image_folder: str | os.PathLike, out_dir: str | os.PathLike, chunk_bytes: str = "64MB",
                 num_workers: int = 1) -> dict:
    """Convert an image folder (the layout of ``data=imagefolder``) to LitData shards; see the module docstring."""
    from qat.data.imagefolder import scan_image_folder

    litdata = _litdata()
    out = Path(out_dir)
    classes, splits = scan_image_folder(image_folder)
    counts = {}
    for split, (files, labels) in splits.items():
        inputs = [(str(f), int(y)) for f, y in zip(files, labels)]
        litdata.optimize(fn=_read_item, inputs=inputs, output_dir=str(out / split), chunk_bytes=chunk_bytes,
                         num_workers=num_workers, mode="overwrite", reorder_files=False, verbose=False,
                         keep_data_ordered=True)
        counts[split] = len(inputs)
    (out / CLASSES_FILE).write_text(json.dumps({"classes": classes, "counts": counts}, indent=2) + "\n")
    return counts


def _read_item(item: tuple[str, int]) -> dict:
    path, label = item
    with open(path, "rb") as f:
        return {"image": f.read(), "label": label}
