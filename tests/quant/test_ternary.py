"""ADMM ternary: the deployed form (exactly reversible, equal to finalize), the projected phase, the schedule."""

import copy
import pytest
import torch

from qat.models import resnet20
from qat.quant.ternary import ADMMTernary, ADMMTernaryWeight


def admm_model(total_steps=20, **kw):
    torch.manual_seed(0)
    recipe = ADMMTernary(**kw)
    model = recipe.prepare(resnet20(num_classes=10, width=4))
    recipe.on_train_start(model, total_steps=total_steps)
    return recipe, model


def admm_layers(recipe, model):
    layers = recipe._admm_layers(model)
    assert layers
    return [layer for _, layer in layers]


def train_steps(recipe, model, steps, start=1):
    """Some SGD steps on random data with the ADMM penalty, calling the recipe's hooks like the trainer."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for step in range(start, start + steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        penalty = recipe.penalty(model)
        if penalty is not None:
            loss = loss + penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        recipe.after_optimizer_step(model, step)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("steps", [5, 18])  # ADMM phase; projected phase (finetune 0.3 of 20 steps)
def test_deployed_form_is_exactly_reversible_and_equals_finalize(steps):
    recipe, model = admm_model(update_every=2, finetune=0.3)
    train_steps(recipe, model, steps)
    projected = steps >= 14
    assert all(bool(l.weight_quant.projecting) == projected for l in admm_layers(recipe, model))
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    before = snapshot(model)
    train_form = model(x)
    finalized = copy.deepcopy(model)
    recipe.finalize(finalized)
    with recipe.deployed(model):
        deployed = model(x)
        for layer in admm_layers(recipe, model):
            assert layer.weight.unique().numel() <= 3
    after = snapshot(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # bit for bit, buffers included
    assert torch.equal(deployed, finalized(x))
    # ADMM phase: the float W trains, G is deployed; projected phase: Proj(W) both trains and is deployed.
    assert torch.equal(deployed, train_form) == projected
    assert torch.equal(model(x), train_form)


def test_deployed_form_is_restored_when_the_block_raises():
    recipe, model = admm_model(update_every=2)
    train_steps(recipe, model, 3)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with recipe.deployed(model):
            raise RuntimeError("boom")
    for k, v in snapshot(model).items():
        assert torch.equal(before[k], v), k


def test_projected_phase_trains_the_ternary_weights_with_a_straight_through_gradient():
    recipe, model = admm_model(total_steps=10, finetune=0.5)
    train_steps(recipe, model, 4)
    layer = admm_layers(recipe, model)[0]
    assert not bool(layer.weight_quant.projecting) and recipe.penalty(model) is not None
    recipe.after_optimizer_step(model, 5)
    assert bool(layer.weight_quant.projecting) and recipe.penalty(model) is None
    w = layer.weight.detach().clone().requires_grad_(True)
    wq = layer.weight_quant(w)
    assert wq.unique().numel() <= 3
    _, proj = layer.weight_quant.projection(w)
    assert torch.equal(wq.detach(), proj)
    g = torch.randn_like(w)
    wq.backward(g)
    assert torch.equal(w.grad, g)  # straight through


def test_rho_grows_to_rho_max_over_the_admm_phase_and_residual_is_logged():
    torch.manual_seed(0)
    recipe = ADMMTernary(rho=1e-3, rho_max=1.0, finetune=0.2, first="quant", last="quant")
    model = recipe.prepare(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(),
                                               torch.nn.Linear(8, 3)))
    recipe.on_train_start(model, total_steps=20)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    residuals = []
    for step in range(1, 17):
        loss = torch.nn.functional.cross_entropy(model(x), y) + (recipe.penalty(model) or 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recipe.after_optimizer_step(model, step)
        residuals.append(recipe.train_stats()["admm/residual"])
    q = admm_layers(recipe, model)[0].weight_quant
    assert int(q.updates) == 15 and bool(q.projecting)  # step 16 starts the projected phase
    assert float(q.rho) == pytest.approx(1.0, rel=1e-4)  # geometric: rho_max at the last ADMM update
    assert set(recipe.train_stats()) == {"admm/residual"}
    assert all(0 < r < 1 for r in residuals)  # ||W - G|| / ||W||: G is a projection of W + U, near W


def test_update_every_defaults_to_about_100_updates_over_the_admm_phase():
    recipe, _ = admm_model(total_steps=1000, finetune=0.3)
    assert recipe._every == 7
    recipe, _ = admm_model(total_steps=1000, finetune=None)
    assert recipe._every == 10
    recipe, _ = admm_model(total_steps=1000, update_every=50)
    assert recipe._every == 50


@pytest.mark.parametrize("kw, message", [
    (dict(finetune=1.0), "must leave an ADMM phase"),
    (dict(finetune=-2), "finetune"),
    (dict(finetune=1.5), "finetune"),
    (dict(update_every=2.5), "update_every"),
])
def test_bad_values_fail_at_construction(kw, message):
    with pytest.raises(ValueError, match=message):
        ADMMTernary(**kw)


def test_the_weight_quantizer_is_identity_outside_the_projected_phase():
    q = ADMMTernaryWeight(torch.Size([4, 3]))
    w = torch.randn(4, 3)
    assert q(w) is w
    q.projecting.fill_(True)
    assert q(w).unique().numel() <= 3
    q.finalized.fill_(True)
    assert q(w) is w


def test_the_scaled_dual_is_rescaled_when_rho_grows():
    """y = rho * U changes only by the dual step rho_old * (W - G), not by rho's growth (Boyd et al. 3.4.1)."""
    recipe = ADMMTernary(rho=1e-3, rho_growth=10.0, rho_max=1.0, update_every=1, finetune=None,
                         first="quant", last="quant")
    model = recipe.prepare(torch.nn.Sequential(torch.nn.Linear(6, 4)))
    recipe.on_train_start(model, total_steps=10)
    layer = admm_layers(recipe, model)[0]
    q = layer.weight_quant
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn_like(layer.weight))
        q.U.copy_(torch.randn_like(q.U))
    rho, y = float(q.rho), float(q.rho) * q.U.clone()
    recipe.after_optimizer_step(model, 1)
    assert float(q.rho) == pytest.approx(10 * rho)
    assert torch.allclose(float(q.rho) * q.U, y + rho * (layer.weight.detach() - q.G), atol=1e-7)


