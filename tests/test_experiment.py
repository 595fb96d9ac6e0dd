"""End-to-end runs of qat.experiment on small data: every model x data option, learning, outputs."""

import json

import pytest

from qat.experiment import train
from tests.conftest import compose_cfg
from tests.data.test_cifar10 import make_arrays, write_folder_layout, write_pickle_layout

QUIET = ["callbacks.progress_bar.refresh_rate=0", "+trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    arrays = make_arrays()
    base = tmp_path_factory.mktemp("data")
    return {
        "cifar10_pickle": write_pickle_layout(base / "pickle", arrays),
        "cifar10_folder": write_folder_layout(base / "folder", arrays),
    }


def data_overrides(kind, roots, tmp_path):
    if kind == "synthetic":
        return ["data=synthetic"]
    cache = f"+data.cache_dir={tmp_path / 'cache'}"
    if kind == "imagefolder":
        return ["data=imagefolder", f"data.root={roots['cifar10_folder']}", cache, "data.val_fraction=0.2"]
    return ["data=cifar10", f"data.root={roots[kind]}", "data.download=false", "data.val_size=5", cache]


@pytest.mark.parametrize("model", ["resnet20", "vgg_small", "mlp"])
@pytest.mark.parametrize("data", ["synthetic", "cifar10_pickle", "cifar10_folder", "imagefolder"])
def test_fast_dev_run_every_model_and_data(model, data, data_roots, tmp_path):
    cfg = compose_cfg([f"model={model}", *data_overrides(data, data_roots, tmp_path), "+trainer.fast_dev_run=2",
                       "data.batch_size=8", "logger=csv", *QUIET], output_dir=tmp_path / "out")
    result = train(cfg)
    assert result.trainer.global_step == 2
    for key in ("test/acc", "test/loss"):
        assert key in result.metrics
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["test/loss"] == result.metrics["test/loss"]


def test_training_on_synthetic_data_learns(tmp_path):
    # 4 classes: chance is 0.25. The network learns these data within a few steps; what decides the
    # eval-mode accuracy of so short a run is whether BatchNorm's running statistics (an EMA, momentum
    # 0.1) have caught up with the weights. With 24 steps of 64 images they had not: test accuracy
    # swung between 0.70 and 1.0 with the seed (seed 42: 0.703, test loss 2.8, yet 0.992 with the
    # statistics recomputed for the final weights). The same 3 epochs in 48 steps of 32 images let
    # them catch up (seed 42: 0.99); 512 test images keep the sampling error of the accuracy <= 0.022.
    cfg = compose_cfg(["data=synthetic", "model=resnet20", "trainer.max_epochs=3", "data.batch_size=32",
                       "data.n_val=512", "data.n_test=512", "optimizer.lr=0.05", *QUIET],
                      output_dir=tmp_path / "out")
    result = train(cfg)
    assert result.metrics["test/acc"] >= 0.85, result.metrics
    assert result.metrics["val/acc_best"] >= 0.85


def test_outputs_of_a_run(tmp_path):
    out = tmp_path / "out"
    cfg = compose_cfg(["data=synthetic", "model=mlp", "trainer.max_epochs=2", *QUIET], output_dir=out)
    train(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test/acc", "test/loss", "val/acc_best"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())  # flat
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert any((out / "checkpoints").glob("epoch_*.ckpt"))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "_target_: qat.models.mlp" in (out / "config.yaml").read_text()
    assert "${" not in (out / "config.yaml").read_text()  # resolved


def test_seed_and_determinism_reproduce_a_run(tmp_path):
    runs = []
    for i in range(2):
        cfg = compose_cfg(["data=synthetic", "model=mlp", "trainer.max_epochs=1", "trainer.deterministic=true",
                           "seed=3", "callbacks=none", "logger=csv", *QUIET[1:]], output_dir=tmp_path / f"o{i}")
        runs.append(train(cfg).metrics)
    assert runs[0]["test/loss"] == runs[1]["test/loss"]
    assert runs[0]["train/loss_epoch"] == runs[1]["train/loss_epoch"]


def test_missing_data_root_fails_before_writing(tmp_path):
    out = tmp_path / "out"
    cfg = compose_cfg(["data=cifar10", f"data.root={tmp_path / 'nowhere'}", "data.download=false"], output_dir=out)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(cfg)
    assert not out.exists()
