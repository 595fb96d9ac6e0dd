"""Building a generated program: the host example (gcc) and a Cortex-M4 cross-compile whose
``arm-none-eabi-size`` gives the flash and RAM the program takes on a microcontroller."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

HOST_FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
CORTEX_M4_FLAGS = ["-std=c99", "-mcpu=cortex-m4", "-mthumb", "-Os", "-Wall", "-Wextra", "-Wpedantic", "-Werror",
                   "-ffunction-sections", "-fdata-sections"]


def _run(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{res.stderr[-4000:]}")
    return res.stdout


def build_example(folder: str | Path, out: str | Path, cc: str = "gcc", extra: tuple[str, ...] = ()) -> Path:
    """Compile the program and ``example/main.c`` into the executable ``out`` (``extra``: more flags,
    e.g. ``-O3 -march=native``)."""
    folder = Path(folder)
    sources = sorted(str(p) for p in folder.glob("*.c")) + [str(folder / "example" / "main.c")]
    _run([cc, *HOST_FLAGS, *extra, f"-I{folder}", *sources, "-o", str(out)])
    return Path(out)


def cortex_m4_sizes(folder: str | Path, cc: str = "arm-none-eabi-gcc",
                    size: str = "arm-none-eabi-size") -> dict[str, dict[str, int]]:
    """``{object: {text, data, bss}}`` of every top-level source compiled for a Cortex-M4, plus
    ``"total"``. Flash is text + data, RAM data + bss (static buffers; the stack is not counted)."""
    if shutil.which(cc) is None or shutil.which(size) is None:
        raise RuntimeError(f"{cc} is not installed (Debian: apt-get install gcc-arm-none-eabi)")
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        objects = []
        for src in sorted(folder.glob("*.c")):
            obj = Path(tmp) / (src.stem + ".o")
            _run([cc, *CORTEX_M4_FLAGS, f"-I{folder}", "-c", str(src), "-o", str(obj)])
            objects.append(str(obj))
        out = _run([size, *objects])
    sizes = {}
    for line in out.splitlines()[1:]:
        text, data, bss, _, _, name = line.split(None, 5)
        sizes[Path(name).stem] = {"text": int(text), "data": int(data), "bss": int(bss)}
    sizes["total"] = {k: sum(v[k] for v in sizes.values()) for k in ("text", "data", "bss")}
    return sizes


FIRMWARE_MAIN = """#include "model.h"
static uint8_t pixels[QAT_MODEL_INPUT_BYTES];
static int32_t scores[QAT_MODEL_CLASSES];
int main(void) { return qat_predict(pixels, scores); }
"""


def cortex_m4_link_symbols(folder: str | Path, work: str | Path, cc: str = "arm-none-eabi-gcc",
                           nm: str = "arm-none-eabi-nm") -> set[str]:
    """Link the program with a minimal firmware ``main`` (newlib's nosys stubs) and return the symbols
    of the image: a link error means the program needs something a bare Cortex-M4 lacks."""
    folder, work = Path(folder), Path(work)
    fw = work / "firmware_main.c"
    fw.write_text(FIRMWARE_MAIN)
    elf = work / "firmware.elf"
    _run([cc, *CORTEX_M4_FLAGS, f"-I{folder}", *sorted(str(p) for p in folder.glob("*.c")), str(fw),
          "--specs=nosys.specs", "-Wl,--gc-sections", "-o", str(elf)])
    return {line.split()[-1] for line in _run([nm, str(elf)]).splitlines() if line.strip()}
