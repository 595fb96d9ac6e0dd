"""CIFAR-10 from either of its two usual on-disk forms.

``root`` may hold (checked in this order, before anything is written):

1. ``root/cifar-10-batches-py/`` — torchvision's copy of the official "python version" (pickled
   batches ``data_batch_1..5``, ``test_batch``, ``batches.meta``); ``root`` may also be that folder.
2. ``root/train/<class>/*`` and ``root/test/<class>/*`` — an image-folder copy (e.g. the JPEG copy in
   ``shared/datasets/cifar10-jpg.tar.gz``, which unpacks to ``train/`` and ``test/``); ``root`` may
   also be a folder with exactly one sub-folder holding ``train/`` and ``test/``. Read by
   :func:`qat.data.imagefolder.load_image_folder` (so decoded once, then from the on-disk cache),
   with folder names mapped to torchvision's class indices by name.

Otherwise ``download=True`` downloads torchvision's copy into ``root`` (in ``prepare_data``), and
``download=False`` raises :class:`DataRootError` saying what was expected and how to fix it.

The pickled batches are read with a restricted unpickler that only admits the few numpy globals
that an array needs (no arbitrary code), rather than torchvision's plain ``pickle.load``; the
content is then checked (uint8 ``[n, 3072]`` data, labels in 0..9). The pickle form is not cached:
parsing it takes about a second.
"""

from __future__ import annotations

import codecs
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qat.data.augment import CIFAR10_MEAN, CIFAR10_STD
from qat.data.base import InMemoryImageDataModule, LoadedData
from qat.data.errors import DataFormatError, DataRootError
from qat.data.imagefolder import load_image_folder

log = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer",
                                    "dog", "frog", "horse", "ship", "truck")
PICKLE_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
PICKLE_FILES = TRAIN_BATCHES + (TEST_BATCH, META_FILE)


# ---- safe reading of the pickled batches ---------------------------------------------------------
def _numpy_attr(modules: tuple[str, ...], name: str):
    import importlib

    for m in modules:
        try:
            return getattr(importlib.import_module(m), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {name}")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")  # numpy 2 and numpy 1 names
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_attr(_MULTIARRAY, "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_attr(_MULTIARRAY, "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_attr(_NUMERIC, "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_attr(_NUMERIC, "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,  # how Python 3 writes bytes under pickle protocol 2
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits builtin containers/scalars/strings and numpy arrays, nothing else."""

    def find_class(self, module: str, name: str):
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR-10 batch file")
        return factory()


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise DataFormatError(f"cannot read CIFAR-10 batch file '{path}': {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise DataFormatError(f"'{path}' is not a CIFAR-10 batch file (holds a {type(obj).__name__}, not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar10_batch(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch -> ``(uint8 [n, 3, 32, 32], int64 [n])``."""
    path = Path(path)
    d = _load_pickle(path)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"'{path}': 'data' must be a uint8 array [n, 3072], got {desc}")
    if labels is None or len(labels) != data.shape[0]:
        raise DataFormatError(f"'{path}': 'labels' must list {data.shape[0]} labels")
    y = torch.tensor(np.asarray(labels, dtype=np.int64))
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(CIFAR10_CLASSES)):
        raise DataFormatError(f"'{path}': labels outside 0..{len(CIFAR10_CLASSES) - 1}")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, y


def read_cifar10_pickles(folder: str | os.PathLike) -> LoadedData:
    """Read ``cifar-10-batches-py/`` (all of ``PICKLE_FILES``)."""
    folder = Path(folder)
    meta = _load_pickle(folder / META_FILE)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
    if names != list(CIFAR10_CLASSES):
        raise DataFormatError(f"'{folder / META_FILE}': label_names {names} are not CIFAR-10's {list(CIFAR10_CLASSES)}")
    parts = [read_cifar10_batch(folder / b) for b in TRAIN_BATCHES]
    test_x, test_y = read_cifar10_batch(folder / TEST_BATCH)
    return LoadedData(train_images=torch.cat([p[0] for p in parts]), train_labels=torch.cat([p[1] for p in parts]),
                      test_images=test_x, test_labels=test_y, class_names=list(CIFAR10_CLASSES),
                      info={"root": str(folder.resolve()), "layout": "pickle", "cache_file": None,
                            "from_cache": False, "decode_seconds": None})


# ---- layout detection ----------------------------------------------------------------------------
def _is_pickle_dir(d: Path) -> bool:
    return d.is_dir() and all((d / f).is_file() for f in PICKLE_FILES)


def _is_folder_copy(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "test").is_dir()


