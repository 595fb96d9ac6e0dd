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

from qat.data.base import InMemoryImageDataModule, LoadedData, as_hw, class_interleaved
from qat.data.cache import cache_dirs, fingerprint, load_cache, save_cache
from qat.data.decode import IMAGE_EXTENSIONS, decode_images
from qat.data.errors import DataFormatError, DataRootError

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


def load_image_folder(root: str | os.PathLike, class_names: Sequence[str] | None = None,
                      image_size: int | Sequence[int] | None = None, cache_dir: str | os.PathLike | None = None,
                      cache_name: str | None = None, use_cache: bool = True, progress: bool = True,
                      required: Sequence[str] = ("train", "test"), optional: Sequence[str] = ("val",)
                      ) -> LoadedData:
    """Scan, check and decode an image folder (or read its cache). ``info`` of the result holds
    ``root``, ``cache_file`` (or ``None``), ``from_cache`` and ``decode_seconds``."""
    root = Path(root).expanduser()
    hw = as_hw(image_size)
    classes, splits = scan_image_folder(root, class_names, required, optional)
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
    image_size: ``None`` to take the size from the files (all must agree), or ``int``/``[H, W]`` to
        resize every image to it.
    val_fraction: share of ``train/`` held out for validation (seeded by ``split_seed``); ignored when
        ``root/val/`` exists, which is then the validation split.
    cache_dir: where decoded images are cached (default ``<root>/.qat_cache`` if writable, else
        ``~/.cache/qat``); ``use_cache=False`` neither reads nor writes a cache.
    Normalisation (unless ``mean``/``std`` are given): the per-channel mean/std of the training split.
    Other arguments: see :class:`~qat.data.base.InMemoryImageDataModule`.
    """

    def __init__(self, root: str | os.PathLike, image_size: int | Sequence[int] | None = None,
                 val_fraction: float = 0.1, cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 progress: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(str(root)).expanduser()
        self.requested_image_size = as_hw(image_size)
        self.val_fraction = float(val_fraction)
        self.cache_dir = cache_dir
        self.use_cache = bool(use_cache)
        self.progress = bool(progress)

    def _load_data(self, download: bool) -> LoadedData:
        return load_image_folder(self.root, image_size=self.requested_image_size, cache_dir=self.cache_dir,
                                 use_cache=self.use_cache, progress=self.progress)

    def _val_holdout_size(self, n_train: int) -> int:
        if self.val_fraction == 0.0 or n_train < 2:
            return 0
        return min(n_train - 1, max(1, round(self.val_fraction * n_train)))
