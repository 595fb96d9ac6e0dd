"""GPU-only checks, run by scripts/gpu_check.sh (``pytest -m gpu``); skipped without CUDA.

Fake-quant kernels on the GPU against the CPU, export agreement of a model trained on the GPU with
the trainer=gpu defaults (bf16-mixed, channels_last, cuDNN benchmark), and DDP with nccl on one device.
"""

import pytest
import torch

from qat.experiment import train
from qat.quant.quantizers import AffineQuant, BinaryWeightQuant, LinearQuant, SignQuant, TanhQuant, TernaryQuant
from tests.conftest import compose_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

QUANTIZERS = {
    "sign": lambda: SignQuant(),
    "binary_weight": lambda: BinaryWeightQuant(),
    "ternary": lambda: TernaryQuant(),
    "affine_per_channel": lambda: AffineQuant(bits=8, per_channel=True),
    "affine_per_tensor": lambda: AffineQuant(bits=8, per_channel=False),
    "linear": lambda: LinearQuant(bits=4, sf=3),
    "tanh": lambda: TanhQuant(bits=4),
}


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_fake_quant_forward_and_backward_on_gpu_match_cpu(name):
    torch.manual_seed(0)
    x = torch.randn(32, 16, 5, 5)
    out = {}
    for dev in ("cpu", "cuda"):
        q = QUANTIZERS[name]().to(dev).train()
        xi = x.to(dev).requires_grad_(True)
        y = q(xi)
        y.backward(torch.ones_like(y))
        out[dev] = (y.detach().cpu(), xi.grad.cpu())
    (yc, gc), (yg, gg) = out["cpu"], out["cuda"]
    # same codes up to float rounding of x / scale at a rounding boundary: at most 1 in 10^4 elements
    assert (yc != yg).float().mean() <= 1e-4, name
    assert (gc != gg).float().mean() <= 1e-4, name


@pytest.mark.parametrize("quant,agreement", [("bnn", 1.0), ("admm_ternary", 1.0), ("qat_uint8", 0.995)])
def test_model_trained_on_gpu_exports_with_cpu_agreement(quant, agreement, tmp_path):
    res = train(compose_cfg(["trainer=gpu", f"quant={quant}", "data=synthetic", "data.n_train=512",
                             "data.n_test=512", "model=resnet20", "model.width=8", "trainer.max_epochs=2",
                             "logger=csv", "callbacks.progress_bar.refresh_rate=0"], output_dir=tmp_path))
    assert res.trainer.precision == "bf16-mixed" and res.trainer.strategy.root_device.type == "cuda"
    assert res.module.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert res.metrics["export/agreement"] >= agreement, res.metrics


def test_ddp_on_one_gpu_uses_nccl(tmp_path):
    res = train(compose_cfg(["trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=1", "quant=bnn",
                             "data=synthetic", "model=resnet20", "model.width=4", "trainer.max_epochs=1",
                             "logger=csv", "callbacks.progress_bar.refresh_rate=0"], output_dir=tmp_path))
    assert res.trainer.strategy.process_group_backend == "nccl"
    assert res.metrics["export/agreement"] == 1.0
