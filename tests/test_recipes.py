"""qat.recipe(name, **options): every config name, options validated, defaults equal to the configs'."""

import hydra
import pytest

import qat
from qat.recipes import RECIPES, options
from tests.conftest import compose_cfg


def test_every_quant_config_is_a_recipe_name_with_the_same_defaults(tmp_path):
    for name, cls in RECIPES.items():
        cfg = compose_cfg([f"quant={name}"], output_dir=tmp_path)
        from_config = hydra.utils.instantiate(cfg.quant)
        assert type(from_config) is cls
        assert qat.recipe(name).describe() == from_config.describe(), name


def test_options_are_passed_and_validated():
    assert qat.recipe("bnn", stochastic=True).stochastic is True
    assert isinstance(qat.recipe("qat_uint8", freeze_bn=10), qat.QATUint8)
    with pytest.raises(TypeError, match="no option stochastc; its options are: stochastic, latent_clip"):
        qat.recipe("bnn", stochastc=True)
    with pytest.raises(ValueError, match="unknown recipe 'bnnn'; choose one of: fp32, bnn"):
        qat.recipe("bnnn")
    with pytest.raises(ValueError, match="latent_clip must be a positive"):
        qat.recipe("bnn", latent_clip=0)
    assert "strict" in options(qat.BWN) and "update_every" in options(qat.ADMMTernary)
