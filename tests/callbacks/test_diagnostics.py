"""QuantDiagnostics: the numbers it computes, the TensorBoard tags a run writes, and that it leaves
training untouched."""

from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn

from qat.callbacks.diagnostics import QuantDiagnostics, run_hparams
from qat.experiment import train
from qat.quant.affine import QATUint8
from qat.quant.binary import BNN
from qat.quant.prepare import quantized_layers
from qat.quant.ternary import TWN, ADMMTernary
from tests.conftest import compose_cfg

# callbacks=diagnostics: the diagnostics, model size and DDP sync callbacks alone (no checkpoints, no export).
FAST = ["callbacks=diagnostics", "data=synthetic", "data.n_train=128", "data.n_val=64", "data.n_test=64", "data.batch_size=32",
        "trainer.max_epochs=1", "+trainer.enable_model_summary=false"]


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def prepared(recipe):
    model = recipe.prepare(small_model())
    return SimpleNamespace(model=model, recipe=recipe), dict(quantized_layers(model))


def test_quant_error_saturation_and_flip_ratio_bnn():
    module, layers = prepared(BNN(latent_clip=0.5))
    layer = layers["3"]
    with torch.no_grad():
        w = torch.linspace(-1, 1, layer.weight.numel()).reshape(layer.weight.shape)
        w[w == 0] = 0.1
        layer.weight.copy_(w.clamp(-0.5, 0.5))
    diag = QuantDiagnostics(every_n_steps=1)
    scalars, hists = diag.collect(module)
    wq = torch.sign(layer.weight)
    w = layer.weight.detach()
    expected_err = float((w - wq).norm() / w.norm())
    assert scalars["quant_error/3"] == pytest.approx(expected_err, rel=1e-5)
    assert scalars["saturation/3"] == pytest.approx(float((layer.weight.abs() >= 0.5).float().mean()))
    assert 0.4 < scalars["saturation/3"] < 0.6  # half the linspace lies beyond +-0.5
    assert "flip_ratio/3" not in scalars  # no previous snapshot yet
    assert torch.equal(hists["latent_weights/3"], layer.weight.detach())
    with torch.no_grad():  # flip the sign of exactly 10 weights
        layer.weight.view(-1)[:10].neg_()
    scalars, _ = diag.collect(module)
    assert scalars["flip_ratio/3"] == pytest.approx(10 / layer.weight.numel())
    scalars, _ = diag.collect(module)
    assert scalars["flip_ratio/3"] == 0.0  # measured against the previous logging step


def test_ternary_sparsity_alpha_and_admm_state():
    module, layers = prepared(TWN(first="quant"))
    layer = layers["0"]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.0, 0.0, 1.0, -1.0]).repeat(layer.weight.numel() // 4)
                           .reshape(layer.weight.shape))
    scalars, _ = QuantDiagnostics().collect(module)
    assert scalars["sparsity/0"] == pytest.approx(0.5)
    assert scalars["alpha/0"] == pytest.approx(1.0)
    assert scalars["quant_error/0"] == pytest.approx(0.0, abs=1e-6)  # already ternary

    module, layers = prepared(ADMMTernary(rho=0.01))
    layer = layers["3"]
    module.recipe.on_train_start(module.model, total_steps=100)  # G <- Proj(W)
    q = layer.weight_quant
    with torch.no_grad():
        layer.weight.add_(0.05)
    scalars, _ = QuantDiagnostics().collect(module)
    expected = float((layer.weight - q.G).norm() / layer.weight.norm())
    assert scalars["admm_residual/3"] == pytest.approx(expected, rel=1e-5)
    assert scalars["quant_error/3"] == scalars["admm_residual/3"]  # ADMM deploys G
    assert scalars["admm_rho/3"] == pytest.approx(0.01)
    assert scalars["sparsity/3"] == pytest.approx(float((q.G == 0).float().mean()))
    assert scalars["alpha/3"] == pytest.approx(float(q.alpha))


