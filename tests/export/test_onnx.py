"""qat_uint8 as ONNX: the exact form computes the runtime's integers in onnxruntime; the QDQ form is the
layout onnxruntime fuses into ``QLinearConv``."""

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from qat.export import export_model  # noqa: E402
from qat.export.onnx_export import OnnxUnsupported, run, session, to_onnx  # noqa: E402
from qat.runtime import load  # noqa: E402
from tests.export.models import NORM, SHAPE, deployed, inputs  # noqa: E402


def every_value(onnx_path, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The named values of an ONNX graph, exposed as extra outputs, on input ``x``."""
    m = onnx.load(str(onnx_path))
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_value_info(n, onnx.TypeProto()) for n in names)
    sess = session(m.SerializeToString(), threads=1)
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    return {n: torch.from_numpy(v) for n, v in zip(names, outs)}


@pytest.mark.parametrize(("model", "recipe"), [("resnet20", "qat_uint8"), ("vgg_small", "qat_uint8"),
                                             ("mlp", "qat_uint8"), ("resnet20", "linear")])
def test_onnx_computes_the_runtime_integers(tmp_path, model, recipe):
    m, r = deployed(model, recipe)
    res = export_model(m, tmp_path / "e", input_shape=SHAPE, normalization=NORM, recipe=r, onnx=True)
    assert res.onnx is not None and res.onnx.is_file()
    kinds = {n.op_type for n in onnx.load(str(res.onnx)).graph.node}
    assert ("ConvInteger" if model != "mlp" else "MatMulInteger") in kinds
    if recipe == "qat_uint8":  # per-channel weight zero points: the window-sum correction runs
        assert {"QuantizeLinear", "ReduceSum"} <= kinds
    else:  # int8 codes, floor(x 2^sf + 0.5), float BatchNorm
        assert {"Floor", "BatchNormalization"} <= kinds
    x = inputs(64)
    env = load(res.folder).run(x, keep=True)
    names = [v for op in res.manifest["ops"] for v in op["outputs"]]
    got = every_value(res.onnx, names, x)
    integer = [v for v in names if env[v].dtype != torch.float32]
    assert len(integer) >= 4
    for v in names:
        assert got[v].dtype == env[v].dtype and got[v].shape == env[v].shape, v
    # codes and accumulators are exact; a float op of onnxruntime's (BatchNorm, pooling mean) may
    # differ from torch's in the last bit, which could move a later code by one step: none does here
    assert all(torch.equal(got[v], env[v]) for v in integer)
    out = got[res.manifest["output"]]
    assert torch.equal(out, env[res.manifest["output"]])
    with torch.no_grad():
        ref = m(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.99


def test_onnx_qdq_form_runs_and_is_close(tmp_path):
    m, r = deployed("resnet20", "qat_uint8")
    res = export_model(m, tmp_path / "e", input_shape=SHAPE, normalization=NORM, recipe=r, onnx_form="qdq")
    kinds = {n.op_type for n in onnx.load(str(res.onnx)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= kinds and "ConvInteger" not in kinds
    x = inputs(64)
    with torch.no_grad():
        ref = m(x)
    out = run(session(res.onnx, threads=1), x)
    diff = (out - ref).abs().max()
    assert diff <= 0.05 * ref.abs().max()
    agree = out.argmax(1) == ref.argmax(1)
    top2 = ref.topk(2, dim=1).values
    assert torch.all((top2[:, 0] - top2[:, 1])[~agree] <= 2 * diff)  # only near-ties can flip


def test_onnx_refuses_binary_codes(tmp_path):
    m, r = deployed("mlp", "bnn")
    res = export_model(m, tmp_path / "e", input_shape=SHAPE, normalization=NORM, recipe=r, onnx=False)
    with pytest.raises(OnnxUnsupported, match="has no (ONNX|8-bit ONNX)"):
        to_onnx(res.manifest, res.tensors)
    with pytest.raises(ValueError, match="onnx_form"):
        export_model(m, tmp_path / "f", input_shape=SHAPE, normalization=NORM, recipe=r, onnx_form="fast")