# ---------------------------------------------------------------------- activations (ternary weights, quantized inputs)
from torch import nn  # noqa: E402

from qat.experiment import train  # noqa: E402
from qat.quant.prepare import quantized_layers  # noqa: E402
from qat.quant.quantizers import AffineQuant, Identity, SignQuant  # noqa: E402
from qat.quant.ternary import TWN  # noqa: E402
from qat.runtime import load  # noqa: E402
from tests.conftest import compose_cfg  # noqa: E402


@pytest.mark.parametrize("recipe", [TWN, ADMMTernary])
def test_activations_value_is_checked_at_construction(recipe):
    with pytest.raises(ValueError, match="activations must be one of float, sign, uint8"):
        recipe(activations="int8")


@pytest.mark.parametrize("recipe", [TWN, ADMMTernary])
@pytest.mark.parametrize("activations, quant, act", [("float", Identity, nn.ReLU), ("sign", SignQuant, nn.Hardtanh),
                                                    ("uint8", AffineQuant, nn.ReLU)])
def test_activations_choose_the_input_quantizer_and_the_activation(recipe, activations, quant, act):
    r = recipe(activations=activations)
    model = r.prepare(resnet20(num_classes=10, width=4))
    layers = quantized_layers(model)
    assert layers and all(type(layer.input_quant) is quant for _, layer in layers)
    # sign inputs: every ReLU became bnn's hard tanh (a ReLU before a sign would make every input +1)
    assert any(isinstance(m, act) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU if act is nn.Hardtanh else nn.Hardtanh) for m in model.modules())
    if activations == "uint8":  # qat_uint8's: per tensor, 8 bits, EMA observer
        q = layers[0][1].input_quant
        assert q.bits == 8 and not q.per_channel
    assert r.describe()["activations"] == activations


FAST = ["model=resnet20", "model.width=8", "data=synthetic", "data.image_size=8", "data.n_train=128",
        "data.n_val=64", "data.n_test=128", "data.batch_size=32", "data.eval_batch_size=64", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=4", "logger=csv", "callbacks.progress_bar.refresh_rate=0",
        "+trainer.enable_model_summary=false"]


@pytest.mark.parametrize("quant, activations, compute", [("twn", "sign", "ternary_popcount"),
                                                         ("admm_ternary", "sign", "ternary_popcount"),
                                                         ("admm_ternary", "uint8", "int")])
def test_trained_ternary_network_exports_integer_layers_that_verify(tmp_path, quant, activations, compute):
    """A short training run leaves an export whose ternary layers compute on integers (fused thresholds
    or requantizations after them) and whose predictions agree with the model: exactly for sign inputs,
    to within requantization rounding for uint8; native and reference runtimes give the same logits."""
    torch.set_num_threads(1)
    train(compose_cfg([f"quant={quant}", f"quant.activations={activations}", *FAST], output_dir=tmp_path))
    import json

    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["export/agreement"] >= (1.0 if activations == "sign" else 0.995)
    folder = tmp_path / "export"
    manifest = json.loads((folder / "manifest.json").read_text())
    layers = [op for op in manifest["ops"] if op["op"] in ("conv2d", "linear")]
    assert sum(op["compute"] == compute for op in layers) == 18  # every conv of the 9 blocks
    fused = {op["op"] for op in manifest["ops"]}
    assert ("threshold" if activations == "sign" else "requantize") in fused
    if compute == "ternary_popcount":
        assert all(op["weight"]["encoding"] == "planes" for op in layers if op["compute"] == compute)
    x = torch.randn(6, 3, 8, 8)
    ref = load(folder, backend="reference")
    assert torch.equal(load(folder)(x), ref(x))
