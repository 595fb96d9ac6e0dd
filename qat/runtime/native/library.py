"""The native kernel library (``_qat_kernels*.so``, built from this folder's C files by setup.py),
loaded with ctypes, and the choice of its instruction set.

``QAT_NATIVE_ISA`` = ``avx512`` | ``avx2`` | ``scalar`` forces one path of the library (default: the
best the CPU runs: AVX-512 with VPOPCNTDQ, VNNI and VBMI, else AVX2, else scalar). ctypes releases the GIL
during each call, so threads run kernels in parallel.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from functools import lru_cache
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ISAS = ("avx512", "avx2", "scalar")  # best first
# what each path runs, as Program.isa reports it
ISA_NAMES = {"avx512": "avx512-vpopcntdq+vnni", "avx2": "avx2", "scalar": "scalar"}
ERRORS = {-1: "a size or argument is out of range or inconsistent",
          -2: "a value does not fit the kernel's arithmetic"}
U8, I8, I16, I32 = 0, 1, 2, 3
QAT_EARG, QAT_ERANGE = -1, -2
ROW_WORDS = 192  # QAT_ROW_WORDS of qat_kernels.h: the longest binary reduction row the kernels take

c_i32p = ctypes.POINTER(ctypes.c_int32)


class ConvGeom(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int32) for f in
                ("n", "h", "w", "c_in", "c_out", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "ho", "wo")]


class PoolGeom(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int32) for f in
                ("n", "h", "w", "c", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "ho", "wo")]


class Requant(ctypes.Structure):
    _fields_ = [("m0", ctypes.c_void_p), ("shift", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("bias_shift", ctypes.c_void_p), ("zero_point", ctypes.c_int32), ("lo", ctypes.c_int32),
                ("hi", ctypes.c_int32), ("out_type", ctypes.c_int32)]


class NativeError(RuntimeError):
    """A kernel refused its arguments (a bug in the caller, never bad data from a file: the ops check
    their inputs first)."""


def library_path() -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = HERE / f"_qat_kernels{suffix}"
        if p.exists():
            return p
    return None


_P = ctypes.c_void_p
_I = ctypes.c_int32
_G = ctypes.POINTER(ConvGeom)  # ctypes passes a structure given for a POINTER argument by reference
_PG = ctypes.POINTER(PoolGeom)
_RQ = ctypes.POINTER(Requant)
_SIGNATURES = {
    "qat_api_version": ([], ctypes.c_int),
    "qat_cpu_has_avx2": ([], ctypes.c_int),
    "qat_cpu_has_avx512": ([], ctypes.c_int),
    "qat_int8_weight_bytes": ([_G], ctypes.c_int64),
    "qat_int8_conv_scratch_bytes": ([_G], ctypes.c_int64),
    "qat_int8_pack_weights": ([_G, _P, _P, _P], ctypes.c_int),
    "qat_conv_geom_check": ([_G], ctypes.c_int),
    "qat_pool_geom_check": ([_PG], ctypes.c_int),
    "qat_binary_weight_words": ([_G], ctypes.c_int64),
    "qat_binary_row_words": ([_G], ctypes.c_int64),
    "qat_int_weight_elems": ([_G], ctypes.c_int64),
    "qat_int_conv_scratch_elems": ([_G], ctypes.c_int64),
    "qat_pack_signs": ([_P, ctypes.c_int64, _I, _P], ctypes.c_int),
    "qat_unpack_signs": ([_P, ctypes.c_int64, _I, _P], ctypes.c_int),
    "qat_binary_pack_weights": ([_G, _P, _P], ctypes.c_int),
    "qat_ternary_weight_words": ([_G], ctypes.c_int64),
    "qat_ternary_pack_weights": ([_G, _P, _P], ctypes.c_int),
    "qat_int_pack_weights": ([_G, _P, _P, _P], ctypes.c_int),
    "qat_threshold_pack": ([_P, ctypes.c_int64, _I, _P, _P, _P], ctypes.c_int),
    "qat_requantize": ([_P, ctypes.c_int64, _I, _RQ, _P], ctypes.c_int),
    "qat_maxpool_i32": ([_PG, _P, _P, _I, _I], ctypes.c_int),
    "qat_maxpool_bits": ([_PG, _P, _P, _P, _I, _I], ctypes.c_int),
    "qat_bn_constants": ([_P, _P, _P, _P, ctypes.c_float, _I, _I, _P, _P], ctypes.c_int),
    "qat_residual_avx512": ([_P, _P, ctypes.c_int64, _I, _P, _P, _P, _P], ctypes.c_int),
    "qat_threshold_nchw_avx512": ([_P, ctypes.c_int64, _I, ctypes.c_int64, _P, _P, _P], ctypes.c_int),
}
for _isa in ISAS:
    _SIGNATURES[f"qat_binary_conv2d_{_isa}"] = ([_G, _P, _P, _P, _P, _P, _P, _I, _I], ctypes.c_int)
    _SIGNATURES[f"qat_ternary_conv2d_{_isa}"] = ([_G, _P, _P, _P, _P, _P, _P, _I, _I], ctypes.c_int)
    _SIGNATURES[f"qat_int_conv2d_{_isa}"] = ([_G, _P, _I, _I, _P, _P, _P, _RQ, _P, _I, _I], ctypes.c_int)


@lru_cache(maxsize=None)
def load_library() -> ctypes.CDLL | None:
    """The kernel library, or None when it was not built."""
    path = library_path()
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    for name, (args, res) in _SIGNATURES.items():
        if (name.endswith(("_avx2", "_avx512")) or name == "qat_bn_constants") and not hasattr(lib, name):
            continue  # a build for another architecture has the scalar path only
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    if lib.qat_api_version() != 1:
        raise ImportError(f"{path} has kernel API version {lib.qat_api_version()}, this qat expects 1: "
                          "rebuild it (pip install -e . or python setup.py build_ext --inplace)")
    return lib


def available_isas() -> tuple[str, ...]:
    lib = load_library()
    if lib is None:
        return ()
    return tuple(isa for isa, ok in (("avx512", lib.qat_cpu_has_avx512()), ("avx2", lib.qat_cpu_has_avx2()),
                                     ("scalar", 1)) if ok)


def default_isa() -> str | None:
    """``QAT_NATIVE_ISA`` or the best path this CPU runs; None without the library."""
    have = available_isas()
    if not have:
        return None
    want = os.environ.get("QAT_NATIVE_ISA", "").strip().lower()
    if not want:
        return have[0]
    if want not in ISAS:
        raise ValueError(f"QAT_NATIVE_ISA={want!r}: expected one of {ISAS}")
    if want not in have:
        raise ValueError(f"QAT_NATIVE_ISA={want}: this CPU does not support it (available: {have})")
    return want


def check(rc: int, what: str) -> None:
    if rc != 0:
        raise NativeError(f"{what}: {ERRORS.get(rc, f'error {rc}')}")


def ptr(t) -> int:
    """Address of a contiguous torch tensor or numpy array (ctypes takes it for a pointer argument).
    The caller must hold a reference to it until the kernel returns: the address alone does not
    keep it alive."""
    if isinstance(t, torch.Tensor):
        if not t.is_contiguous():
            raise ValueError("a kernel argument must be contiguous")
        return t.data_ptr()
    if not t.flags["C_CONTIGUOUS"]:
        raise ValueError("a kernel argument must be contiguous")
    return t.ctypes.data
