"""Compile some of qat/runtime/native's C files into a shared library for a ctypes test (-Werror)."""

import ctypes
import subprocess
from pathlib import Path

NATIVE = Path(__file__).resolve().parents[3] / "qat" / "runtime" / "native"


def build_library(out_dir: Path, sources: list[str]) -> ctypes.CDLL:
    so = Path(out_dir) / "libtest.so"
    subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                    *(str(NATIVE / f) for f in sources), "-o", str(so)], check=True, capture_output=True)
    return ctypes.CDLL(str(so))
