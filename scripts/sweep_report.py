"""Collect a Hydra sweep into a report: ``python scripts/sweep_report.py SWEEP_DIR``.

Every run folder under SWEEP_DIR (any depth; a folder with ``.hydra/overrides.yaml`` or ``metrics.json``)
gives one row: its overrides and its metrics.json. Writes

- ``SWEEP_DIR/report.md``: a table sorted by the optimized metric (best first; failed runs, without
  metrics.json, listed after);
- ``SWEEP_DIR/report.csv``: one column per override key and per metric;
- ``SWEEP_DIR/report.png``: test accuracy against model size in bytes (log scale), one labelled point per
  run (its varying overrides, or its row number in report.md when they are long) and the Pareto front
  (the most accurate run at each size or below).

Model size: ``export/size_bytes`` (the exported file) when the run has it, else ``model/size_bytes``
(the analytic packed size from ``qat.callbacks.ModelSize``). The optimized metric and its direction
come from the runs' config (``optimized_metric``) and the sweeper (``hydra.sweeper.direction`` in
``.hydra/hydra.yaml``); ``--metric`` and ``--direction`` override them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import yaml

SIZE_KEYS = ("export/size_bytes", "model/size_bytes")
MAX_LABEL = 32  # characters; longer point labels become the run's row number in report.md
DEFAULT_METRIC = "val/acc_best"


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Run folders under ``sweep_dir``, in path order (Hydra's job numbers sort as numbers)."""
    found = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    found |= {p.parent for p in sweep_dir.rglob("metrics.json")}
    found.discard(sweep_dir)  # multirun.yaml-level files are not a run

    def key(p: Path):
        return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(sweep_dir).parts]

    return sorted(found, key=key)


def load_run(run_dir: Path, sweep_dir: Path) -> dict:
    overrides = _load_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    config = _load_yaml(run_dir / "config.yaml") or _load_yaml(run_dir / ".hydra" / "config.yaml") or {}
    params = {}
    for o in overrides:
        key, _, value = str(o).partition("=")
        params[key.lstrip("+~")] = value
    hydra_cfg = (_load_yaml(run_dir / ".hydra" / "hydra.yaml") or {}).get("hydra") or {}
    return {"run": str(run_dir.relative_to(sweep_dir)), "params": params, "metrics": metrics,
            "optimized_metric": config.get("optimized_metric"),
            "direction": (hydra_cfg.get("sweeper") or {}).get("direction")}


def size_bytes(metrics: dict) -> float | None:
    for k in SIZE_KEYS:
        v = metrics.get(k)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return None


