"""The native runtime computes exactly what the reference runtime computes, on every recipe's
export: the same int32 accumulators and codes at every value (``run(keep=True)``, unfused) and the
same output with the fused plan, on every path of the library (AVX-512, AVX2, scalar); and the
backend and ISA are chosen as documented."""

import pytest
import torch

from qat.export import export_model
from qat.runtime import load
from qat.runtime.native import choose_backend, library as L, ops as N
from qat.runtime.native.ops import IntLayer
from qat.runtime.native.residual import FloatThreshold, ResidualStage
from qat.runtime.native.values import NATIVE
from tests.export.models import NORM, RECIPES, SHAPE, deployed, inputs
from tests.runtime.native.isas import ALL_ISAS

pytestmark = pytest.mark.skipif(L.load_library() is None, reason="native kernel library not built")
NATIVE_BACKENDS = [f"native-{isa}" for isa in L.available_isas() if isa != "avx512"]
# what must run natively: the layers whose compute mode has a kernel
EXPECT_NATIVE = {"bnn": "xnor_popcount", "qat_uint8": "int", "linear": "int", "twn_sign": "ternary_popcount",
                 "admm_ternary_sign": "ternary_popcount", "admm_ternary_uint8": "int"}
# the ternary recipes with quantized inputs (quant.activations)
VARIANTS = {"twn_sign": ("twn", {"activations": "sign"}), "admm_ternary_sign": ("admm_ternary", {"activations": "sign"}),
            "admm_ternary_uint8": ("admm_ternary", {"activations": "uint8"})}
# every recipe on ResNet-20; VGG-small (max pooling, flatten, linear layers) and the MLP for the
# recipes with native kernels
CASES = [("resnet20", r) for r in sorted(RECIPES) + sorted(VARIANTS)] + [
    (m, r) for m in ("vgg_small", "mlp") for r in EXPECT_NATIVE if r not in ("admm_ternary_sign", "admm_ternary_uint8")]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("native_exports")
    out = {}
    for model, recipe in CASES:
        name, kw = VARIANTS.get(recipe, (recipe, {}))
        m, r = deployed(model, name, **kw)
        out[model, recipe] = export_model(m, root / f"{recipe}_{model}", input_shape=SHAPE,
                                          normalization=NORM, recipe=r, onnx=False).folder
    return out


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("model,recipe", CASES)
def test_every_value_is_bit_identical(exports, model, recipe, isa):
    folder = exports[model, recipe]
    ref = load(folder, backend="reference")
    x = inputs(5)
    want = ref.run(x, keep=True)
    out, out1 = ref(x), ref(x[:1])
    prog = load(folder, isa=isa)
    backend = prog.backend
    assert prog.isa == L.ISA_NAMES[isa] and backend == ("native-scalar" if isa == "scalar" else "native-avx2")
    got = prog.run(x, keep=True)
    assert set(got) == set(want)
    for name, v in want.items():
        assert not isinstance(got[name], NATIVE)
        assert got[name].dtype == v.dtype and torch.equal(got[name], v), f"{backend}: value {name}"
    assert torch.equal(prog(x), out)  # the fused plan
    assert torch.equal(prog(x[:1]), out1)  # batch 1
    if recipe in EXPECT_NATIVE:
        computes = {op["name"] for op in prog.manifest["ops"] if op.get("compute") == EXPECT_NATIVE[recipe]}
        assert computes and computes <= set(prog.native.native_ops(fused=False))
    if isa == "avx512" and recipe in ("qat_uint8", "admm_ternary_uint8"):  # int8 weights, uint8 codes: all on VNNI
        kernels = {s.kernel for s in prog.native.plans[True] if isinstance(s, IntLayer)}
        assert kernels == {"avx512"}
    if isa == "avx512" and model == "vgg_small" and recipe == "bnn":  # the float first layer's threshold
        assert any(isinstance(s, FloatThreshold) for s in prog.native.plans[True])
    if isa == "avx512" and model == "resnet20" and recipe in EXPECT_NATIVE:  # each block's float chain fused
        stages = [s for s in prog.native.plans[True] if isinstance(s, ResidualStage)]
        assert len(stages) >= 9, [s.name for s in stages]


def test_fusion_removes_intermediate_values(exports):
    prog = load(exports["vgg_small", "bnn"], backend=NATIVE_BACKENDS[0])
    fused, unfused = prog.native.plans[True], prog.native.plans[False]
    assert len(fused) < len(unfused)
    assert "features_3.acc" not in {o for s in fused for o in s.outputs}  # conv -> maxpool -> threshold