def test_observer_ranges_and_no_state_change_uint8():
    module, layers = prepared(QATUint8())
    module.model.train()
    x = torch.randn(8, 3, 8, 8)
    module.model(x)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    scalars, _ = QuantDiagnostics().collect(module)
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing touched
    iq = layers["0"].input_quant
    assert scalars["act_range_min/0"] == pytest.approx(float(x.min()))
    assert scalars["act_range_max/0"] == pytest.approx(float(x.max()))
    assert 0 < scalars["quant_error/0"] < 0.05  # 8-bit per-channel weights: small error
    assert iq.training  # the mode switched for quantize() is restored


def test_bad_interval_is_rejected():
    with pytest.raises(ValueError, match="every_n_steps"):
        QuantDiagnostics(every_n_steps=-1)


def test_hparams_hold_recipe_optimizer_and_model():
    cfg = compose_cfg(["quant=bnn", "data=synthetic", "optimizer.lr=0.01"], output_dir="/tmp/unused")
    from omegaconf import OmegaConf

    hp = run_hparams(OmegaConf.to_container(cfg, resolve=True), BNN(latent_clip=0.7))
    assert hp["quant"] == "bnn" and hp["quant/latent_clip"] == 0.7
    assert hp["optimizer"] == "Adam" and hp["optimizer/lr"] == 0.01
    assert hp["model"] == "resnet20" and hp["data"] == "SyntheticDataModule"
    assert all(isinstance(v, (bool, int, float, str)) for v in hp.values())


EXPECTED = {  # per quantized layer, beyond latent_weights (histogram) and quant_error
    "bnn": {"saturation", "flip_ratio"},
    "twn": {"flip_ratio", "sparsity", "alpha"},
    "admm_ternary": {"flip_ratio", "sparsity", "alpha", "admm_residual", "admm_rho"},
    "qat_uint8": {"act_range_min", "act_range_max"},
}


def read_events(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("quant", sorted(EXPECTED))
def test_run_writes_every_diagnostic_tag(quant, tmp_path):
    out = tmp_path / "out"
    cfg = compose_cfg([f"quant={quant}", "model=resnet20", "model.width=8", *FAST, "+trainer.limit_train_batches=4",
                       "callbacks.diagnostics.every_n_steps=2"], output_dir=out)
    result = train(cfg)
    acc = read_events(out / "tensorboard")
    scalars, hists = set(acc.Tags()["scalars"]), set(acc.Tags()["histograms"])
    layers = [n for n, _ in quantized_layers(result.module.model)]
    assert layers
    for name in layers:
        assert f"latent_weights/{name}" in hists
        for kind in {"quant_error"} | EXPECTED[quant]:
            tag = f"{kind}/{name}"
            assert tag in scalars, f"missing {tag}"
            # The baseline at step 0 (before any forward) has no flip ratio and no observed range yet.
            first = 2 if kind in ("flip_ratio", "act_range_min", "act_range_max") else 0
            assert [e.step for e in acc.Scalars(tag)] == list(range(first, 5, 2))
    # hyperparameters with the final metrics, for the HPARAMS view
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["quant"].string_value == quant
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"hp/test/acc", "hp/val/acc_best"} <= metric_tags
    assert acc.Scalars("hp/test/acc")[-1].value == pytest.approx(result.metrics["test/acc"])
    # model size and diagnostics time in metrics.json
    assert result.metrics["model/params"] == sum(p.numel() for p in result.module.model.parameters())
    assert 0 < result.metrics["model/size_bytes"] < 4 * result.metrics["model/params"]
    assert result.metrics["diagnostics/seconds"] > 0


def test_diagnostics_leave_training_unchanged(tmp_path):
    # Stochastic binarization draws from the global RNG: any draw by the callback would change the run.
    runs = []
    for every in (1, 0):
        cfg = compose_cfg(["quant=bnn", "quant.stochastic=true", "model=mlp", *FAST, "trainer.deterministic=true",
                           f"callbacks.diagnostics.every_n_steps={every}", "logger=csv"],
                          output_dir=tmp_path / f"every{every}")
        runs.append(train(cfg))
    assert runs[0].metrics["train/loss_epoch"] == runs[1].metrics["train/loss_epoch"]
    assert runs[0].metrics["test/loss"] == runs[1].metrics["test/loss"]
    for a, b in zip(runs[0].module.state_dict().values(), runs[1].module.state_dict().values()):
        assert torch.equal(a, b)
