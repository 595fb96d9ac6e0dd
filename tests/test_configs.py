"""Every option of every config group composes and instantiates."""

from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest

from qat.experiment import trainer_config
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from qat.experiment import build_model
from qat.quant.recipe import Recipe
from tests.conftest import CONFIG_DIR, compose_cfg


def options(group):
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_groups_have_the_promised_options():
    assert {"cifar10", "imagefolder", "synthetic"} <= set(options("data"))
    assert {"resnet20", "vgg_small", "mlp", "torchvision", "custom"} <= set(options("model"))
    assert {"default", "gpu", "ddp", "debug"} <= set(options("trainer"))
    assert {"sgd", "adam"} <= set(options("optimizer"))
    assert {"tensorboard", "csv"} <= set(options("logger"))
    assert {"fp32", "bnn", "bwn", "qat_uint8", "admm_ternary", "linear", "log", "tanh", "int"} <= set(options("quant"))


@pytest.mark.parametrize("name", options("data"))
def test_data_options_instantiate(name, tmp_path):
    over = [f"data={name}"] + (["data.root=" + str(tmp_path)] if name in ("imagefolder", "shards") else [])
    cfg = compose_cfg(over, output_dir=tmp_path)
    dm = hydra.utils.instantiate(cfg.data)
    assert hasattr(dm, "train_dataloader")


# Options that need a value to build (model=custom names the user's factory), and variants worth composing.
MODEL_VARIANTS = {"custom": [["model.factory=qat.models.mlp:mlp", "+model.kwargs.hidden=16"]],
                  "torchvision": [[], ["model.name=mobilenet_v2", "model.small_input=true",
                                       "+model.kwargs.width_mult=0.25"]]}


@pytest.mark.parametrize("name, extra", [(n, e) for n in options("model") for e in MODEL_VARIANTS.get(n, [[]])])
def test_model_options_instantiate(name, extra, tmp_path):
    cfg = compose_cfg([f"model={name}", *extra], output_dir=tmp_path)
    model = build_model(cfg, SimpleNamespace(num_classes=10, in_channels=3, image_size=(32, 32))).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_custom_model_needs_a_factory(tmp_path):
    cfg = compose_cfg(["model=custom"], output_dir=tmp_path)
    with pytest.raises(Exception, match="factory"):
        build_model(cfg, SimpleNamespace(num_classes=10, in_channels=3, image_size=(32, 32)))


@pytest.mark.parametrize("name", options("quant"))
def test_quant_options_instantiate_and_prepare(name, tmp_path):
    cfg = compose_cfg([f"quant={name}"], output_dir=tmp_path)
    recipe = hydra.utils.instantiate(cfg.quant)
    assert isinstance(recipe, Recipe)
    model = recipe.prepare(hydra.utils.instantiate(cfg.model)(num_classes=10, in_channels=3, image_size=(32, 32)))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("opt", options("optimizer"))
@pytest.mark.parametrize("sched", options("scheduler"))
def test_optimizer_and_scheduler_options(opt, sched, tmp_path):
    cfg = compose_cfg([f"optimizer={opt}", f"scheduler={sched}"], output_dir=tmp_path)
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = hydra.utils.instantiate(cfg.optimizer)(params=params)
    scheduler = hydra.utils.instantiate(cfg.scheduler)(optimizer, total_steps=10)
    optimizer.step()
    scheduler.step()


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options_compose(name, tmp_path):
    cfg = compose_cfg([f"trainer={name}"], output_dir=tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if name in ("default", "debug"):  # gpu and ddp need hardware / processes to build
        trainer = hydra.utils.instantiate(trainer_config(cfg)[0], logger=False, enable_checkpointing=False)
        assert trainer.max_epochs >= 1


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callback_and_logger_options(group, tmp_path):
    for name in options(group):
        cfg = compose_cfg([f"{group}={name}"], output_dir=tmp_path)
        node = cfg[group] or {}
        for value in node.values():
            assert hydra.utils.instantiate(value) is not None


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose(name, tmp_path):
    cfg = compose_cfg([f"experiment={name}"], output_dir=tmp_path)
    OmegaConf.resolve(cfg)


def test_wrong_option_lists_choices(tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["model=resnet99"], output_dir=tmp_path)
    assert "resnet20" in str(err.value) and "vgg_small" in str(err.value)


def test_class_count_is_stated_once():
    # The number of classes comes from the data: no model or top-level config repeats it.
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        if path.parent.name != "data":
            assert "num_classes" not in path.read_text(), path