def test_backend_choice(monkeypatch, exports):
    folder = exports["resnet20", "bnn"]
    monkeypatch.delenv("QAT_NATIVE_ISA", raising=False)
    monkeypatch.setenv("QAT_RUNTIME", "reference")
    assert load(folder).backend == "reference" and load(folder).native is None
    monkeypatch.delenv("QAT_RUNTIME")
    best = load(folder)
    assert (best.backend, best.isa) == (NATIVE_BACKENDS[0], L.ISA_NAMES[L.available_isas()[0]])
    monkeypatch.setenv("QAT_NATIVE_ISA", "scalar")
    assert (load(folder).backend, load(folder).isa) == ("native-scalar", "scalar")
    if "avx2" in L.available_isas():
        monkeypatch.setenv("QAT_NATIVE_ISA", "avx2")
        assert (load(folder).backend, load(folder).isa) == ("native-avx2", "avx2")
        assert load(folder, backend="native-avx2").isa == "avx2"  # the variable picks the backend's path
    with pytest.raises(ValueError, match="does not belong"):
        load(folder, backend="native-scalar", isa=L.available_isas()[0] if len(L.available_isas()) > 1 else "x")
    monkeypatch.setenv("QAT_NATIVE_ISA", "sse9")
    with pytest.raises(ValueError, match="QAT_NATIVE_ISA"):
        choose_backend()
    with pytest.raises(ValueError, match="unknown runtime backend"):
        choose_backend("gpu")


def _native_and_reference(exports, recipe):
    """(export folder, a batch of 5, the reference runtime's output on it, the native program)"""
    folder = exports["resnet20", recipe]
    x = inputs(5)
    return folder, x, load(folder, backend="reference")(x), load(folder)


@pytest.mark.parametrize("recipe", ["bnn", "qat_uint8"])
def test_large_batches_run_in_chunks(monkeypatch, exports, recipe):
    from qat.runtime.native import plan

    folder, x, want, prog = _native_and_reference(exports, recipe)
    calls = []
    run_fused = prog.native._run_fused
    monkeypatch.setattr(prog.native, "_run_fused", lambda part: calls.append(len(part)) or run_fused(part))
    monkeypatch.setattr(plan, "CHUNK", 2)
    assert torch.equal(prog(x), want)
    assert sorted(calls) == [1, 2, 2]
    for backend in (None, "reference"):
        with pytest.raises(ValueError, match="empty"):
            load(folder, backend=backend)(x[:0])


@pytest.mark.parametrize("recipe", ["bnn", "qat_uint8"])
def test_rows_split_over_two_threads_give_the_same_output(monkeypatch, exports, recipe):
    from qat.runtime.native import ops

    _, x, want, prog = _native_and_reference(exports, recipe)
    monkeypatch.setattr(ops, "SPLIT_SECONDS", 1e-9)  # every call splits, once timed alone
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(2):  # the first call times each step alone, the second splits its rows
            assert torch.equal(prog(x), want)
        assert all(t > 1e-9 for s in prog.native.plans[True] for t in getattr(s, "alone", {}).values())
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("recipe", ["bnn", "qat_uint8"])
def test_chunks_run_on_two_threads_give_the_same_output(monkeypatch, exports, recipe):
    import threading

    from qat.runtime.native import ops, plan

    _, x, want, prog = _native_and_reference(exports, recipe)
    monkeypatch.setattr(plan, "CHUNK", 1)
    monkeypatch.setattr(ops, "SPLIT_SECONDS", 1e-9)  # (a kernel call would split its rows if it could)
    threads = []
    run_fused = prog.native._run_fused
    monkeypatch.setattr(prog.native, "_run_fused",
                        lambda part: threads.append(threading.get_ident()) or run_fused(part))
    timed = [dict(getattr(s, "alone", {})) for s in prog.native.plans[True]]  # (by the checks at load)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(prog(x), want)
    finally:
        torch.set_num_threads(before)
    assert len(threads) == 5 and len(set(threads)) == 2
    # inside a chunk, each kernel call ran whole on its thread: none was timed for a split
    assert [dict(getattr(s, "alone", {})) for s in prog.native.plans[True]] == timed



@pytest.mark.parametrize("recipe", ["bnn", "qat_uint8"])
def test_ops_reuse_their_output_buffers_and_the_output_is_a_copy(exports, recipe):
    folder, x, want, prog = _native_and_reference(exports, recipe)
    other = inputs(5) * -1.5
    kept = lambda: {(i, k): t.data_ptr() for i, s in enumerate(prog.native.plans[True])  # noqa: E731
                    for k, t in getattr(s, "_outputs", {}).items()}
    first = prog(x)
    buffers = kept()
    assert len(buffers) >= sum(isinstance(s, N.NativeOp) for s in prog.native.plans[True])
    second = prog(other)
    assert kept() == buffers  # the same buffers, written again
    assert torch.equal(first, want)  # not overwritten by the second call
    assert torch.equal(second, load(folder, backend="reference")(other))
    prog.run(x, keep=True)  # the unfused plan (every value returned) takes fresh tensors
    assert kept() == buffers
