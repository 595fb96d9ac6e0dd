"""Convert an image folder (``train/ [val/] test/`` of class folders) to LitData shards for ``data=shards``.

    python scripts/make_shards.py /data/imagenet /data/imagenet-shards --workers 8 --chunk-bytes 64MB

Each item keeps the file's encoded bytes (no re-encoding); val/ and test/ keep their class-interleaved
order. Upload OUT to object storage (or share it between nodes), then
``python train.py data=shards data.root=OUT ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qat.data.shards import write_shards  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image_folder")
    ap.add_argument("out_dir")
    ap.add_argument("--chunk-bytes", default="64MB")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    counts = write_shards(args.image_folder, args.out_dir, args.chunk_bytes, args.workers)
    print(f"wrote {counts} items to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
