"""``python -m qat.export.c EXPORT_DIR OUT_DIR``: a standalone integer C program from an export.

Writes model.h / model.c with ``int qat_predict(const uint8_t *pixels, int32_t *scores)``, the kernel
sources it calls, summary.md (flash and RAM bytes) and example/main.c. Build the example with
``cc -std=c99 -O2 -IOUT_DIR OUT_DIR/*.c OUT_DIR/example/main.c``; see docs/c-program.md.
"""

from __future__ import annotations

import argparse
import sys

from qat.export.c import Unsupported, generate
from qat.runtime.errors import FormatError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qat.export.c", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir")
    ap.add_argument("out_dir")
    args = ap.parse_args(argv)
    try:
        folder, p = generate(args.export_dir, args.out_dir)
    except (Unsupported, FormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {folder}: {len(p.steps)} steps, flash {p.flash_bytes:,} bytes (constants), RAM "
          f"{p.ram_bytes:,} bytes (arena {p.arena_bytes:,} + scratch {2 * p.scratch_elems:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
