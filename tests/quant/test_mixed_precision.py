"""trainer.precision=bf16-mixed on CPU: quantizers compute in float32 (autocast off inside them), so
every recipe exports with the agreement it has in float32 (qat.quant.layers.float32_quant)."""

import pytest
import torch

from qat.experiment import train
from qat.quant.layers import float32_quant
from qat.quant.quantizers import AffineQuant
from tests.conftest import compose_cfg

RUN = ["data=synthetic", "data.image_size=8", "data.n_train=96", "data.n_val=32", "data.n_test=256",
       "data.batch_size=32", "data.eval_batch_size=128", "model=resnet20", "model.width=4", "trainer.max_epochs=1",
       "trainer.precision=bf16-mixed", "logger=csv", "callbacks.progress_bar.refresh_rate=0",
       "+trainer.enable_model_summary=false", "+callbacks.probe._target_=tests.helpers.DtypeProbe"]
# About 10 s of CPU each: a binary and the 8-bit recipe in CI, the others with -m slow.
SLOW = pytest.mark.slow
RECIPES = ["bnn", "qat_uint8", *(pytest.param(q, marks=SLOW) for q in
                                 ("admm_ternary", "fp32", "bwn", "twn", "linear", "log", "tanh", "int"))]


def probe(result):
    return next(cb for cb in result.trainer.callbacks if type(cb).__name__ == "DtypeProbe")


@pytest.mark.parametrize("quant", RECIPES)
def test_bf16_mixed_training_exports_with_float32_agreement(quant, tmp_path):
    extra = ["quant.quant_delay=1"] if quant == "qat_uint8" else []
    res = train(compose_cfg([*RUN, f"quant={quant}", *extra], output_dir=tmp_path))
    m = res.metrics
    assert res.trainer.precision == "bf16-mixed"
    if quant == "fp32":  # nothing to export: it trains under autocast
        assert torch.isfinite(torch.tensor(m["test/loss"]))
        return
    p = probe(res)
    assert torch.bfloat16 in p.layer_out  # the layers did compute in bf16 (a folded BN may return float32) ...
    assert p.quant_in == {torch.float32}    # ... and every quantizer saw float32
    assert m["export/agreement"] >= (0.995 if quant == "qat_uint8" else 1.0), m


def test_float32_quant_disables_autocast_inside_the_quantizer():
    q = AffineQuant(bits=8)
    x = torch.randn(64, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seen = []
        h = q.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, torch.is_autocast_enabled("cpu"))))
        out = float32_quant(q, x.bfloat16())
        h.remove()
    assert seen == [(torch.float32, False)] and out.dtype == torch.float32
    assert float32_quant(q, x) is not None and torch.is_autocast_enabled("cpu") is False


def test_torch_ao_qat_refuses_mixed_precision_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="torch_ao_qat does not train under trainer.precision=bf16-mixed"):
        train(compose_cfg([*RUN, "quant=torch_ao_qat"], output_dir=tmp_path))
