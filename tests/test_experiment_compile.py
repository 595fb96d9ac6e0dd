"""compile=true (torch.compile, inductor) and trainer.channels_last through qat.experiment: the run trains,
its checkpoints and export are those of an eager run (same parameter names), and the export verifies."""

import pytest
import torch

from qat.experiment import train
from tests.conftest import compose_cfg

TINY = ["data=synthetic", "data.image_size=8", "data.n_train=64", "data.n_val=32", "data.n_test=64",
        "data.batch_size=32", "trainer.max_epochs=1", "logger=csv", "callbacks.progress_bar.refresh_rate=0",
        "+trainer.enable_model_summary=false"]


def check(res, quant, out):
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])  # compiled in place: eager names
    if quant in ("fp32", "torch_ao_qat"):  # nothing of qat's to export: the run trained and tested
        assert torch.isfinite(torch.tensor(res.metrics["test/loss"])), res.metrics
    else:
        assert res.metrics["export/agreement"] >= (0.995 if quant == "qat_uint8" else 1.0), res.metrics


@pytest.mark.parametrize("quant", ["bnn", "qat_uint8"])
def test_compile_true_trains_and_exports(quant, tmp_path):
    # qat_uint8 flips its switches (quant_delay=1) and sizes its observers on the first step: both
    # recompile. (The inductor failure that dynamic=False avoids needs convolutions: the slow ResNet-20
    # tests below, and tests/quant/test_compile.py's slow inductor test.)
    extra = ["quant.quant_delay=1"] if quant == "qat_uint8" else []
    res = train(compose_cfg([*TINY, "model=mlp", "model.hidden=32", f"quant={quant}", *extra, "compile=true"],
                            output_dir=tmp_path))
    assert res.module.model._compiled_call_impl is not None
    check(res, quant, tmp_path)


@pytest.mark.slow  # inductor compiles a ResNet-20 per recipe: minutes on 2 cores
@pytest.mark.parametrize("quant", ["fp32", "bnn", "qat_uint8", "admm_ternary", "bwn", "twn", "linear", "log", "tanh",
                                   "int", "torch_ao_qat"])
def test_compile_true_every_recipe_on_resnet20(quant, tmp_path):
    extra = ["quant.quant_delay=1"] if quant == "qat_uint8" else []
    res = train(compose_cfg([*TINY, "model=resnet20", "model.width=4", f"quant={quant}", *extra, "compile=true"],
                            output_dir=tmp_path))
    check(res, quant, tmp_path)


@pytest.mark.slow  # trainer=gpu's channels_last, checked on CPU
def test_channels_last_on_cpu_trains_and_exports(tmp_path):
    res = train(compose_cfg([*TINY, "model=resnet20", "model.width=4", "quant=bnn", "trainer.channels_last=true"],
                            output_dir=tmp_path))
    assert res.module.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    check(res, "bnn", tmp_path)
