"""qat_uint8 as an ONNX QDQ model: runs in onnxruntime and agrees with the fake-quant model."""

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from qat.export import export_model  # noqa: E402
from qat.export.onnx_export import OnnxUnsupported, run, session, to_onnx  # noqa: E402
from qat.export.trace import trace  # noqa: E402
from tests.export.models import NORM, SHAPE, deployed, inputs  # noqa: E402


@pytest.mark.parametrize("model", ["resnet20", "vgg_small", "mlp"])
def test_onnx_qdq_agrees_with_fake_quant(tmp_path, model):
    m, r = deployed(model, "qat_uint8")
    res = export_model(m, tmp_path / "e", input_shape=SHAPE, normalization=NORM, recipe=r)
    assert res.onnx is not None and res.onnx.is_file()
    import onnx

    ops = {n.op_type for n in onnx.load(str(res.onnx)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = inputs(64)
    with torch.no_grad():
        ref = m(x)
    out = run(session(res.onnx, threads=1), x)
    diff = (out - ref).abs().max()
    assert diff <= 0.05 * ref.abs().max()
    agree = out.argmax(1) == ref.argmax(1)
    assert agree.float().mean() >= 0.9
    top2 = ref.topk(2, dim=1).values
    assert torch.all((top2[:, 0] - top2[:, 1])[~agree] <= 2 * diff)  # only near-ties can flip


def test_onnx_refuses_binary_codes():
    m, _ = deployed("mlp", "bnn")
    nodes, i, o = trace(m, torch.zeros(2, *SHAPE))
    with pytest.raises(OnnxUnsupported, match="no (QuantizeLinear|DequantizeLinear) form"):
        to_onnx(m, nodes, i, o, SHAPE)
