"""The analytic packed model size, and the tensor hashes the DDP state check compares."""

import math

import pytest
import torch
from torch import nn

from qat.callbacks import ModelSize, model_size
from qat.callbacks.ddp_sync import SyncQuantState, tensor_hashes
from qat.quant.affine import QATUint8
from qat.quant.binary import BNN
from qat.quant.ternary import ADMMTernary


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 20, bias=False), nn.BatchNorm1d(20), nn.ReLU(),
                         nn.Linear(20, 4))


def test_float_model_is_four_bytes_a_parameter():
    model = mlp()
    n = sum(p.numel() for p in model.parameters())
    assert model_size(model) == {"size_bytes": 4 * n, "params": n}


@pytest.mark.parametrize("recipe, bits", [(BNN(first="quant", last="fp32"), 1),
                                          (ADMMTernary(first="quant", last="fp32"), 2),
                                          (QATUint8(last="fp32"), 8)])
def test_quantized_weights_count_at_their_bit_width(recipe, bits):
    model = recipe.prepare(mlp())
    assert model[1].weight_quant.bits == bits
    # the 48x20 quantized weights packed, BatchNorm's 2 x 20 and the float classifier's 20x4 + 4 in float32
    assert model_size(model)["size_bytes"] == math.ceil(48 * 20 * bits / 8) + 4 * 40 + 4 * 84


def test_shared_weight_counts_once():
    lin = nn.Linear(8, 8, bias=False)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert model_size(model) == {"size_bytes": 4 * 64, "params": 64}


def test_callback_publishes_metrics():
    cb = ModelSize()
    module = nn.Module()
    module.model = BNN(first="quant").prepare(mlp())
    cb.on_fit_start(None, module)
    assert cb.extra_metrics["model/params"] == sum(p.numel() for p in module.model.parameters())
    assert cb.extra_metrics["model/size_bytes"] == model_size(module.model)["size_bytes"]


def test_tensor_hashes_see_any_change_and_single_process_sync_is_a_no_op():
    a = QATUint8().prepare(mlp())
    b = QATUint8().prepare(mlp())
    assert tensor_hashes(a) == tensor_hashes(b)
    with torch.no_grad():
        b[1].weight[0, 0] += 1e-7
    assert {k for k in tensor_hashes(a) if tensor_hashes(a)[k] != tensor_hashes(b)[k]} == {"param:1.weight"}
    cb = SyncQuantState(check_every_n_steps=1)
    cb.on_validation_epoch_start(None, a)  # not distributed: nothing to do, nothing raised
    assert cb.checks == 0
    with pytest.raises(ValueError, match="check_every_n_steps"):
        SyncQuantState(check_every_n_steps=-1)
