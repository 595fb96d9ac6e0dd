"""CIFAR10DataModule: both on-disk layouts, the decoding cache, the root rules and the error paths.

Each test writes a tiny CIFAR-10 copy (3 training and 2 test images per class) into tmp_path: in
torchvision's pickled layout (the official file format, written with pickle here) and as an image
folder (PNG, lossless, so pixels must match exactly; JPEG where only loading is checked).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qat.data.imagefolder as imagefolder_mod
from qat.data.base import class_interleaved
from qat.data.imagefolder import EVAL_ORDER_SEED
from qat.data import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule, DataFormatError, DataRootError,
                      ImageDecodeError)
from qat.data import cache as cache_mod

N_TRAIN_PER_CLASS, N_TEST_PER_CLASS = 3, 2


def make_arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_train, n_test = 10 * N_TRAIN_PER_CLASS, 10 * N_TEST_PER_CLASS
    train_y = rng.permutation(np.arange(n_train) % 10)
    test_y = rng.permutation(np.arange(n_test) % 10)
    train_x = rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8)
    test_x = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    return train_x, train_y, test_x, test_y


def _batch(x, y, label, protocol, str_keys):
    d = {"batch_label": label, "labels": [int(v) for v in y], "data": x.reshape(len(x), 3072),
         "filenames": [f"img_{i}.png" for i in range(len(x))]}
    if not str_keys:  # what `pickle.load(f, encoding="bytes")` shows for the official files
        d = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in d.items()}
        d[b"filenames"] = [f.encode() for f in d[b"filenames"]]
    return d


def write_pickle_layout(root: Path, arrays, protocol: int = 2, str_keys: bool = False) -> Path:
    train_x, train_y, test_x, test_y = arrays
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = np.array_split(np.arange(len(train_x)), 5)
    for i, idx in enumerate(parts, start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(_batch(train_x[idx], train_y[idx], f"training batch {i} of 5", protocol, str_keys), f,
                        protocol=protocol)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_batch(test_x, test_y, "testing batch 1 of 1", protocol, str_keys), f, protocol=protocol)
    meta = {"num_cases_per_batch": len(parts[0]), "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    if not str_keys:
        meta = {b"num_cases_per_batch": meta["num_cases_per_batch"],
                b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return root


def write_folder_layout(root: Path, arrays, ext: str = "png") -> Path:
    train_x, train_y, test_x, test_y = arrays
    for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            d = root / split / CIFAR10_CLASSES[y]
            d.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(x.transpose(1, 2, 0))
            img.save(d / f"{i:05d}.{ext}", **({"quality": 95} if ext == "jpg" else {}))
    return root


def _by_label(x: np.ndarray, y: np.ndarray):
    """The stored order of a folder copy's test split: files listed class by class, by name (= original
    index), then put in the fixed class-interleaved order."""
    order = np.argsort(y, kind="stable")
    order = order[class_interleaved(torch.from_numpy(y[order]), EVAL_ORDER_SEED).numpy()]
    return torch.from_numpy(x[order]), torch.from_numpy(y[order]).long()


def _sorted_pairs(*sets):
    pairs = [(int(y), x.numpy().tobytes()) for ds in sets for x, y in zip(ds.images, ds.labels)]
    return sorted(pairs)


@pytest.fixture
def arrays():
    return make_arrays()


def dm_for(root, tmp_path, **kw):
    kw.setdefault("download", False)
    kw.setdefault("val_size", 5)
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("progress", False)
    return CIFAR10DataModule(root, **kw)


def setup_dm(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("protocol,str_keys", [(2, False), (4, True)])
def test_both_layouts_give_the_same_data(tmp_path, arrays, protocol, str_keys):
    p = setup_dm(dm_for(write_pickle_layout(tmp_path / "p", arrays, protocol, str_keys), tmp_path))
    f = setup_dm(dm_for(write_folder_layout(tmp_path / "f", arrays), tmp_path))
    train_x, train_y, test_x, test_y = arrays
    for dm in (p, f):
        assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, (32, 32))
        assert dm.class_names == list(CIFAR10_CLASSES)
        assert len(dm.train_set) == 25 and len(dm.val_set) == 5 and len(dm.test_set) == 20
        assert dm.train_set.images.shape == (25, 3, 32, 32) and dm.train_set.images.dtype == torch.uint8
        assert dm.mean == CIFAR10_MEAN and dm.std == CIFAR10_STD
    # pickle layout keeps the file order: test split identical to the source arrays
    assert torch.equal(p.test_set.images, torch.from_numpy(test_x))
    assert torch.equal(p.test_set.labels, torch.from_numpy(test_y).long())
    # folder layout: same pixels under the same class index (by folder name), class-interleaved
    ex, ey = _by_label(test_x, test_y)
    assert torch.equal(f.test_set.images, ex) and torch.equal(f.test_set.labels, ey)
    # train + val: same multiset of (label, image) in both layouts, and equal to the source
    src = sorted((int(y), x.tobytes()) for x, y in zip(train_x, train_y))
    assert _sorted_pairs(p.train_set, p.val_set) == src
    assert _sorted_pairs(f.train_set, f.val_set) == src


def test_jpeg_folder_copy_loads_with_torchvision_class_indices(tmp_path, arrays):
    dm = setup_dm(dm_for(write_folder_layout(tmp_path / "j", arrays, ext="jpg"), tmp_path))
    _, _, test_x, test_y = arrays
    ex, ey = _by_label(test_x, test_y)
    assert torch.equal(dm.test_set.labels, ey)
    assert dm.test_set.images.shape == ex.shape
    # each decoded JPEG is its source image (lossy: compare against a far-off image as control)
    err = (dm.test_set.images.float() - ex.float()).abs().mean(dim=(1, 2, 3))
    ctrl = (dm.test_set.images.float() - ex.roll(1, 0).float()).abs().mean(dim=(1, 2, 3))
    assert bool((err < ctrl).all())


def test_folder_copy_second_setup_hits_disk_cache(tmp_path, arrays, monkeypatch):
    root = write_folder_layout(tmp_path / "f", arrays)
    first = setup_dm(dm_for(root, tmp_path))
    assert first.info["from_cache"] is False
    cache_file = Path(first.info["cache_file"])
    assert cache_file.is_file() and cache_file.parent == tmp_path / "cache" and cache_file.name.startswith("cifar10-")
    mtime = cache_file.stat().st_mtime_ns

    def no_decode(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(imagefolder_mod, "decode_images", no_decode)
    second = setup_dm(dm_for(root, tmp_path))
    assert second.info["from_cache"] is True
    assert cache_file.stat().st_mtime_ns == mtime
    assert torch.equal(second.test_set.images, first.test_set.images)
    assert torch.equal(second.train_set.images, first.train_set.images)

    # a changed source file changes the key: decoded again (here: caught by the patched decoder)
    victim = next((root / "test" / "cat").iterdir())
    Image.new("RGB", (32, 32), (1, 2, 3)).save(victim)
    os.utime(victim, ns=(mtime + 10**9, mtime + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        setup_dm(dm_for(root, tmp_path))


def test_cache_is_loaded_weights_only(tmp_path, arrays, monkeypatch):
    root = write_folder_layout(tmp_path / "f", arrays)
    setup_dm(dm_for(root, tmp_path))
    seen = []
    real_load = torch.load

    def spy(*a, **k):
        seen.append(k.get("weights_only"))
        return real_load(*a, **k)

    monkeypatch.setattr(cache_mod.torch, "load", spy)
    assert setup_dm(dm_for(root, tmp_path)).info["from_cache"]
    assert seen == [True]


def test_default_cache_dir_is_in_root_else_user_cache(tmp_path, arrays, monkeypatch):
    root = write_folder_layout(tmp_path / "f", arrays)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dm = setup_dm(dm_for(root, tmp_path, cache_dir=None))
    assert Path(dm.info["cache_file"]).parent == root / ".qat_cache"

    root2 = write_folder_layout(tmp_path / "ro", arrays)
    real = cache_mod._writable
    monkeypatch.setattr(cache_mod, "_writable", lambda d: False if str(d).startswith(str(root2)) else real(d))
    dm2 = setup_dm(dm_for(root2, tmp_path, cache_dir=None))
    assert Path(dm2.info["cache_file"]).parent == tmp_path / "xdg" / "qat"
    assert not (root2 / ".qat_cache").exists()


def test_root_one_level_above_and_batches_folder_itself(tmp_path, arrays):
    write_folder_layout(tmp_path / "above" / "cifar10-jpg", arrays)
    dm = setup_dm(dm_for(tmp_path / "above", tmp_path))
    assert Path(dm.info["root"]) == (tmp_path / "above" / "cifar10-jpg").resolve()
    write_pickle_layout(tmp_path / "p", arrays)
    dm = setup_dm(dm_for(tmp_path / "p" / "cifar-10-batches-py", tmp_path))
    assert len(dm.test_set) == 20
    write_folder_layout(tmp_path / "above" / "second-copy", arrays)
    with pytest.raises(DataRootError, match="several"):
        setup_dm(dm_for(tmp_path / "above", tmp_path))


def _tree(p: Path) -> list[str]:
    return sorted(str(q.relative_to(p)) for q in p.rglob("*"))


@pytest.mark.parametrize("exists", [False, True])
def test_missing_root_without_download_names_path_and_writes_nothing(tmp_path, monkeypatch, exists):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "nowhere" / "cifar10"
    if exists:
        root.mkdir(parents=True)
    before = _tree(tmp_path)
    dm = CIFAR10DataModule(root, download=False, progress=False)
    with pytest.raises(FileNotFoundError) as ei:
        dm.prepare_data()
    assert isinstance(ei.value, DataRootError)
    msg = str(ei.value)
    assert str(root.resolve()) in msg and "cifar-10-batches-py" in msg and "train/" in msg
    assert "data.root=" in msg and "data.download=true" in msg
    with pytest.raises(DataRootError):
        dm.setup("fit")
    assert _tree(tmp_path) == before


def test_setup_never_downloads(tmp_path):
    dm = CIFAR10DataModule(tmp_path / "missing", download=True, progress=False)
    with pytest.raises(DataRootError, match="prepare_data"):
        dm.setup("fit")
    assert not (tmp_path / "missing").exists()


def test_download_path_uses_torchvision(tmp_path, arrays, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:  # stands in for the network: writes the official layout like torchvision would
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            if not (Path(root) / "cifar-10-batches-py").exists():
                write_pickle_layout(Path(root), arrays)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    dm = setup_dm(dm_for(tmp_path / "dl", tmp_path, download=True))
    assert calls and all(c[2] for c in calls)
    assert len(dm.test_set) == 20


def test_wrong_class_folder_names_fail_clearly(tmp_path, arrays):
    root = write_folder_layout(tmp_path / "f", arrays)
    (root / "train" / "airplane").rename(root / "train" / "plane")
    with pytest.raises(DataFormatError, match=r"unexpected \['plane'\], missing \['airplane'\]"):
        setup_dm(dm_for(root, tmp_path))


def test_corrupt_image_error_names_the_file(tmp_path, arrays):
    root = write_folder_layout(tmp_path / "f", arrays, ext="jpg")
    bad = sorted((root / "train" / "dog").iterdir())[1]
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ImageDecodeError) as ei:
        setup_dm(dm_for(root, tmp_path))
    assert str(bad) in str(ei.value)
    assert not list(tmp_path.rglob("*.pt"))  # nothing cached from a failed decode


def test_corrupt_or_malicious_batch_file_is_rejected(tmp_path, arrays):
    root = write_pickle_layout(tmp_path / "p", arrays)
    target = root / "cifar-10-batches-py" / "data_batch_3"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(target, "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataFormatError) as ei:
        setup_dm(dm_for(root, tmp_path))
    assert str(target) in str(ei.value) and "not allowed" in str(ei.value)
    assert not (tmp_path / "pwned").exists()

    target.write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="data_batch_3"):
        setup_dm(dm_for(root, tmp_path))


def test_val_size_and_split_seed(tmp_path, arrays):
    root = write_pickle_layout(tmp_path / "p", arrays)
    a = setup_dm(dm_for(root, tmp_path, seed=1))
    b = setup_dm(dm_for(root, tmp_path, seed=2))  # other training seed: same validation images
    c = setup_dm(dm_for(root, tmp_path, split_seed=1))
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)
    with pytest.raises(ValueError, match="val_size"):
        setup_dm(dm_for(root, tmp_path, val_size=30))


def test_constants_known_before_setup(tmp_path):
    dm = CIFAR10DataModule(tmp_path / "unused", download=False)
    assert (dm.num_classes, dm.in_channels, dm.image_size, len(dm.class_names)) == (10, 3, (32, 32), 10)
    assert not (tmp_path / "unused").exists()
