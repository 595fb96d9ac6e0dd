"""Recipes: validation at construction, and what training with each leaves in the model."""

import pytest
import torch

from qat.experiment import train
from qat.quant.affine import QATUint8
from qat.quant.binary import BNN
from qat.quant.fixed_point import LinearFixedPoint, LogFixedPoint, MinMaxInt, TanhFixedPoint
from qat.quant.layers import QuantConvBn2d
from qat.quant.prepare import quantized_layers
from qat.quant.quantizers import AffineQuant, SignQuant
from qat.quant.ternary import ADMMTernary, ADMMTernaryWeight
from qat.models import resnet20
from tests.conftest import compose_cfg

FAST = ["data=synthetic", "data.n_train=256", "data.batch_size=32", "trainer.max_epochs=2", "logger=csv",
        "callbacks.progress_bar.refresh_rate=0", "+trainer.enable_model_summary=false"]


@pytest.mark.parametrize("make, message", [
    (lambda: BNN(latent_clip=0), "latent_clip must be a positive"),
    (lambda: BNN(latent_clip=-1.0), "latent_clip must be a positive"),
    (lambda: LinearFixedPoint(bits=0), "bits must be an integer in"),
    (lambda: LogFixedPoint(bits=33), "bits must be an integer in"),
    (lambda: TanhFixedPoint(bits=4, act_bits=0), "act_bits"),
    (lambda: MinMaxInt(bits=8, overflow_rate=1.5), "overflow_rate"),
    (lambda: ADMMTernary(rho=0), "rho must be a positive"),
    (lambda: ADMMTernary(update_every=0), "update_every"),
    (lambda: ADMMTernary(rho_growth=0.5), "rho_growth"),
    (lambda: QATUint8(freeze_bn=1.5), "freeze_bn"),
    (lambda: QATUint8(quant_delay=-3), "quant_delay"),
    (lambda: QATUint8(ema_decay=1.0), "ema_decay"),
])
def test_bad_values_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def run(tmp_path, quant, *extra, model="resnet20"):
    cfg = compose_cfg([f"quant={quant}", f"model={model}", *FAST, *extra], output_dir=tmp_path / quant)
    return train(cfg)


@pytest.mark.parametrize("model", ["resnet20", "vgg_small"])
def test_bnn_latent_weights_clipped_and_effective_weights_binary(tmp_path, model):
    result = run(tmp_path, "bnn", "optimizer.lr=0.5", model=model)  # a large rate pushes weights past the clip
    layers = quantized_layers(result.module.model)
    assert layers
    saturated = 0
    for _, layer in layers:
        w = layer.weight.detach()
        assert w.abs().max() <= 1.0
        saturated += int((w.abs() == 1.0).sum())
        assert isinstance(layer.weight_quant, SignQuant)
        assert set(layer.quantized_weight().unique().tolist()) <= {-1.0, 1.0}
    assert saturated > 0  # the clip was exercised, not merely never reached


@pytest.mark.parametrize("per_channel", [False, True])
def test_admm_ternary_leaves_three_values_per_layer(tmp_path, per_channel):
    result = run(tmp_path, "admm_ternary", "quant.update_every=3", f"quant.per_channel={per_channel}",
                 "quant.rho=1e-3")
    model = result.module.model
    admm = [(n, l) for n, l in quantized_layers(model) if isinstance(l.weight_quant, ADMMTernaryWeight)]
    assert admm
    for name, layer in admm:
        w = layer.weight.detach()
        groups = [w[c] for c in range(w.shape[0])] if per_channel else [w]
        for g in groups:
            values = g.unique()
            assert values.numel() <= 3, (name, values)
            a = values.abs().max()
            assert all(torch.isclose(v.abs(), a) or v == 0 for v in values), (name, values)
        assert int(layer.weight_quant.updates) > 0
        assert torch.equal(layer.weight_quant.quantize(w).dequantize(), w)
    assert "test/acc" in result.metrics


def test_qat_uint8_weights_have_at_most_256_levels_per_channel(tmp_path):
    result = run(tmp_path, "qat_uint8")
    model = result.module.model.eval()
    checked = 0
    for _, layer in quantized_layers(model):
        wq = layer.quantized_weight().detach()
        for c in range(wq.shape[0]):
            assert wq[c].unique().numel() <= 256
        checked += 1
    assert checked == 20
    # Late in training BN was frozen and observers stopped (freeze_bn 0.9, freeze_observers 0.95).
    assert all(bool(m.bn_frozen) for m in model.modules() if isinstance(m, QuantConvBn2d))
    assert all(int(m.observer_enabled) == 0 for m in model.modules() if isinstance(m, AffineQuant))


def test_qat_uint8_schedule_by_steps():
    model = QATUint8(quant_delay=10, freeze_bn=20, freeze_observers=30).prepare(resnet20(num_classes=10))

    recipe = QATUint8(quant_delay=10, freeze_bn=20, freeze_observers=30)
    recipe.on_train_start(model)  # step counts only: the run's length is not needed
    fq = [m for m in model.modules() if isinstance(m, AffineQuant)]
    bns = [m for m in model.modules() if isinstance(m, QuantConvBn2d)]
    assert all(int(m.fake_quant_enabled) == 0 for m in fq)
    recipe.after_optimizer_step(model, 10)
    assert all(int(m.fake_quant_enabled) == 1 and int(m.observer_enabled) == 1 for m in fq)
    assert not any(bool(b.bn_frozen) for b in bns)
    recipe.after_optimizer_step(model, 20)
    assert all(bool(b.bn_frozen) for b in bns)
    recipe.after_optimizer_step(model, 30)
    assert all(int(m.observer_enabled) == 0 for m in fq)


@pytest.mark.parametrize("quant", ["admm_ternary", "qat_uint8"])
def test_checkpoint_round_trip_restores_quantizer_state_exactly(tmp_path, quant):
    result = run(tmp_path, quant, "quant.update_every=3" if quant == "admm_ternary" else "quant.freeze_bn=null",
                 "test=false")
    ckpt = torch.load(tmp_path / quant / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    cfg = compose_cfg([f"quant={quant}", "model=resnet20", *FAST], output_dir=tmp_path / "again")
    from qat.experiment import build_module
    fresh = build_module(cfg, result.datamodule).model
    fresh.load_state_dict(state)
    trained = result.module.model
    keys = [k for k in state if any(s in k for s in ("G", "U", "rho", "updates", "min_val", "max_val",
                                                        "enabled", "bn_frozen", "running"))]
    assert keys
    for k in keys:
        assert torch.equal(fresh.state_dict()[k], trained.state_dict()[k]), k
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(fresh.eval()(x), trained.eval()(x))
