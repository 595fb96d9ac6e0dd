"""One definition of ``step``, the same from qat's Classifier, from QATCallback and from a plain loop;
hooks without Lightning objects; missing information is an error that says what to pass."""

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import qat
from qat.module import Classifier
from qat.quant.recipe import Recipe


class Recording(Recipe):
    """Records what the hooks receive, and the trainer's global_step once each step is done."""

    name = "recording"

    def __init__(self):
        self.calls = []

    def on_train_start(self, model, total_steps=None, step=0):
        super().on_train_start(model, total_steps, step)
        self.calls.append(("start", total_steps, step))

    def after_optimizer_step(self, model, step):
        self.calls.append(("step", step))


class GlobalStepAfterBatch(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(trainer.global_step)


class UserModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(module, callbacks, accumulate=1):
    data = TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,)))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, accumulate_grad_batches=accumulate,
                         num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(data, batch_size=2))
    return trainer


@pytest.mark.parametrize("accumulate", [1, 2])
def test_step_is_the_number_of_steps_taken_from_classifier_and_callback(accumulate):
    steps = 4 // accumulate
    expected = [("start", steps, 0)] + [("step", s) for s in range(1, steps + 1)]

    recipe, seen = Recording(), GlobalStepAfterBatch()
    fit(Classifier(nn.Linear(2, 2), 2, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), recipe=recipe),
        [seen], accumulate)
    assert recipe.calls == expected
    # The numbers Lightning's global_step shows once each step is done (0 before the first one,
    # on batches that only accumulate).
    assert sorted(set(seen.seen) - {0}) == list(range(1, steps + 1))

    recipe = Recording()
    fit(UserModule(), [qat.QATCallback(recipe, module="net")], accumulate)
    assert recipe.calls == expected


def test_qat_callback_prepares_before_the_optimizer_and_finalizes_at_test():
    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def test_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            self.n_params = sum(p.numel() for p in self.parameters())
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Net()
    recipe = qat.recipe("admm_ternary", update_every=1, first="quant", last="quant")
    trainer = fit(module, [qat.QATCallback(recipe, module="net")])
    assert isinstance(module.net[0], qat.quant.layers.QuantLinear)
    trainer.test(module, DataLoader(TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))))
    assert module.net[0].weight.unique().numel() <= 3  # finalize: W <- its ternary projection
    with pytest.raises(TypeError, match="needs a recipe"):
        qat.QATCallback(object())
    with pytest.raises(AttributeError, match="has no such submodule"):
        fit(Net(), [qat.QATCallback("bnn", module="body")])


def test_scheduled_recipes_need_their_information():
    model = qat.recipe("qat_uint8").prepare(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(RuntimeError, match=r"before on_train_start; call recipe.on_train_start\(model, total_steps=N\)"):
        qat.recipe("qat_uint8").after_optimizer_step(model, 1)
    with pytest.raises(ValueError, match=r"freeze_bn=0.9, freeze_observers=0.95 are fractions of training.*total_steps=N"):
        qat.recipe("qat_uint8").on_train_start(model)
    qat.recipe("qat_uint8", freeze_bn=20, freeze_observers=30).on_train_start(model)  # step counts: no length needed

    class Trainer:
        estimated_stepping_batches, global_step = 10, 0

    with pytest.raises(TypeError, match="takes no trainer"):
        qat.recipe("qat_uint8").on_train_start(model, Trainer())
    with pytest.raises(ValueError, match="total_steps must be a positive number"):
        qat.recipe("qat_uint8").on_train_start(model, total_steps=float("inf"))
    admm = qat.recipe("admm_ternary", first="quant", last="quant")
    ternary = admm.prepare(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="the ADMM phase, projected phase and rho schedule are shares of the whole run"):
        admm.on_train_start(ternary)
    # fixed steps throughout (no projected phase, a fixed update period and rho growth): no length needed
    qat.recipe("admm_ternary", rho_growth=1.1, update_every=10, finetune=None, first="quant",
               last="quant").on_train_start(ternary)


def test_export_callback_says_what_it_needs_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"needs input_shape=\(C, H, W\) and normalization="):
        fit(UserModule(), [qat.QATCallback("bnn", module="net"), qat.ExportCallback(str(tmp_path))])
    with pytest.raises(ValueError, match="input_shape must be"):
        qat.ExportCallback(str(tmp_path), input_shape=(3, 32))
