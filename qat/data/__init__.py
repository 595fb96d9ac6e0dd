"""Data modules: CIFAR-10, any image folder, and a synthetic set, in memory as uint8 tensors; image
folders can also stream from their files (``in_memory=False``, :mod:`qat.data.streaming`), and
:mod:`qat.data.shards` streams LitData shards.

Every module is a ``LightningDataModule`` with ``num_classes``, ``in_channels``, ``image_size`` and
``class_names`` (the single source of truth the model is built from), loaders yielding
``(uint8 [N, C, H, W], int64 [N])`` and ``on_after_batch_transfer`` doing uint8 -> float, train-time
augmentation and normalisation on the device, through the reusable :class:`BatchPreprocess`.
"""

from qat.data.augment import CIFAR10_MEAN, CIFAR10_STD, BatchPreprocess, channel_stats, prepare_batch, random_crop_flip
from qat.data.base import InMemoryImageDataModule, LoadedData, class_interleaved
from qat.data.cifar10 import CIFAR10_CLASSES, CIFAR10DataModule, detect_cifar10_layout, read_cifar10_pickles
from qat.data.dataset import TensorImageDataset, passthrough_collate
from qat.data.errors import DataFormatError, DataRootError, ImageDecodeError
from qat.data.imagefolder import ImageFolderDataModule, load_image_folder, scan_image_folder
from qat.data.synthetic import SyntheticDataModule, make_synthetic

__all__ = [
    "BatchPreprocess", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10DataModule", "DataFormatError",
    "DataRootError", "ImageDecodeError", "ImageFolderDataModule", "InMemoryImageDataModule", "LoadedData",
    "SyntheticDataModule", "TensorImageDataset", "channel_stats", "class_interleaved", "detect_cifar10_layout", "load_image_folder",
    "make_synthetic", "passthrough_collate", "prepare_batch", "random_crop_flip", "read_cifar10_pickles",
    "scan_image_folder",
]
