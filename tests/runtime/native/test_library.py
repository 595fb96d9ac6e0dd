"""The kernel sources keep the constraints the standalone C program relies on, compile warning-free
as C99 with nothing but the compiler, and refuse inconsistent sizes."""

import re
import shutil
import subprocess

import pytest
import torch

from qat.runtime.native import library as L

SOURCES = sorted(L.HERE.glob("*.c")) + sorted(L.HERE.glob("*.h"))
# the fused float stage of the runtime (residual.py): float code, never part of the C program
RUNTIME_ONLY = {"residual_avx512.c", "qat_residual.h"}


def _code(path):
    """The C source without comments and string literals."""
    text = re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.S)
    return re.sub(r'"(\\.|[^"\\])*"', '""', re.sub(r"//[^\n]*", " ", text))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_sources_use_no_float_malloc_or_python(path):
    code = _code(path)
    banned = ("malloc", "calloc", "realloc", "free", "Python")
    for word in banned if path.name in RUNTIME_ONLY else ("float", "double") + banned:
        assert not re.search(rf"\b{word}\b", code), f"{path.name} uses {word}"
    assert "#include <Python.h>" not in path.read_text()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_kernels_compile_as_strict_c99(tmp_path):
    srcs = [str(p) for p in sorted(L.HERE.glob("*.c"))]
    subprocess.run(["gcc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-c", *srcs],
                   check=True, cwd=tmp_path)


@pytest.mark.skipif(L.load_library() is None, reason="native kernel library not built")
def test_inconsistent_sizes_are_refused():
    lib = L.load_library()
    x = torch.zeros(1, 4, 4, 1, dtype=torch.int64)
    w = torch.zeros(64, dtype=torch.int64)
    acc = torch.zeros(1, 4, 4, 16, dtype=torch.int32)
    good = L.ConvGeom(1, 4, 4, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4)
    assert lib.qat_conv_geom_check(good) == 0
    for isa in L.available_isas():
        fn = getattr(lib, f"qat_binary_conv2d_{isa}")
        assert fn(good, L.ptr(x), L.ptr(w), L.ptr(acc), None, None, None, 0, 4) == 0
        bad_out = L.ConvGeom(1, 4, 4, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 5, 4)  # wrong output height
        assert fn(bad_out, L.ptr(x), L.ptr(w), L.ptr(acc), None, None, None, 0, 4) == L.QAT_EARG
        assert fn(good, L.ptr(x), L.ptr(w), L.ptr(acc), None, None, None, 0, 5) == L.QAT_EARG  # rows
        assert fn(good, L.ptr(x), L.ptr(w), None, None, None, None, 0, 4) == L.QAT_EARG  # no output
    if "avx512" in L.available_isas():  # the VNNI kernel: sizes, and the zero point's byte
        g = L.ConvGeom(1, 4, 4, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4)
        codes = torch.zeros(16, 72, dtype=torch.int32)
        w8 = torch.zeros(int(lib.qat_int8_weight_bytes(g)), dtype=torch.int8)
        assert lib.qat_int8_pack_weights(g, L.ptr(codes), None, L.ptr(w8)) == 0
        assert lib.qat_int8_pack_weights(g, L.ptr(codes.fill_(300)), None, L.ptr(w8)) == L.QAT_ERANGE
        xu = torch.zeros(1, 4, 4, 8, dtype=torch.uint8)
        scratch = torch.zeros(int(lib.qat_int8_conv_scratch_bytes(g)), dtype=torch.uint8)
        run = lambda geom, zx, r1: lib.qat_int_conv2d_avx512(geom, L.ptr(xu), L.U8, zx, L.ptr(w8), L.ptr(scratch),
                                                            L.ptr(acc), None, None, 0, r1)
        assert run(g, 3, 4) == 0
        assert run(g, -1, 4) == L.QAT_ERANGE  # uint8 codes with a negative zero point
        assert run(bad_out, 3, 4) == L.QAT_EARG
        assert run(g, 3, 5) == L.QAT_EARG
    with pytest.raises(L.NativeError, match="out of range or inconsistent"):
        L.check(lib.qat_pack_signs(L.ptr(x), -1, 8, L.ptr(w)), "pack")


def test_python_constants_match_the_header():
    header = (L.HERE / "qat_kernels.h").read_text()
    for name, value in (("QAT_ROW_WORDS", L.ROW_WORDS), ("QAT_EARG", L.QAT_EARG), ("QAT_ERANGE", L.QAT_ERANGE),
                        ("QAT_U8", L.U8), ("QAT_I8", L.I8), ("QAT_I16", L.I16), ("QAT_I32", L.I32)):
        assert re.search(rf"#define {name} \(?{value}\)?\b", header), name


def test_runtime_only_sources_stay_out_of_the_c_program():
    from qat.export.c import emit

    copied = set(emit.COMMON) | set(emit.HEADERS) | {f for fs in emit.SOURCES.values() for f in fs}
    assert RUNTIME_ONLY <= {p.name for p in SOURCES} and not RUNTIME_ONLY & copied
    for name in copied:  # and nothing the program compiles includes them
        if (L.HERE / name).exists():
            assert "qat_residual.h" not in (L.HERE / name).read_text(), name
