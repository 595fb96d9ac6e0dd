"""The generated C program: compiles with -Werror, uses no float and no malloc, and predicts what
the Python runtime predicts, with fixed-point scores equal to its logits to within their precision."""

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from qat.export import export_model
from qat.export.c import Unsupported, generate, plan
from qat.export.c.__main__ import main as cli
from qat.export.c.toolchain import build_example, cortex_m4_link_symbols, cortex_m4_sizes
from qat.runtime import load, load_artifact
from tests.export.models import NORM, SHAPE, deployed

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed")


# ternary weights x sign inputs (TBN), integer end to end: the first layer on the image, the last one's logits
VARIANTS = {"twn_sign": ("twn", {"activations": "sign", "first": "weights_only", "last": "quant"})}


def export(tmp_path, model, recipe):
    name, kw = VARIANTS.get(recipe, (recipe, {}))
    m, r = deployed(model, name, **kw)
    return export_model(m, tmp_path / f"{recipe}_{model}", input_shape=SHAPE, normalization=NORM, recipe=r,
                        onnx=False).folder


def run(binary, images: torch.Tensor, tmp_path) -> np.ndarray:
    raw = tmp_path / "images.raw"
    raw.write_bytes(images.numpy().tobytes())
    res = subprocess.run([str(binary), str(raw)], check=True, capture_output=True, text=True)
    return np.array([[int(v) for v in line.split()] for line in res.stdout.splitlines()], dtype=np.int64)


@needs_gcc
@pytest.mark.parametrize("model", ["vgg_small", "mlp"])
@pytest.mark.parametrize("recipe", ["bnn", "qat_uint8", "twn_sign"])
def test_program_matches_runtime(tmp_path, recipe, model):
    folder, p = generate(export(tmp_path, model, recipe), tmp_path / "program")
    binary = build_example(folder, tmp_path / "classify")  # gcc -std=c99 -O2 -Wall -Wextra -Wpedantic -Werror
    images = torch.randint(0, 256, (300, *SHAPE), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    out = run(binary, images, tmp_path)
    program = load(tmp_path / f"{recipe}_{model}")
    logits = program(program.preprocess(images)).double().numpy()
    assert out.shape == (300, 1 + logits.shape[1])
    scores = out[:, 1:] / 2.0 ** p.score_frac_bits
    # scores: one rounding of the logit's fixed-point value (plus the 31-bit multiplier's relative
    # error); qat_uint8's integer path is exact, bnn's fixed-point input layer can flip a sign only
    # where the model's float sum is within ~2^-20 of a threshold
    close = (np.abs(scores - logits) <= 2.0 ** -p.score_frac_bits + 1e-6 * np.abs(logits)).all(axis=1)
    assert close.mean() >= (1.0 if recipe == "qat_uint8" else 0.99), f"{(~close).sum()} images differ"
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2.0 ** (2 - p.score_frac_bits)
    assert np.array_equal(out[close & clear, 0], logits.argmax(1)[close & clear])
    assert np.array_equal(out[:, 0], out[:, 1:].argmax(1))  # the class: the first largest score


def _code(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def test_program_files_integer_only(tmp_path):
    folder, p = generate(export(tmp_path, "vgg_small", "qat_uint8"), tmp_path / "program")
    top = sorted(f.name for f in folder.iterdir() if f.is_file())
    assert {"model.h", "model.c", "qat_kernels.h", "qat_input.h", "qat_scores.c", "summary.md"} <= set(top)
    ternary, _ = generate(export(tmp_path, "mlp", "twn_sign"), tmp_path / "ternary")
    assert (ternary / "ternary_conv.c").is_file()
    for f in [*folder.rglob("*.[ch]"), *ternary.rglob("*.[ch]")]:
        code = _code(f.read_text())
        assert not re.search(r"\b(float|double|malloc|calloc|realloc)\b", code), f.name
        if f.parent in (folder, ternary):  # a user's firmware links the top level as is
            assert not re.search(r"\bmain\s*\(", code), f.name
    summary = (folder / "summary.md").read_text()
    assert f"| flash: weights and constants (const arrays) | {p.flash_bytes:,} |" in summary
    assert f"| RAM: activation arena (largest pair of live activation buffers) | {p.arena_bytes:,} |" in summary
    # the arena is the largest input + output pair of a step, and each step's output fits beside its input
    pairs = [(0 if s.src.kind == "image" else s.src.nbytes) + (s.dst.nbytes if s.dst else 0) for s in p.steps]
    assert p.arena_bytes == max(pairs)


@pytest.mark.parametrize("recipe,op", [("bnn", "batchnorm 'bn1'"), ("qat_uint8", "dequantize 'conv1'")])
def test_refuses_float_ops(tmp_path, capsys, recipe, op):
    folder = export(tmp_path, "resnet20", recipe)
    manifest, tensors = load_artifact(folder)
    with pytest.raises(Unsupported, match=re.escape(op)):
        plan(manifest, tensors)
    assert cli([str(folder), str(tmp_path / "program")]) == 2
    assert op in capsys.readouterr().err
    assert not (tmp_path / "program").exists()
    assert "## Standalone C program" in (folder / "summary.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="apt-get install gcc-arm-none-eabi")
@pytest.mark.parametrize("recipe", ["bnn", "qat_uint8", "twn_sign"])
def test_cortex_m4_cross_compile(tmp_path, recipe):
    """-mcpu=cortex-m4 -mthumb -Os -Werror; the model's constants land in flash (.text/.rodata), its
    arena and scratch in .bss, nothing in .data."""
    folder, p = generate(export(tmp_path, "vgg_small", recipe), tmp_path / "program")
    sizes = cortex_m4_sizes(folder)
    assert sizes["model"]["bss"] == p.ram_bytes
    assert sizes["model"]["text"] >= p.flash_bytes
    assert sizes["total"]["data"] == 0
    # it links into a firmware image with no floating-point helper from libgcc
    symbols = cortex_m4_link_symbols(folder, tmp_path)
    assert "qat_predict" in symbols
    assert not [s for s in symbols if re.match(r"__aeabi_[fd]|__(add|sub|mul|div)[sd]f3", s)]
