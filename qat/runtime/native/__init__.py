"""Native integer kernels for ``qat.runtime``: a C library (this folder's ``*.c``, API in
``qat_kernels.h``) built by ``pip install``, loaded with ctypes, and the plan that runs a program's
integer ops on it (``plan.NativeProgram``), bit-identical to the reference runtime.

Backends: ``native-avx2``, ``native-scalar`` and ``reference``. ``QAT_RUNTIME=reference`` forces the
Python reference (the oracle); ``QAT_NATIVE_ISA=scalar`` forces the portable path of the library.
"""

from __future__ import annotations

import os

from qat.runtime.native.library import available_isas, default_isa, load_library

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
    return f"native-{isa}"


__all__ = ["BACKENDS", "choose_backend", "load_library"]
