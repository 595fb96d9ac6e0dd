"""Builds qat's native integer kernels (qat/runtime/native/*.c) into a plain shared library that
qat.runtime loads with ctypes: C99, no Python or torch headers, so the build needs gcc alone.

The library is compiled for the baseline of the target architecture; its AVX2 functions carry
``__attribute__((target("avx2")))`` and are chosen at run time, so one build runs on any x86-64.
``QAT_BUILD_NATIVE=0 pip install ...`` skips the library (the runtime then uses its Python
reference implementation).
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = Path("qat") / "runtime" / "native"


class BuildNative(build_ext):
    """Builds the kernel library, and says why when it cannot."""

    def get_export_symbols(self, ext):  # a ctypes library, not a Python module: no PyInit_ symbol
        return []

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as err:  # compiler missing or failing: stop with the reason and the way out
            sys.stderr.write(
                f"\nqat: building the native kernel library ({ext.name}) failed: {err}\n"
                "It needs a C99 compiler (gcc or clang; on Debian: apt-get install gcc). To install "
                "without it (qat.runtime then runs its Python reference kernels), set "
                "QAT_BUILD_NATIVE=0.\n\n")
            raise


def extensions():
    if os.environ.get("QAT_BUILD_NATIVE", "1") == "0":
        return []
    sources = sorted(str(p) for p in NATIVE.glob("*.c"))
    return [Extension("qat.runtime.native._qat_kernels", sources=sources, depends=[str(p) for p in NATIVE.glob("*.h")],
                      extra_compile_args=["-std=c99", "-O3", "-Wall", "-Wextra"])]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildNative})
