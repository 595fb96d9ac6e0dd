"""The native runtime against the reference runtime on real data: every logit of a data set's test
split, for trained exports. Prints one JSON line per export (identical logits, accuracy, seconds).

    python scripts/check_native.py EXPORT_DIR [EXPORT_DIR ...] [data.root=/tmp/cifar10 data.download=false]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qat.runtime import load  # noqa: E402
from qat.runtime.__main__ import datamodule  # noqa: E402


def check(folder: str, overrides: list[str]) -> dict:
    native, ref = load(folder), load(folder, backend="reference")
    if native.native is None:
        raise SystemExit("the native kernel library is not built (pip install -e .)")
    dm = datamodule(native.manifest, overrides)
    same = n = correct = 0
    t_native = t_ref = 0.0
    for images, labels in dm.test_dataloader():
        x = native.preprocess(images)
        t = time.perf_counter()
        a = native(x)
        t_native += time.perf_counter() - t
        t = time.perf_counter()
        b = ref(x)
        t_ref += time.perf_counter() - t
        same += int((a == b).all(dim=1).sum())
        n += len(labels)
        correct += int((a.argmax(1) == labels).sum())
    return {"export": folder, "isa": native.isa, "images": n, "identical_logits": same, "acc": correct / n,
            "native_s": round(t_native, 1), "reference_s": round(t_ref, 1)}


def main(argv: list[str]) -> int:
    folders = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if not folders:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    ok = True
    for f in folders:
        row = check(f, overrides)
        ok &= row["identical_logits"] == row["images"]
        print(json.dumps(row), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
