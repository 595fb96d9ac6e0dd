"""Image-folder data sets: ``root/train/<class>/*``, ``root/test/<class>/*``, optional ``root/val/<class>/*``.

:func:`load_image_folder` scans, checks, decodes (once: then the on-disk cache of
:mod:`qat.data.cache`) and returns uint8 tensors; :class:`ImageFolderDataModule` wraps it, and
``CIFAR10DataModule`` uses it for its image-folder copy.

Rules: classes are the sorted sub-folder names of ``train/`` (or a fixed list, matched by name);
``val/`` and ``test/`` may only use those classes; hidden entries (``.name``) are ignored, as are
files without an image extension (with a warning); an empty class folder or split is an error.
Image size and channels come from the files (see :mod:`qat.data.decode`): every image must have the
size of the first unless ``image_size`` is given, in which case all are resized to it.

Order: ``train/`` is stored in class order (the loader shuffles it); ``val/`` and ``test/`` are
stored in a fixed, seeded, class-interleaved order (:func:`~qat.data.base.class_interleaved`), so a
limited evaluation (``trainer.limit_test_batches=2``) sees every class.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch

from torch.utils.data import DataLoader

from qat.data.augment import BatchPreprocess, channel_stats
from qat.data.base import InMemoryImageDataModule, LoadedData, as_hw, class_interleaved, holdout_split
from qat.data.cache import cache_dirs, fingerprint, load_cache, save_cache
from qat.data.decode import IMAGE_EXTENSIONS, decode_images
from qat.data.dataset import passthrough_collate
from qat.data.errors import DataFormatError, DataRootError
from qat.data.streaming import EpochSampler, ImageFileDataset

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EVAL_ORDER_SEED = 0  # the stored order of val/ and test/ (class-interleaved), the same for every run


def _visible_entries(d: Path) -> list[os.DirEntry]:
    with os.scandir(d) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _class_files(class_dir: Path) -> tuple[list[Path], list[str]]:
    files, skipped = [], []
    for e in _visible_entries(class_dir):
        if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
            files.append(Path(e.path))
        else:
            skipped.append(e.name)
    return files, skipped


def scan_image_folder(root: str | os.PathLike, class_names: Sequence[str] | None = None,
                      required: Sequence[str] = ("train", "test"), optional: Sequence[str] = ("val",)
                      ) -> tuple[list[str], dict[str, tuple[list[Path], list[int]]]]:
    """Check the layout and list the files: ``(class_names, {split: (files, labels)})``, train in
    class order, val and test class-interleaved (see the module docstring).

    ``class_names=None``: the sorted sub-folders of ``train/``; otherwise the folder names must be
    exactly these names, and label ``i`` is ``class_names[i]``. Splits in ``required`` must exist;
    splits in ``optional`` (``val``) are included when present. Nothing is written.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataRootError(
            f"image-folder data root '{root.resolve()}' does not exist or is not a folder. Expected "
            f"{root.resolve()}/train/<class>/<images> and {root.resolve()}/test/<class>/<images> "
            "(optional val/). Fix: data.root=/path/to/that/folder")
    for split in required:
        if not (root / split).is_dir():
            present = sorted(e.name for e in _visible_entries(root) if e.is_dir())
            raise DataRootError(
                f"image-folder data root '{root.resolve()}' has no '{split}/' folder "
                f"(it holds: {present or 'nothing'}). "
                f"Expected {root.resolve()}/{split}/<class>/<images>. Fix: data.root=/path/to/the/folder/holding/"
                f"{'/ and '.join(required)}/")

    train_dir = root / "train"
    found = [e.name for e in _visible_entries(train_dir) if e.is_dir()]
    if not found:
        raise DataRootError(f"'{train_dir.resolve()}' has no class sub-folders: expected "
                            f"{train_dir.resolve()}/<class>/<images>")
    if class_names is None:
        classes = sorted(found)
    else:
        classes = list(class_names)
        unknown = sorted(set(found) - set(classes))
        missing = sorted(set(classes) - set(found))
        if unknown or missing:
            raise DataFormatError(
                f"class folders of '{train_dir.resolve()}' do not match the expected classes {classes}: "
                f"unexpected {unknown}, missing {missing}")
    index = {name: i for i, name in enumerate(classes)}

    out: dict[str, tuple[list[Path], list[int]]] = {}
    skipped_all: list[str] = []
    for split in SPLITS:
        split_dir = root / split
        if split not in required and (split not in optional or not split_dir.is_dir()):
            continue
        files: list[Path] = []
        labels: list[int] = []
        dirs = [e for e in _visible_entries(split_dir) if e.is_dir()]
        for e in dirs:
            if e.name not in index:
                raise DataFormatError(f"'{Path(e.path).resolve()}' is not a class of train/ (classes: {classes})")
            cls_files, skipped = _class_files(Path(e.path))
            skipped_all += [f"{split}/{e.name}/{s}" for s in skipped]
            if not cls_files:
                raise DataRootError(f"class folder '{Path(e.path).resolve()}' holds no image files "
                                    f"(extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")
            files += cls_files
            labels += [index[e.name]] * len(cls_files)
        if not files:
            raise DataRootError(f"split folder '{split_dir.resolve()}' holds no class folders with images: "
                                f"expected {split_dir.resolve()}/<class>/<images>")
        absent = sorted(set(classes) - {e.name for e in dirs})
        if absent:
            log.warning("%s/ has no images of classes %s", split, absent)
        if split != "train":
            order = class_interleaved(torch.tensor(labels), EVAL_ORDER_SEED).tolist()
            files, labels = [files[i] for i in order], [labels[i] for i in order]
        out[split] = (files, labels)
    if skipped_all:
        warnings.warn(f"ignored {len(skipped_all)} non-image entries under '{root.resolve()}', e.g. "
                      f"{skipped_all[:3]}", stacklevel=2)
    return classes, out


