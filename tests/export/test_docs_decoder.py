"""The numpy decoder in docs/export-format.md decodes every weight as the library does."""

import ast
import re

import numpy as np
import pytest

from qat.config import ROOT
from qat.export import export_model
from qat.runtime import load, packing
from qat.runtime.ops import Layer
from tests.export.models import NORM, SHAPE, deployed

DOC = ROOT / "docs" / "export-format.md"


def docs_decoder() -> dict:
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(# qat export decoder.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/export-format.md must hold exactly one decoder block"
    tree = ast.parse(blocks[0])
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module)])}
    assert imported <= {"numpy", "hashlib", "json", "struct", "pathlib"}, imported
    ns: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), ns)  # noqa: S102 - our own documentation
    return ns


@pytest.mark.parametrize("recipe,model,packing_", [
    ("bnn", "resnet20", "bits"), ("twn", "vgg_small", "trits"), ("admm_ternary", "mlp", "bits"),
    ("qat_uint8", "resnet20", "bits"), ("log", "mlp", "bits"), ("tanh", "vgg_small", "bits"),
    ("int", "mlp", "bits"), ("linear", "resnet20", "bits"), ("bwn", "resnet20", "bits")])
def test_docs_decoder_equals_library(tmp_path, recipe, model, packing_):
    m, r = deployed(model, recipe)
    res = export_model(m, tmp_path / "e", input_shape=SHAPE, normalization=NORM, recipe=r,
                       ternary_packing=packing_, onnx=False)
    dec = docs_decoder()
    manifest, tensors, layers = dec["decode_export"](res.folder)
    assert manifest == res.manifest
    assert set(tensors) == set(res.tensors)
    for name, arr in res.tensors.items():
        np.testing.assert_array_equal(tensors[name], arr)
    program = load(res.folder)
    runtime_layers = {op.name: op for op in program.ops if isinstance(op, Layer)}
    assert set(layers) == set(runtime_layers)
    for op in manifest["ops"]:
        if op["op"] not in ("conv2d", "linear"):
            continue
        w, got = op["weight"], layers[op["name"]]
        lib = runtime_layers[op["name"]].w_float
        lib = lib.permute(0, 2, 3, 1).numpy() if lib.dim() == 4 else lib.numpy()
        if w["encoding"] != "float32":
            np.testing.assert_array_equal(got["codes"], packing.unpack(res.tensors[w["tensor"]], w, np.int64))
        if w["kind"] in ("log", "tanh"):
            # codebook levels vs torch's evaluation of exp / atanh on the weight tensor: one ulp at most
            np.testing.assert_array_max_ulp(got["weight"].astype(np.float32), lib, maxulp=1)
        else:
            np.testing.assert_array_equal(got["weight"], lib)


def test_docs_decoder_detects_corruption(tmp_path):
    m, r = deployed("mlp", "bnn")
    res = export_model(m, tmp_path / "e", input_shape=SHAPE, normalization=NORM, recipe=r, onnx=False)
    blob = bytearray((res.folder / "tensors.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (res.folder / "tensors.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="SHA256SUMS"):
        docs_decoder()["decode_export"](res.folder)
