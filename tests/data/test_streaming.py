"""Streaming image folders (data.in_memory=false): per-batch decoding, seeded crops, DDP split, and a set
larger than a memory cap that trains, exports, verifies, evaluates with qat.runtime and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qat.data import DataFormatError, ImageFolderDataModule
from qat.data.streaming import EpochSampler, ImageFileDataset, decode_batch
from qat.experiment import train
from qat.runtime.__main__ import main as runtime_main
from tests.conftest import compose_cfg

CLASSES, PER_SPLIT, SIZE = 4, {"train": 40, "val": 10, "test": 15}, 256


def write_jpeg_folder(root: Path, seed: int = 0) -> Path:
    """A few hundred 256 px JPEGs: class k is a coarse 4x4 colour prototype plus pixel noise."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, (CLASSES, 4, 4, 3)).astype(np.float32)
    for split, n in PER_SPLIT.items():
        for c in range(CLASSES):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            base = np.kron(protos[c], np.ones((SIZE // 4, SIZE // 4, 1), np.float32))
            for i in range(n):
                img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / f"class{c}" / f"{i:04d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    return write_jpeg_folder(tmp_path_factory.mktemp("jpegs"))


N_FILES = CLASSES * sum(PER_SPLIT.values())
DECODED_BYTES = N_FILES * 3 * 32 * 32  # 260 images at the 32 px the runs below use


def streaming(root, **kw) -> ImageFolderDataModule:
    kw = {"in_memory": False, "image_size": 32, "batch_size": 16, "eval_batch_size": 20, **kw}
    dm = ImageFolderDataModule(root, **kw)
    dm.setup()
    return dm


def batches(loader, epoch=0):
    loader.sampler.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_streamed_batches_are_seeded_crops_independent_of_the_workers(jpegs):
    dm0, dm2 = streaming(jpegs), streaming(jpegs, num_workers=2)
    assert (dm0.num_classes, dm0.in_channels, dm0.image_size) == (4, 3, (32, 32))
    assert (len(dm0.train_set), len(dm0.val_set), len(dm0.test_set)) == (160, 40, 60)
    e0 = batches(dm0.train_dataloader())
    assert e0[0][0].dtype == torch.uint8 and e0[0][0].shape == (16, 3, 32, 32)
    assert sorted(torch.cat([y for _, y in e0]).tolist()) == sorted(dm0.train_set.labels.tolist())
    # two workers draw the same order and the same crops as the main process
    for (xa, ya), (xb, yb) in zip(e0, batches(dm2.train_dataloader())):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    # another epoch: another order and other crops; the same epoch again: the same
    e1 = batches(dm0.train_dataloader(), epoch=1)
    assert not torch.equal(torch.cat([y for _, y in e0]), torch.cat([y for _, y in e1]))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(e1, batches(dm0.train_dataloader(), epoch=1)))
    # evaluation: deterministic centre crops, class-interleaved order (first batch holds every class)
    t = batches(dm0.test_dataloader())
    assert torch.equal(t[0][0], batches(dm2.test_dataloader())[0][0])
    assert set(t[0][1].tolist()) == {0, 1, 2, 3}
    # normalisation runs on the device: float, zero-mean-ish, from the sampled training statistics
    x = dm0.preprocess(t[0][0], train=False)
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.5


def test_sampler_splits_every_epoch_between_ranks(jpegs):
    ds = ImageFileDataset([jpegs / "train" / "class0" / "0000.jpg"] * 10, list(range(10)), (8, 8), 3, train=True)
    for epoch in (0, 3):
        parts = []
        for rank in (0, 1):
            s = EpochSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=5)
            s.set_epoch(epoch)
            items = list(s)
            assert all(e == epoch for _, e in items) and len(items) == 5
            parts.append({i for i, _ in items})
        assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == set(range(10))


def test_decode_batch_gives_the_requested_channels(tmp_path, jpegs):
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((5, 7), 200, np.uint8), "L").save(gray)
    rgb = jpegs / "test" / "class1" / "0000.jpg"
    a, b = decode_batch([gray, rgb], channels=3)
    assert a.shape == (3, 5, 7) and b.shape == (3, SIZE, SIZE) and int(a[2, 0, 0]) == 200
    a, b = decode_batch([gray, rgb], channels=1)
    assert a.shape == (1, 5, 7) and b.shape == (1, SIZE, SIZE)


def test_bad_options_fail_at_construction(jpegs):
    with pytest.raises(ValueError, match="crop_scale"):
        ImageFolderDataModule(jpegs, in_memory=False, crop_scale=[0.5, 0.1])
    with pytest.raises(ValueError, match="channels"):
        ImageFolderDataModule(jpegs, in_memory=False, channels=2)


RUN = ["data=imagefolder", "data.image_size=32", "data.batch_size=32", "data.eval_batch_size=20",
       "model=resnet20", "model.width=4", "logger=csv", "callbacks.progress_bar.refresh_rate=0",
       "+trainer.enable_model_summary=false"]


def test_a_set_over_the_memory_cap_streams_trains_exports_and_verifies(jpegs, tmp_path):
    cap = DECODED_BYTES // 2
    data = [f"data.root={jpegs}", f"data.max_cache_bytes={cap}", f"+data.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(DataFormatError, match="in_memory=false"):
        train(compose_cfg([*RUN, *data, "quant=bnn", "trainer.max_epochs=1"], output_dir=tmp_path / "refused"))
    out = tmp_path / "out"
    res = train(compose_cfg([*RUN, *data, "data.in_memory=false", "quant=bnn", "trainer.max_epochs=1"],
                            output_dir=out))
    assert res.datamodule.train_set.__class__ is ImageFileDataset
    m = res.metrics
    assert m["export/agreement"] == 1.0 and m["export/acc"] == pytest.approx(m["test/acc"], abs=1e-6)
    assert not (tmp_path / "cache").exists()  # nothing was decoded into a cache
    # the runtime evaluates the export on the streamed test split (the data config stored in the export)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert runtime_main([str(out / "export")]) == 0
    got = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert got["n"] == 60 and got["acc"] == pytest.approx(m["export/acc"], abs=1e-6)


@pytest.mark.slow  # three training runs: about 3 minutes on 2 loaded cores
def test_resume_at_an_epoch_boundary_replays_the_same_stream(jpegs, tmp_path):
    """Data order and crops are functions of (seed, epoch, index): a resumed run needs no loader state."""
    run = [*RUN, f"data.root={jpegs}", "data.in_memory=false", "quant=fp32", "scheduler=constant",
           "trainer.deterministic=true", "test=false"]
    full = train(compose_cfg([*run, "trainer.max_epochs=2"], output_dir=tmp_path / "full")).metrics
    train(compose_cfg([*run, "trainer.max_epochs=1"], output_dir=tmp_path / "cut"))
    resumed = train(compose_cfg([*run, "trainer.max_epochs=2", "resume=true"], output_dir=tmp_path / "cut")).metrics
    for key in ("val/acc", "val/loss", "train/loss_epoch"):
        assert resumed[key] == full[key], (key, resumed[key], full[key])