def detect_cifar10_layout(root: str | os.PathLike) -> tuple[str, Path] | None:
    """``("pickle", folder)``, ``("imagefolder", folder)`` or ``None``. Reads only."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    if _is_pickle_dir(root / PICKLE_DIR):
        return "pickle", root / PICKLE_DIR
    if _is_pickle_dir(root):
        return "pickle", root
    if _is_folder_copy(root):
        return "imagefolder", root
    subs = sorted(d for d in root.iterdir() if not d.name.startswith(".") and d.is_dir() and _is_folder_copy(d))
    if len(subs) == 1:
        return "imagefolder", subs[0]
    if len(subs) > 1:
        raise DataRootError(f"'{root.resolve()}' holds several CIFAR-10 image-folder copies {[d.name for d in subs]}: "
                            f"point data.root at one of them")
    return None


def _not_found_message(root: Path, in_setup: bool) -> str:
    r = root.resolve()
    state = "does not exist" if not root.exists() else "holds no CIFAR-10 copy"
    lines = [f"CIFAR-10 not found: '{r}' {state}. Expected one of:",
             f"  - {r}/{PICKLE_DIR}/ with {', '.join(PICKLE_FILES)} (torchvision's layout)",
             f"  - {r}/train/<class>/<images> and {r}/test/<class>/<images> (image-folder copy; classes "
             f"{' '.join(CIFAR10_CLASSES)})",
             f"  - a single sub-folder of {r} holding train/ and test/",
             "Fix: set data.root=/path/to/cifar10 (e.g. after `mkdir -p /tmp/cifar10 && tar -xzf "
             "cifar10-jpg.tar.gz -C /tmp/cifar10`, data.root=/tmp/cifar10), or data.download=true to "
             "download torchvision's copy (needs internet)."]
    if root.is_dir() and _has_partial_pickles(root):
        missing = [f for f in PICKLE_FILES if not (root / PICKLE_DIR / f).is_file()]
        lines.insert(1, f"  ({r}/{PICKLE_DIR}/ is incomplete: missing {missing})")
    if in_setup:
        lines.append("(setup() never downloads: call prepare_data() first to download.)")
    return "\n".join(lines)


def _has_partial_pickles(root: Path) -> bool:
    return (root / PICKLE_DIR).is_dir()


class CIFAR10DataModule(InMemoryImageDataModule):
    """CIFAR-10 (10 classes, 3x32x32) from torchvision's pickled batches or an image-folder copy.

    root: see the module docstring for the accepted layouts.
    download: download torchvision's copy into ``root`` when no copy is found (``prepare_data`` only).
    val_size: training images held out (seeded by ``split_seed``) for validation; the test split is
        only for the final test.
    cache_dir / use_cache / progress: decoding cache and progress bar of the image-folder copy
        (see :mod:`qat.data.cache`).
    Normalisation: CIFAR-10's mean/std (:data:`~qat.data.augment.CIFAR10_MEAN`, ``CIFAR10_STD``)
    unless ``mean``/``std`` are given. Other arguments: see
    :class:`~qat.data.base.InMemoryImageDataModule`.
    """

    NUM_CLASSES = len(CIFAR10_CLASSES)
    IN_CHANNELS = 3
    IMAGE_SIZE = (32, 32)

    def __init__(self, root: str | os.PathLike, download: bool = True, val_size: int = 5000,
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True, progress: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if int(val_size) < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        self.root = Path(str(root)).expanduser()
        self.download = bool(download)
        self.val_size = int(val_size)
        self.cache_dir = cache_dir
        self.use_cache = bool(use_cache)
        self.progress = bool(progress)

    # Constants of the data set: known before setup.
    @property
    def num_classes(self) -> int:
        return self.NUM_CLASSES

    @property
    def in_channels(self) -> int:
        return self.IN_CHANNELS

    @property
    def image_size(self) -> tuple[int, int]:
        return self.IMAGE_SIZE

    @property
    def class_names(self) -> list[str]:
        return list(CIFAR10_CLASSES)

    def default_mean_std(self, train_images):
        return CIFAR10_MEAN, CIFAR10_STD

    def _val_holdout_size(self, n_train: int) -> int:
        if self.val_size >= n_train:
            raise ValueError(f"val_size={self.val_size} must be smaller than the {n_train} training images "
                             f"of '{self.root.resolve()}'")
        return self.val_size

    def _load_data(self, download: bool) -> LoadedData:
        found = detect_cifar10_layout(self.root)
        if found is None:
            if not (download and self.download):
                raise DataRootError(_not_found_message(self.root, in_setup=not download and self.download))
            self._download()
            found = detect_cifar10_layout(self.root)
            if found is None:
                raise DataRootError(_not_found_message(self.root, in_setup=False))
        layout, folder = found
        if layout == "pickle":
            data = read_cifar10_pickles(folder)
        else:
            data = load_image_folder(folder, class_names=CIFAR10_CLASSES, cache_dir=self.cache_dir,
                                     cache_name="cifar10", use_cache=self.use_cache, progress=self.progress,
                                     optional=())  # CIFAR-10 validation is always the hold-out
            data.info["layout"] = "imagefolder"
        for split, x in (("train", data.train_images), ("test", data.test_images)):
            if tuple(x.shape[1:]) != (self.IN_CHANNELS, *self.IMAGE_SIZE):
                raise DataFormatError(f"CIFAR-10 {split} images in '{folder.resolve()}' are "
                                      f"{tuple(x.shape[1:])}, expected (3, 32, 32)")
        return data

    def _download(self) -> None:
        from torchvision.datasets import CIFAR10

        log.info("downloading CIFAR-10 into %s", self.root.resolve())
        try:
            CIFAR10(str(self.root), train=True, download=True)
            CIFAR10(str(self.root), train=False, download=True)
        except Exception as e:
            raise DataRootError(
                f"downloading CIFAR-10 into '{self.root.resolve()}' failed ({type(e).__name__}: {e}).\n"
                + _not_found_message(self.root, in_setup=False)) from e
