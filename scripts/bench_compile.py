"""torch.compile (inductor) against eager: training-step time, first-step compile time, graph breaks.

For each recipe, ResNet-20 on CIFAR-sized input (batch ``--batch-size``), one process: the eager and
the compiled copy (``nn.Module.compile(dynamic=False)``, what ``compile=true`` does) of the same prepared model
take turns for ``--rounds`` rounds of ``--steps`` timed steps (forward, backward, SGD step, recipe
hooks), so load on a shared machine hits both alike. The first compiled step (compilation included)
is timed on its own. ``torch._dynamo.explain`` lists the graph breaks of the training forward from
the second step on.

    python scripts/bench_compile.py --recipes fp32,bnn,qat_uint8,admm_ternary --steps 5 --rounds 3 --json OUT.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_step import build, time_steps  # noqa: E402


def graph_breaks(net, x) -> dict:
    import torch._dynamo as dynamo

    dynamo.reset()
    net(x)  # the first step sizes the per-channel observers (a resize_: a break on that step only)
    ex = dynamo.explain(net)(x)
    reasons = sorted({f"{b.reason.splitlines()[0]}" for b in ex.break_reasons})
    dynamo.reset()
    return {"graphs": ex.graph_count, "breaks": ex.graph_break_count, "reasons": reasons}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--recipes", default="fp32,bnn,qat_uint8,admm_ternary")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--breaks-only", action="store_true", help="only list the graph breaks (no timing)")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    rows = []
    for r in args.recipes.split(","):
        net, rec = build(r, args.model)
        net.train()
        rec.on_train_start(net, total_steps=10**6)  # as bench_step: no schedule fires while timing
        breaks = graph_breaks(copy.deepcopy(net), x)
        if args.breaks_only:
            print(json.dumps({"recipe": r, **breaks}), flush=True)
            continue
        comp = copy.deepcopy(net)
        comp.compile(dynamic=False)
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in (("eager", net), ("compiled", comp))}
        time_steps(net, rec, opts["eager"], x, y, 2, 0)
        t0 = time.perf_counter()
        time_steps(comp, rec, opts["compiled"], x, y, 1, 0)
        first = time.perf_counter() - t0
        time_steps(comp, rec, opts["compiled"], x, y, 1, 1)  # a recompilation after step 1, if any
        times = {"eager": [], "compiled": []}
        for i in range(args.rounds):
            for k, m in (("eager", net), ("compiled", comp)):
                times[k].append(time_steps(m, rec, opts[k], x, y, args.steps, 2 + i * args.steps))
        e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
        row = {"recipe": r, "eager_ms": e * 1e3, "compiled_ms": c * 1e3, "speedup": e / c,
               "first_step_s": first, **breaks}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"\n{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print("\n| recipe | eager ms/step | compiled ms/step | speed-up | first compiled step (s) | graphs | graph breaks |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['recipe']} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | {r['speedup']:.2f} | "
              f"{r['first_step_s']:.0f} | {r['graphs']} | {r['breaks']} |")
    for r in rows:
        for reason in r["reasons"]:
            print(f"- {r['recipe']}: {reason}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
