"""ImageFolderDataModule: classes, channels and size from the files, val/ handling, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qat.data import DataFormatError, DataRootError, ImageDecodeError, ImageFolderDataModule, channel_stats


def write_image(path: Path, mode: str = "RGB", size=(8, 6), value: int | None = None, seed: int = 0) -> np.ndarray:
    """Random (or constant) image of PIL ``mode`` and ``size`` = (W, H); returns its pixels as saved."""
    rng = np.random.default_rng(seed)
    w, h = size
    ch = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (h, w, ch), dtype=np.uint8) if value is None else np.full((h, w, ch), value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if ch == 1 else arr, mode).save(path)
    return arr


def make_folder(root: Path, classes=("zebra", "apple", "mango"), per_class=(4, 2), mode="RGB", size=(8, 6),
                splits=("train", "test")) -> dict:
    saved = {}
    k = 0
    for split, n in zip(splits, per_class if len(per_class) == len(splits) else per_class * len(splits)):
        for c in classes:
            for i in range(n):
                p = root / split / c / f"{i:03d}.png"
                saved[p] = write_image(p, mode, size, seed=k)
                k += 1
    return saved


def build(root, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("progress", False)
    dm = ImageFolderDataModule(root, **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def test_classes_from_sorted_folder_names(tmp_path):
    root = tmp_path / "ds"
    saved = make_folder(root)
    dm = build(root, tmp_path, val_fraction=0.0)
    assert dm.class_names == ["apple", "mango", "zebra"] and dm.num_classes == 3
    assert (dm.in_channels, dm.image_size) == (3, (6, 8))
    # test split: classes apple, mango, zebra interleaved; exact pixels under each file's label
    assert sorted(dm.test_set.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert sorted(dm.test_set.labels[:3].tolist()) == [0, 1, 2]
    by_label = {k: [] for k in range(3)}
    for x, y in zip(dm.test_set.images, dm.test_set.labels):
        by_label[int(y)].append(x.permute(1, 2, 0).numpy().tobytes())
    for k, c in enumerate(("apple", "mango", "zebra")):
        assert sorted(by_label[k]) == sorted(saved[root / "test" / c / f"{i:03d}.png"].tobytes() for i in range(2))


def test_grayscale_gives_one_channel(tmp_path):
    root = tmp_path / "gray"
    make_folder(root, mode="L")
    dm = build(root, tmp_path)
    assert dm.in_channels == 1 and dm.train_set.images.shape[1:] == (1, 6, 8)
    assert len(dm.mean) == 1
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1] == 1


def test_mixed_modes_give_rgb(tmp_path):
    root = tmp_path / "mixed"
    make_folder(root, mode="RGB")
    gray = write_image(root / "train" / "apple" / "gray.png", "L", value=77)
    write_image(root / "train" / "apple" / "alpha.png", "RGBA")
    dm = build(root, tmp_path, val_fraction=0.0)
    assert dm.in_channels == 3
    idx = [i for i, x in enumerate(dm.train_set.images) if bool((x == 77).all())]
    assert len(idx) == 1 and gray[0, 0, 0] == 77  # the grayscale image replicated over 3 channels


def test_size_mismatch_needs_image_size(tmp_path):
    root = tmp_path / "sizes"
    make_folder(root, size=(8, 6))
    odd = root / "train" / "mango" / "big.png"
    write_image(odd, size=(10, 12))
    with pytest.raises(DataFormatError) as ei:
        build(root, tmp_path)
    assert str(odd) in str(ei.value) and "image_size" in str(ei.value)
    dm = build(root, tmp_path, image_size=[5, 4])
    assert dm.image_size == (5, 4) and dm.train_set.images.shape[1:] == (3, 5, 4)
    dm = build(root, tmp_path, image_size=7)
    assert dm.image_size == (7, 7)


def test_val_folder_is_used_else_fraction(tmp_path):
    root = tmp_path / "v"
    make_folder(root, per_class=(10, 2))
    dm = build(root, tmp_path, val_fraction=0.2)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 6)
    make_folder(root, classes=("apple", "zebra"), per_class=(1,), splits=("val",))
    dm = build(root, tmp_path, val_fraction=0.2)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 2, 6)
    assert dm.val_set.labels.tolist() == [0, 2]


def test_normalisation_from_training_split(tmp_path):
    root = tmp_path / "n"
    make_folder(root, per_class=(6, 2))
    dm = build(root, tmp_path)
    mean, std = channel_stats(dm.train_set.images)
    assert dm.mean == mean and dm.std == std
    x = dm.preprocess(dm.train_set.images, train=False)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    fixed = build(root, tmp_path, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert fixed.mean == (0.5, 0.5, 0.5)


def test_properties_need_setup(tmp_path):
    dm = ImageFolderDataModule(tmp_path / "x")
    with pytest.raises(RuntimeError, match="after prepare_data"):
        dm.num_classes


@pytest.mark.parametrize("case", ["no_root", "no_test", "empty_class", "unknown_class", "no_classes", "empty_split"])
def test_layout_errors_are_clear(tmp_path, case):
    root = tmp_path / "ds"
    if case != "no_root":
        make_folder(root)
    expect, needle = DataRootError, None
    if case == "no_root":
        needle = str(root.resolve())
    elif case == "no_test":
        import shutil
        shutil.rmtree(root / "test")
        needle = "no 'test/' folder"
    elif case == "empty_class":
        (root / "train" / "kiwi").mkdir()
        needle = str((root / "train" / "kiwi").resolve())
    elif case == "unknown_class":
        write_image(root / "test" / "kiwi" / "a.png")
        expect, needle = DataFormatError, "is not a class of train/"
    elif case == "no_classes":
        import shutil
        shutil.rmtree(root / "train")
        (root / "train").mkdir()
        needle = "no class sub-folders"
    elif case == "empty_split":
        import shutil
        shutil.rmtree(root / "test")
        (root / "test").mkdir()
        needle = "holds no class folders"
    with pytest.raises(expect) as ei:
        build(root, tmp_path)
    assert needle in str(ei.value)
    assert not (tmp_path / "cache").exists()


def test_unreadable_image_names_the_file(tmp_path):
    root = tmp_path / "c"
    make_folder(root)
    bad = root / "test" / "mango" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageDecodeError) as ei:
        build(root, tmp_path)
    assert ei.value.path == str(bad) and str(bad) in str(ei.value)
    empty = root / "test" / "mango" / "001.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        build(root, tmp_path)


def test_hidden_and_non_image_entries_are_ignored(tmp_path):
    root = tmp_path / "h"
    make_folder(root)
    (root / "train" / ".hidden_class").mkdir()
    (root / "train" / "apple" / "notes.txt").write_text("hi")
    with pytest.warns(UserWarning, match="non-image"):
        dm = build(root, tmp_path, val_fraction=0.0)
    assert dm.class_names == ["apple", "mango", "zebra"] and len(dm.train_set) == 12
    # the default cache folder inside the root is hidden, so it never becomes a split or class
    with pytest.warns(UserWarning, match="non-image"):
        dm = build(root, tmp_path, cache_dir=None, val_fraction=0.0)
    assert (root / ".qat_cache").is_dir() and dm.class_names == ["apple", "mango", "zebra"]


@pytest.mark.parametrize("mode,ext,channels", [
    ("P", "png", 3), ("LA", "png", 1), ("RGBA", "png", 3), ("1", "png", 1), ("L", "png", 1),
    ("RGB", "bmp", 3), ("RGB", "tif", 3), ("P", "gif", 3), ("RGB", "webp", 3)])
def test_decode_modes_match_pil(tmp_path, mode, ext, channels):
    from qat.data.decode import decode_images

    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"img.{ext}"
    src.save(path, **({"lossless": True} if ext == "webp" else {}))
    x = decode_images([path], progress=False)
    with Image.open(path) as im:
        ref = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    ref = torch.from_numpy(ref.copy()).reshape(6, 8, channels).permute(2, 0, 1)
    assert x.shape == (1, channels, 6, 8) and x.dtype == torch.uint8
    assert (x[0].int() - ref.int()).abs().max() <= 1  # converters may round differently by 1


def test_class_interleaved_order_is_a_fixed_permutation_spreading_every_class():
    from qat.data import class_interleaved

    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    order = class_interleaved(labels, seed=0)
    assert sorted(order.tolist()) == list(range(100))
    assert torch.equal(order, class_interleaved(labels, seed=0))
    assert not torch.equal(order, class_interleaved(labels, seed=1))
    seen = labels[order]
    # every prefix of 10 holds each class in proportion (5/3/2) to within one image
    for k in range(10, 101, 10):
        counts = torch.bincount(seen[:k], minlength=3).float()
        assert (counts - k * torch.tensor([0.5, 0.3, 0.2])).abs().max() <= 1.0, (k, counts)


def test_limited_test_sees_every_class(tmp_path):
    """Issue 10: a test split stored in class order made trainer.limit_test_batches=2 test 1-2 classes."""
    root = tmp_path / "ds"
    make_folder(root, classes=tuple(f"c{i}" for i in range(8)), per_class=(2, 3, 6), splits=("train", "val", "test"))
    dm = build(root, tmp_path, eval_batch_size=4)
    for loader in (dm.test_dataloader(), dm.val_dataloader()):
        first_two = torch.cat([y for _, (_, y) in zip(range(2), loader)])
        assert sorted(first_two.tolist()) == list(range(8))