def sweep_direction(runs: list[dict], metric: str) -> str:
    """The sweeper's ``hydra.sweeper.direction`` (Optuna) when a run names one, else from the metric's
    name: minimize losses and errors, maximize the rest."""
    for r in runs:
        d = r["direction"]
        d = d[0] if isinstance(d, list) and d else d
        if isinstance(d, str) and d.lower() in ("minimize", "maximize"):
            return d.lower()
    return "minimize" if "loss" in metric or "error" in metric else "maximize"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def _short_value(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    return v if f.is_integer() else f"{f:.4g}"


def _label(run: dict, varying: list[str]) -> str:
    parts = [f"{k}={_short_value(run['params'][k])}" for k in varying if k in run["params"]]
    return ", ".join(parts) if parts else run["run"]


def write_report(sweep_dir: Path, metric: str | None = None, direction: str | None = None) -> dict:
    """Write report.md, report.csv and report.png into ``sweep_dir``; returns what was found."""
    sweep_dir = Path(sweep_dir)
    runs = [load_run(d, sweep_dir) for d in find_run_dirs(sweep_dir)]
    if not runs:
        raise FileNotFoundError(f"no runs under {sweep_dir}: expected folders with .hydra/overrides.yaml or "
                                f"metrics.json (the sweep dir of `python train.py -m ...`)")
    done = [r for r in runs if r["metrics"] is not None]
    failed = [r for r in runs if r["metrics"] is None]
    metric = metric or next((r["optimized_metric"] for r in runs if r["optimized_metric"]), None) or DEFAULT_METRIC
    direction = direction or sweep_direction(runs, metric)
    sign = -1.0 if direction == "maximize" else 1.0

    def rank(r):
        v = r["metrics"].get(metric)
        return (0, sign * v) if isinstance(v, (int, float)) and math.isfinite(v) else (1, 0.0)

    done.sort(key=rank)
    keys = sorted({k for r in runs for k in r["params"]})
    varying = [k for k in keys if len({r["params"].get(k) for r in runs}) > 1]
    common = [f"{k}={runs[0]['params'][k]}" for k in keys if k not in varying]

    def shown(r):  # the overrides that tell this run from the others, numbers to 4 digits
        return " ".join(f"{k}={_short_value(r['params'][k])}" for k in varying if k in r["params"]) or "(none)"

    # report.csv: every override key and every metric as columns
    metric_keys = sorted({k for r in done for k in r["metrics"]})
    with open(sweep_dir / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "status", *keys, *metric_keys])
        for r in done + failed:
            m = r["metrics"] or {}
            w.writerow([r["run"], "ok" if r["metrics"] is not None else "failed",
                        *[r["params"].get(k, "") for k in keys], *[m.get(k, "") for k in metric_keys]])

    # report.md
    arrow = "higher is better" if direction == "maximize" else "lower is better"
    lines = [f"# Sweep report: {sweep_dir.name}", "",
             f"{len(done)} runs with metrics, {len(failed)} failed; sorted by `{metric}` ({arrow}). "
             f"Size: `export/size_bytes` where present, else `model/size_bytes` (analytic, packed).", "",
             *([f"Common to every run: `{' '.join(common)}`.", ""] if common else []),
             f"| # | run | overrides | {metric} | test/acc | size (bytes) | params |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(done, 1):
        m = r["metrics"]
        lines.append(f"| {i} | {r['run']} | {shown(r)} | {_fmt(m.get(metric))} | "
                     f"{_fmt(m.get('test/acc'))} | {_fmt(size_bytes(m))} | {_fmt(m.get('model/params'))} |")
    for r in failed:
        lines.append(f"| - | {r['run']} | {shown(r)} | failed: no metrics.json | | | |")
    plotted, skipped = _plot(done, varying, sweep_dir / "report.png")
    lines += ["", f"![test accuracy against model size](report.png)", ""]
    if skipped:
        lines.append(f"Not in the chart (no test/acc or no size): {', '.join(skipped)}.")
    (sweep_dir / "report.md").write_text("\n".join(lines) + "\n")
    return {"runs": len(runs), "done": len(done), "failed": len(failed), "metric": metric,
            "direction": direction, "plotted": plotted, "order": [r["run"] for r in done]}


def _plot(done: list[dict], varying: list[str], path: Path) -> tuple[int, list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, skipped = [], []
    for i, r in enumerate(done, 1):
        acc, size = r["metrics"].get("test/acc"), size_bytes(r["metrics"])
        if isinstance(acc, (int, float)) and math.isfinite(acc) and size is not None and size > 0:
            label = _label(r, varying)
            # A long label (many swept values) would cover the chart: the row number in report.md instead.
            points.append((size, float(acc), label if len(label) <= MAX_LABEL else f"#{i}"))
        else:
            skipped.append(r["run"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], zorder=3)
        for x, y, label in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        # Pareto front: sorted by size, keep each point more accurate than every smaller one.
        front, best = [], -math.inf
        for x, y, _ in sorted(points, key=lambda p: (p[0], -p[1])):
            if y > best:
                front.append((x, y))
                best = y
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:gray",
                    linestyle="--", linewidth=1, label="Pareto front", zorder=2)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xscale("log")
        ax.margins(x=0.2, y=0.1)  # room for the labels
    else:
        ax.text(0.5, 0.5, "no run has both test/acc and a model size", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("model size (bytes, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against model size")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return len(points), skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="the sweep's hydra.sweep.dir")
    parser.add_argument("--metric", help="metric to sort by (default: the runs' optimized_metric)")
    parser.add_argument("--direction", choices=("maximize", "minimize"),
                        help="default: the sweeper's direction, else minimize for losses and errors")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a folder")
    try:
        found = write_report(args.sweep_dir, args.metric, args.direction)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{found['done']} runs ({found['failed']} failed) sorted by {found['metric']} ({found['direction']}); "
          f"wrote {args.sweep_dir / 'report.md'}, report.csv, report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