def first_image(files: Sequence[Path]) -> torch.Tensor:
    """The first file decoded as the whole set would be (1 channel if grayscale, else 3)."""
    return decode_images(files[:1], progress=False, workers=1)[0]


def check_fits(n_images: int, chw: Sequence[int], max_bytes: int | None, root: Path) -> int:
    """Bytes of ``n_images`` decoded uint8 images of shape ``chw``; an error over ``max_bytes``."""
    need = int(n_images) * int(chw[0]) * int(chw[1]) * int(chw[2])
    if max_bytes is not None and need > int(max_bytes):
        raise DataFormatError(
            f"'{root.resolve()}' decodes to {n_images} images of {'x'.join(str(int(v)) for v in chw)} = "
            f"{need / 2**20:.1f} MiB in memory, more than data.max_cache_bytes={int(max_bytes)} "
            f"({int(max_bytes) / 2**20:.1f} MiB). Stream it instead: data.in_memory=false (decodes per batch in "
            f"the loader workers), or raise data.max_cache_bytes.")
    return need


def load_image_folder(root: str | os.PathLike, class_names: Sequence[str] | None = None,
                      image_size: int | Sequence[int] | None = None, cache_dir: str | os.PathLike | None = None,
                      cache_name: str | None = None, use_cache: bool = True, progress: bool = True,
                      required: Sequence[str] = ("train", "test"), optional: Sequence[str] = ("val",),
                      max_bytes: int | None = None) -> LoadedData:
    """Scan, check and decode an image folder (or read its cache). ``info`` of the result holds
    ``root``, ``cache_file`` (or ``None``), ``from_cache`` and ``decode_seconds``. ``max_bytes``:
    refuse (before decoding) a set whose decoded tensors would exceed it."""
    root = Path(root).expanduser()
    hw = as_hw(image_size)
    classes, splits = scan_image_folder(root, class_names, required, optional)
    if max_bytes is not None:
        first = first_image(splits["train"][0])
        check_fits(sum(len(f) for f, _ in splits.values()), (first.shape[0], *(hw or first.shape[-2:])),
                   max_bytes, root)
    name = cache_name or f"imagefolder-{root.resolve().name or 'root'}"
    all_files = [f for s in splits.values() for f in s[0]]
    key = fingerprint(root, all_files, {"layout": "imagefolder", "classes": classes,
                                        "image_size": list(hw) if hw else None, "splits": sorted(splits)})
    dirs = cache_dirs(root, cache_dir)
    info = {"root": str(root.resolve()), "cache_file": None, "from_cache": False, "decode_seconds": None}

    cached, path = load_cache(name, key, dirs) if use_cache else (None, None)
    if cached is not None:
        try:
            tensors = {s: (cached[f"{s}_images"], cached[f"{s}_labels"]) for s in splits}
            ok = list(cached["class_names"]) == classes and all(
                x.dtype == torch.uint8 and x.dim() == 4 and y.dtype == torch.int64 and len(y) == len(splits[s][0])
                and x.shape[0] == len(y) for s, (x, y) in tensors.items())
        except (KeyError, TypeError, AttributeError):
            ok = False
        if ok:
            log.info("loaded decoded images from cache %s", path)
            info.update(cache_file=str(path), from_cache=True)
            return _to_loaded(tensors, classes, info)
        warnings.warn(f"ignoring data cache '{path}': content does not match the files", stacklevel=2)

    t0 = time.perf_counter()
    images = decode_images(all_files, image_size=hw, progress=progress, desc=f"decoding {root.name or root}")
    info["decode_seconds"] = time.perf_counter() - t0
    tensors = {}
    start = 0
    for s, (files, labels) in splits.items():
        tensors[s] = (images[start:start + len(files)].clone(), torch.tensor(labels, dtype=torch.int64))
        start += len(files)
    del images
    if use_cache:
        obj = {"class_names": classes}
        for s, (x, y) in tensors.items():
            obj[f"{s}_images"], obj[f"{s}_labels"] = x, y
        saved = save_cache(obj, name, key, dirs)
        info["cache_file"] = str(saved) if saved else None
    return _to_loaded(tensors, classes, info)


