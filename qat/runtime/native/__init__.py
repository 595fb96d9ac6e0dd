"""Native integer kernels for ``qat.runtime``: a C library (this folder's ``*.c``, API in
``qat_kernels.h``) built by ``pip install``, loaded with ctypes, and the plan that runs a program's
integer ops on it (``plan.NativeProgram``), bit-identical to the reference runtime.

Backends: ``native-avx2`` (the x86-64 SIMD kernels: AVX-512 where the CPU has VPOPCNTDQ, VNNI and
VBMI, else AVX2), ``native-scalar`` and ``reference``. ``QAT_RUNTIME=reference`` forces the Python reference
(the oracle); ``QAT_NATIVE_ISA`` = ``avx512`` | ``avx2`` | ``scalar`` forces one path of the library.
``Program.isa`` names the path that runs (``library.ISA_NAMES``).
"""

from __future__ import annotations

import os

from qat.runtime.native.library import ISAS, available_isas, default_isa, load_library

BACKENDS = ("native-avx2", "native-scalar", "reference")


def choose_backend(requested: str | None = None) -> str:
    """The backend a program runs on: ``requested``, else ``QAT_RUNTIME`` (``reference``, ``native``
    or unset: native when the library is built), with ``QAT_NATIVE_ISA`` choosing the native path."""
    want = requested or os.environ.get("QAT_RUNTIME", "").strip().lower() or "auto"
    if want == "reference":
        return "reference"
    if want in ("native-avx2", "native-scalar"):
        isa = want.split("-")[1]
        if isa not in available_isas():
            have = available_isas() or "none: the kernel library is not built"
            raise ValueError(f"backend {want!r} is not available here (native paths: {have})")
        return want
    if want not in ("auto", "native"):
        raise ValueError(f"unknown runtime backend {want!r}; expected one of {BACKENDS}, 'native' or 'auto'")
    isa = default_isa()
    if isa is None:
        if want == "native":
            raise ValueError("QAT_RUNTIME=native but the kernel library is not built: run pip install -e . "
                             "(or python setup.py build_ext --inplace) with a C compiler")
        return "reference"
    return backend_of(isa)


def backend_of(isa: str) -> str:
    return "native-scalar" if isa == "scalar" else "native-avx2"


def choose(backend: str | None = None, isa: str | None = None) -> tuple[str, str | None]:
    """``(backend, isa)``: the backend as ``choose_backend`` picks it, or the one ``isa`` (a key of
    ``library.ISAS``) belongs to; the isa is None for the reference, else ``isa``, else
    ``QAT_NATIVE_ISA`` where it belongs to the backend, else the backend's best path on this CPU."""
    if isa is not None:
        if isa not in ISAS:
            raise ValueError(f"unknown native ISA {isa!r}; expected one of {ISAS}")
        if isa not in available_isas():
            raise ValueError(f"native ISA {isa!r} is not available here (available: {available_isas() or 'none'})")
        if backend is not None and backend != backend_of(isa):
            raise ValueError(f"ISA {isa!r} does not belong to backend {backend!r}")
        return backend_of(isa), isa
    chosen = choose_backend(backend)
    if chosen == "reference":
        return chosen, None
    want = default_isa()
    if backend_of(want) == chosen:
        return chosen, want
    return chosen, next(i for i in available_isas() if backend_of(i) == chosen)


__all__ = ["BACKENDS", "backend_of", "choose", "choose_backend", "load_library"]
