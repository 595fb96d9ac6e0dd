"""The shared data-module contract: loaders, the batch hook under a real Trainer, DDP sampler
injection, checkpoint state, Hydra configs, and the synthetic set."""

from __future__ import annotations

import time
from types import SimpleNamespace

import hydra
import pytest
import pytorch_lightning as pl
import torch
from omegaconf.errors import MissingMandatoryValue

from qat.data import SyntheticDataModule, TensorImageDataset


def synth(**kw):
    dm = SyntheticDataModule(**kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_loaders_yield_uint8_batches(monkeypatch):
    dm = synth(n_train=100, n_val=30, n_test=20, batch_size=32, eval_batch_size=25)

    def per_sample(self, i):
        raise AssertionError("__getitem__ called: the loader should use __getitems__")

    monkeypatch.setattr(TensorImageDataset, "__getitem__", per_sample)
    sizes = []
    for x, y in dm.train_dataloader():
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16)
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        sizes.append(x.shape[0])
    assert sizes == [32, 32, 32, 4]
    assert [x.shape[0] for x, _ in dm.val_dataloader()] == [25, 5]
    assert [x.shape[0] for x, _ in dm.test_dataloader()] == [20]


def test_shuffle_is_seeded_and_eval_order_fixed():
    a, b, c = synth(seed=1), synth(seed=1), synth(seed=2)
    first = lambda dm: next(iter(dm.train_dataloader()))[1]
    assert torch.equal(first(a), first(b)) and not torch.equal(first(a), first(c))
    assert torch.equal(next(iter(a.val_dataloader()))[1], a.val_set.labels[:128])


def test_setup_is_idempotent(monkeypatch):
    dm = synth()
    monkeypatch.setattr(dm, "_load_data", lambda download: pytest.fail("loaded twice"))
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")


def test_hook_augments_only_while_training():
    dm = synth()
    x, y = next(iter(dm.val_dataloader()))
    eval_out, y2 = dm.on_after_batch_transfer((x, y), 0)  # no trainer: eval path
    assert eval_out.dtype == torch.float32 and torch.equal(y, y2)
    assert torch.equal(eval_out, dm.preprocess(x, train=False))
    dm.trainer = SimpleNamespace(training=False, global_rank=0)
    assert torch.equal(dm.on_after_batch_transfer((x, y), 0)[0], eval_out)
    dm.trainer = SimpleNamespace(training=True, global_rank=0)
    assert not torch.equal(dm.on_after_batch_transfer((x, y), 0)[0], eval_out)


def test_augment_rng_state_round_trip():
    dm = synth()
    dm.augment_generator().manual_seed(123)
    state = dm.state_dict()
    expected = torch.rand(3, generator=dm.augment_generator())
    other = synth()
    other.load_state_dict(state)
    assert torch.equal(torch.rand(3, generator=other.augment_generator()), expected)


class _Recorder(pl.LightningModule):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))
        self.train_batches, self.val_batches = [], []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.train_batches.append(x.clone())
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self.val_batches.append(batch[0].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_under_a_real_trainer():
    dm = SyntheticDataModule(n_train=64, n_val=32, n_test=32, batch_size=32, seed=3)
    model = _Recorder(dm.num_classes, dm.in_channels)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert len(model.train_batches) == 2 and model.train_batches[0].dtype == torch.float32
    # validation: normalised, not augmented
    vx, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(model.val_batches[0], dm.preprocess(vx, train=False))
    # training: the first shuffled batch, augmented with the module's seeded generator
    fresh = SyntheticDataModule(n_train=64, n_val=32, n_test=32, batch_size=32, seed=3)
    fresh.prepare_data()
    fresh.setup()
    tx, _ = next(iter(fresh.train_dataloader()))
    assert not torch.equal(model.train_batches[0], fresh.preprocess(tx, train=False))
    assert torch.equal(model.train_batches[0], fresh.preprocess(tx, train=True, generator=fresh.augment_generator()))


def test_lightning_can_inject_a_distributed_sampler():
    from pytorch_lightning.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    dm = synth(n_train=100, batch_size=16)
    loader = dm.train_dataloader()
    sampler = DistributedSampler(dm.train_set, num_replicas=2, rank=1, shuffle=True, seed=0)
    new = _update_dataloader(loader, sampler)
    seen = torch.cat([y for _, y in new])
    assert len(seen) == 50 and next(iter(new))[0].dtype == torch.uint8


def test_synthetic_is_fast_seeded_and_learnable():
    t0 = time.process_time()  # this process's CPU time: a loaded machine does not make it fail
    a = synth(seed=0)
    assert time.process_time() - t0 < 1.0
    assert torch.equal(a.train_set.images, synth(seed=0).train_set.images)
    assert not torch.equal(a.train_set.images, synth(seed=1).train_set.images)
    assert (a.num_classes, a.in_channels, a.image_size) == (4, 3, (16, 16))
    assert torch.bincount(a.train_set.labels).tolist() == [128] * 4
    # nearest class mean on the training set classifies held-out images far above chance (0.25)
    xt = a.preprocess(a.train_set.images).flatten(1)
    means = torch.stack([xt[a.train_set.labels == k].mean(0) for k in range(4)])
    xv = a.preprocess(a.val_set.images).flatten(1)
    acc = (torch.cdist(xv, means).argmin(1) == a.val_set.labels).float().mean()
    assert acc > 0.8
    gray = synth(in_channels=1, image_size=[12, 10], num_classes=3)
    assert (gray.in_channels, gray.image_size, gray.num_classes) == (1, (12, 10), 3)


# ---- Hydra configs --------------------------------------------------------------------------------
def _compose(*overrides):
    from tests.conftest import compose_cfg

    return compose_cfg(list(overrides), output_dir="/nonexistent/out")


def test_configs_instantiate(tmp_path):
    dm = hydra.utils.instantiate(_compose("data=synthetic", "seed=7").data)
    assert isinstance(dm, SyntheticDataModule) and dm.seed == 7
    dm.prepare_data()
    dm.setup()
    assert dm.num_classes == 4

    from qat.data import CIFAR10DataModule, ImageFolderDataModule

    cfg = _compose("data=cifar10", f"paths.data_dir={tmp_path}")
    cdm = hydra.utils.instantiate(cfg.data)
    assert isinstance(cdm, CIFAR10DataModule) and cdm.root == tmp_path / "cifar10"
    assert (cdm.batch_size, cdm.val_size, cdm.download) == (128, 5000, True)
    assert not (tmp_path / "cifar10").exists()  # constructing touches nothing

    with pytest.raises(MissingMandatoryValue, match="data.root"):
        hydra.utils.instantiate(_compose("data=imagefolder").data)
    idm = hydra.utils.instantiate(_compose("data=imagefolder", f"data.root={tmp_path}", "data.image_size=[8,8]").data)
    assert isinstance(idm, ImageFolderDataModule) and idm.requested_image_size == (8, 8)