def _to_loaded(tensors: dict, classes: list[str], info: dict) -> LoadedData:
    val = tensors.get("val")
    return LoadedData(train_images=tensors["train"][0], train_labels=tensors["train"][1],
                      test_images=tensors["test"][0], test_labels=tensors["test"][1], class_names=classes,
                      val_images=val[0] if val else None, val_labels=val[1] if val else None, info=info)


class ImageFolderDataModule(InMemoryImageDataModule):
    """Any data set in the layout ``root/train/<class>/*``, ``root/test/<class>/*`` (optional ``val/``).

    root: the folder holding ``train/`` and ``test/``.
    in_memory: ``True``: decode every image once into uint8 tensors (cached on disk; augmentation is
        the random crop with padding + flip of :class:`~qat.data.augment.BatchPreprocess`).
        ``False``: stream — keep only the file list and decode per batch in the loader workers
        (:mod:`qat.data.streaming`: RandomResizedCrop + flip for training, Resize + CenterCrop for
        evaluation, on uint8), for sets larger than memory.
    max_cache_bytes: with ``in_memory``, refuse (before decoding, naming ``in_memory=false``) a set
        whose decoded tensors would be larger; ``None``: no cap.
    image_size: in memory: ``None`` to take the size from the files (all must agree), or
        ``int``/``[H, W]`` to resize every image to it. Streaming: the crop size (``None``: the first
        training image's size).
    channels: streaming only: 1 (grayscale) or 3 (RGB) for every image; ``None``: as the first
        training image (in memory, channels always come from the files).
    crop_scale / crop_fraction: streaming only: RandomResizedCrop's area range for training; the
        evaluation crop's share of the resized image (0.875: resize to 256, crop 224).
    stats_images: streaming only, when ``mean``/``std`` are not given: the normalisation is measured
        on this many training images (a seeded sample, evaluation transform).
    val_fraction: share of ``train/`` held out for validation (seeded by ``split_seed``); ignored when
        ``root/val/`` exists, which is then the validation split.
    cache_dir: where decoded images are cached (default ``<root>/.qat_cache`` if writable, else
        ``~/.cache/qat``); ``use_cache=False`` neither reads nor writes a cache.
    Normalisation (unless ``mean``/``std`` are given): the per-channel mean/std of the training split.
    Other arguments: see :class:`~qat.data.base.InMemoryImageDataModule`.
    """

    def __init__(self, root: str | os.PathLike, image_size: int | Sequence[int] | None = None,
                 val_fraction: float = 0.1, cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 progress: bool = True, in_memory: bool = True, max_cache_bytes: int | None = None,
                 channels: int | None = None, crop_scale: Sequence[float] = (0.08, 1.0), crop_fraction: float = 0.875,
                 stats_images: int = 256, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if max_cache_bytes is not None and int(max_cache_bytes) <= 0:
            raise ValueError(f"max_cache_bytes must be positive or null, got {max_cache_bytes}")
        if channels is not None and int(channels) not in (1, 3):
            raise ValueError(f"channels must be 1, 3 or null, got {channels}")
        if int(stats_images) <= 0:
            raise ValueError(f"stats_images must be positive, got {stats_images}")
        self.root = Path(str(root)).expanduser()
        self.requested_image_size = as_hw(image_size)
        self.val_fraction = float(val_fraction)
        self.cache_dir = cache_dir
        self.use_cache = bool(use_cache)
        self.progress = bool(progress)
        self.in_memory = bool(in_memory)
        self.max_cache_bytes = int(max_cache_bytes) if max_cache_bytes is not None else None
        self.channels = int(channels) if channels is not None else None
        self.crop_scale = tuple(float(v) for v in crop_scale)
        self.crop_fraction = float(crop_fraction)
        self.stats_images = int(stats_images)
        if not self.in_memory:  # check the transform options now, not in a worker
            ImageFileDataset([], [], (1, 1), 3, train=True, crop_scale=self.crop_scale, crop_fraction=self.crop_fraction)

    def _load_data(self, download: bool) -> LoadedData:
        return load_image_folder(self.root, image_size=self.requested_image_size, cache_dir=self.cache_dir,
                                 use_cache=self.use_cache, progress=self.progress, max_bytes=self.max_cache_bytes)

    # ---- streaming (in_memory=false) ------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.in_memory:
            super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.in_memory or self._ready:
            super().setup(stage)
            return
        classes, splits = scan_image_folder(self.root)
        files, labels = splits["train"]
        if "val" in splits:
            val_files, val_labels = splits["val"]
        else:
            tr, va = holdout_split(len(files), self._val_holdout_size(len(files)), self.split_seed)
            va = va[class_interleaved(torch.tensor(labels)[va], self.split_seed)]
            val_files, val_labels = [files[i] for i in va], [labels[i] for i in va]
            files, labels = [files[i] for i in tr], [labels[i] for i in tr]
        first = first_image(files)
        channels = self.channels or int(first.shape[0])
        size = self.requested_image_size or (int(first.shape[1]), int(first.shape[2]))
        common = dict(size=size, channels=channels, seed=self.seed, crop_scale=self.crop_scale, flip=self.flip,
                      crop_fraction=self.crop_fraction)
        self.train_set = ImageFileDataset(files, labels, train=self.augment, **common)
        self.val_set = ImageFileDataset(val_files, val_labels, train=False, **common)
        self.test_set = ImageFileDataset(*splits["test"], train=False, **common)
        self._class_names = list(classes)
        self._chw = (channels, *size)
        mean, std = self._mean_std_arg or self._sample_stats(files, labels, common)
        if len(mean) != channels:
            raise ValueError(f"mean/std have {len(mean)} values but the images have {channels} channels")
        # Augmentation ran in the workers; on the device only uint8 -> float and normalisation remain.
        self.preprocess = BatchPreprocess(mean, std, augment=False)
        self.info = {"root": str(self.root.resolve()), "streaming": True}
        self._ready = True
        log.info("%s", self.summary())

    def _sample_stats(self, files, labels, common) -> tuple[tuple[float, ...], tuple[float, ...]]:
        n = min(self.stats_images, len(files))
        pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(self.split_seed))[:n].tolist()
        ds = ImageFileDataset([files[i] for i in pick], [labels[i] for i in pick], train=False, **common)
        return channel_stats(ds.__getitems__(list(range(n)))[0])

    def _loader(self, ds, batch_size: int, shuffle: bool) -> DataLoader:
        if self.in_memory:
            return super()._loader(ds, batch_size, shuffle)
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0
        sampler = EpochSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=passthrough_collate, pin_memory=self._pin_memory(),
                          persistent_workers=self.num_workers > 0)

    def _val_holdout_size(self, n_train: int) -> int:
        if self.val_fraction == 0.0 or n_train < 2:
            return 0
        return min(n_train - 1, max(1, round(self.val_fraction * n_train)))
