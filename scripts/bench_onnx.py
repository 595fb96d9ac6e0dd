"""qat_uint8 ResNet-20 in onnxruntime, the two ONNX forms side by side: the exact form (``model.onnx``
by default: the runtime's integer arithmetic) and the QDQ form (``onnx_form="qdq"``: fused into
``QLinearConv``). Per form: images/s at batch 1 and 256 (interleaved rounds, median, one thread),
top-1 agreement with the runtime and with the fake-quant model, and the largest logit difference
from the runtime, on seeded random inputs. The export is of a calibrated, untrained network
(``tests/export/models.deployed``), as in bench_runtime.py: speed does not depend on the weights.

    python scripts/bench_onnx.py --n 512 --rounds 3 --seconds 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runtime import side_by_side  # noqa: E402
from qat.export import export_model  # noqa: E402
from qat.export.onnx_export import run, session  # noqa: E402
from qat.models import resnet20  # noqa: E402
from qat.runtime import load  # noqa: E402
from tests.export.models import NORM, deployed  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="random inputs for agreement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="per timing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the network's initial weights
    m, r = deployed("", "qat_uint8", net=resnet20(10, 3, (32, 32)), shape=(3, 32, 32))
    x = torch.randn(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for form in ("exact", "qdq"):
            res = export_model(m, Path(tmp) / form, input_shape=(3, 32, 32), normalization=NORM, recipe=r,
                               onnx=True, onnx_form=form)
            rt = load(res.folder)(x)
            sess = session(res.onnx, threads=1)
            out = run(sess, x)
            rows[form] = {"sess": sess, "runtime": float((out.argmax(1) == rt.argmax(1)).float().mean()),
                          "model": float((out.argmax(1) == ref.argmax(1)).float().mean()),
                          "diff": float((out - rt).abs().max())}
        speed = {}
        for b in (1, 256):
            xb = x[:b] if b <= args.n else torch.randn(b, 3, 32, 32)
            fns = {f: (lambda s=row["sess"]: run(s, xb)) for f, row in rows.items()}
            speed[b] = {k: v * b for k, v in side_by_side(fns, args.rounds, args.seconds).items()}
    print(f"| ONNX form | agreement with the runtime (n={args.n}) | max logit diff to the runtime | "
          "agreement with the model | img/s b1 | img/s b256 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for form, row in rows.items():
        print(f"| {form} | {row['runtime']:.4f} | {row['diff']:.3g} | {row['model']:.4f} | {speed[1][form]:,.0f} | "
              f"{speed[256][form]:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
