"""A standalone C program from an export: ``python -m qat.export.c EXPORT_DIR OUT_DIR``.

``OUT_DIR`` receives ``model.h`` / ``model.c`` (the network, weights as const packed arrays, one entry
point ``int qat_predict(const uint8_t *pixels, int32_t *scores)``), the kernel sources it calls, copied
from ``qat/runtime/native``, ``summary.md`` with its flash and RAM bytes, and ``example/main.c``.
See ``docs/c-program.md``.
"""

from __future__ import annotations

from pathlib import Path

from qat.export.c.emit import sources
from qat.export.c.plan import Plan, Unsupported, plan

__all__ = ["Plan", "Unsupported", "footprint_markdown", "generate", "plan"]


def footprint_markdown(manifest: dict, tensors: dict) -> str:
    """The ``summary.md`` section on the standalone C program: its flash and RAM bytes, or why the
    export has none."""
    lines = ["", "## Standalone C program", ""]
    try:
        p = plan(manifest, tensors)
    except Unsupported as err:
        return "\n".join(lines + [f"Not available: {err}", ""])
    lines += ["`python -m qat.export.c EXPORT_DIR OUT_DIR` (docs/c-program.md): integer arithmetic only.", "",
              "| | bytes |", "| --- | ---: |",
              f"| flash: weights and constants (const arrays) | {p.flash_bytes:,} |",
              f"| RAM: activation arena (largest pair of live activation buffers) | {p.arena_bytes:,} |",
              f"| RAM: int8 convolution scratch | {2 * p.scratch_elems:,} |",
              f"| RAM total | {p.ram_bytes:,} |", "",
              f"Logits as int32 scores in units of 2^-{p.score_frac_bits}; code size of the kernels not "
              "included (`arm-none-eabi-size` in BENCHMARKS.md).", ""]
    return "\n".join(lines)


def generate(export_dir: str | Path, out_dir: str | Path) -> tuple[Path, Plan]:
    """Write the program of a verified export folder to ``out_dir`` (replaced as a whole)."""
    from qat.export.writer import write_folder
    from qat.runtime.artifact import load_artifact

    export_dir = Path(export_dir)
    manifest, tensors = load_artifact(export_dir)
    p = plan(manifest, tensors)
    title = f"{export_dir.name} ({p.recipe})"
    files = sources(p, title)
    summary = export_dir / "summary.md"
    head = summary.read_text() if summary.exists() else f"# {title}\n"
    files["summary.md"] = (head.split("\n## Standalone C program")[0].rstrip("\n") + "\n"
                           + footprint_markdown(manifest, tensors)).encode()
    return write_folder(out_dir, files), p
