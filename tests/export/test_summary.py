"""summary.md: one row per layer, bytes that add up, MAC shares, compression against fp32."""

import re

import pytest
import torch

from qat.export import export_model, fp32_state_dict_bytes
from qat.export.summary import layer_bytes, mac_shares
from tests.export.models import NORM, SHAPE, build, deployed


@pytest.mark.parametrize("recipe,dominant", [("bnn", "binary"), ("twn", "ternary"), ("qat_uint8", "8-bit")])
def test_summary_rows_and_totals(tmp_path, recipe, dominant):
    m, r = deployed("resnet20", recipe)
    res = export_model(m, tmp_path / "e", input_shape=SHAPE, normalization=NORM, recipe=r, onnx=False)
    text = (res.folder / "summary.md").read_text()
    names = [n for n, mod in m.named_modules() if type(mod).__name__.startswith(("Quant", "Conv", "Linear"))]
    assert len(res.layers) == len(names) == 20
    for layer in res.layers:
        assert f"| `{layer.name}` |" in text
    per, rest = layer_bytes(res.layers, res.tensors)
    assert sum(per.values()) + rest == sum(a.nbytes for a in res.tensors.values())
    shares = mac_shares(res.layers)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert max(shares, key=shares.get) == dominant
    assert re.search(rf"\| {dominant} MACs \| [\d,]+ \(\d+\.\d%\) \|", text)
    # compression is against the network's float state_dict: every parameter and BatchNorm statistic
    # (the recipe may add layers, e.g. bnn's BatchNorm after the classifier), not quantizer state
    params = sum(4 * p.numel() for p in m.parameters())
    stats = sum(4 * (b.running_mean.numel() + b.running_var.numel()) + 8 for b in m.modules()
                if isinstance(b, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)))
    assert res.fp32_bytes == params + stats >= fp32_state_dict_bytes(build("resnet20"))
    assert f"{res.fp32_bytes / res.size_bytes:.2f}x" in text
