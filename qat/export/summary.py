"""``summary.md``: a per-layer table of an export, like Larq's ``lq.models.summary``.

Per layer: operation, how the runtime computes it, weight and input bits, parameters, bytes in the
export (packed weights plus that layer's scales, zero points, biases, thresholds and requantization
constants), multiply-accumulates per image and their class. MAC classes: ``binary`` (1-bit weights
and inputs: XNOR-popcount), ``binary-weight`` (1-bit weights, float inputs), ``ternary`` (ternary
weights), ``8-bit`` (weights and inputs of at most 8 bits), ``fp32`` (float weights), ``other``.
"""

from __future__ import annotations

from collections import Counter

from qat.export.lower import LayerInfo

CLASSES = ("binary", "binary-weight", "ternary", "8-bit", "fp32", "other")


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def _kb(n: float) -> str:
    return f"{n / 1024:,.2f} KiB"


def layer_bytes(layers: list[LayerInfo], tensors: dict) -> tuple[dict[str, int], int]:
    """Bytes of each layer's tensors (by name prefix) and of the remaining tensors (float BatchNorm,
    shared codebooks)."""
    per = {layer.name: 0 for layer in layers}
    rest = 0
    names = sorted(per, key=len, reverse=True)
    for tname, arr in tensors.items():
        owner = next((n for n in names if tname.startswith(n + ".")), None)
        if owner is None:
            rest += int(arr.nbytes)
        else:
            per[owner] += int(arr.nbytes)
    return per, rest


def float_ops(ops: list[dict]) -> list[str]:
    """Rows of the table of ops marked ``float`` in the manifest: op kind, count, names."""
    by_kind: dict[str, list[str]] = {}
    for op in ops:
        if op.get("float"):
            by_kind.setdefault(op["op"], []).append(op["name"])
    rows = ["| op | count | names |", "| --- | ---: | --- |"]
    for kind, names in sorted(by_kind.items()):
        shown = ", ".join(f"`{n}`" for n in names[:6]) + (f", ... ({len(names) - 6} more)" if len(names) > 6 else "")
        rows.append(f"| {kind} | {len(names)} | {shown} |")
    return rows if by_kind else ["None: every op runs on integers."]


def render(title: str, recipe: str, layers: list[LayerInfo], tensors: dict, files: dict[str, int],
           fp32_bytes: int, export_bytes: int, ops: list[dict] = ()) -> str:
    per, rest = layer_bytes(layers, tensors)
    lines = [f"# Export summary: {title}", "", f"Recipe: `{recipe}`", "",
             "| layer | op | compute | weights | w bits | in bits | params | bytes | fp32 bytes | MACs | MAC class |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    macs = Counter()
    params = 0
    for layer in layers:
        macs[layer.mac_class] += layer.macs
        params += layer.params
        lines.append(f"| `{layer.name}` | {layer.op} | {layer.compute} | {layer.weight_kind} | "
                     f"{layer.weight_bits} | {layer.input_bits} | {_fmt(layer.params)} | {_fmt(per[layer.name])} | "
                     f"{_fmt(4 * layer.params)} | {_fmt(layer.macs)} | {layer.mac_class} |")
    total_macs = sum(macs.values()) or 1
    layer_total = sum(per.values())
    lines += ["", "## Totals", "",
              "| | value |", "| --- | ---: |",
              f"| conv/linear parameters | {_fmt(params)} |",
              f"| conv/linear tensor bytes | {_fmt(layer_total)} ({_kb(layer_total)}) |",
              f"| other tensor bytes (float BatchNorm, codebooks) | {_fmt(rest)} |",
              f"| export bytes (manifest + tensors) | {_fmt(export_bytes)} ({_kb(export_bytes)}) |",
              f"| fp32 state_dict bytes | {_fmt(fp32_bytes)} ({_kb(fp32_bytes)}) |",
              f"| compression (fp32 / export) | {fp32_bytes / max(export_bytes, 1):.2f}x |",
              f"| weight compression (fp32 / packed, conv/linear) | "
              f"{4 * params / max(sum(layer.weight_bytes for layer in layers), 1):.2f}x |",
              f"| MACs per image | {_fmt(total_macs)} |"]
    for c in CLASSES:
        if macs[c]:
            lines.append(f"| {c} MACs | {_fmt(macs[c])} ({100 * macs[c] / total_macs:.1f}%) |")
    lines += ["", "## Ops kept in float", "",
              "Ops marked `\"float\": true` in the manifest: they read or write float32 values (quantize "
              "and dequantize convert between float and integers; layers with compute `float` or "
              "`signed_sum` take float inputs).", ""] + float_ops(list(ops))
    lines += ["", "## Files", "", "| file | bytes |", "| --- | ---: |"]
    lines += [f"| `{name}` | {_fmt(size)} |" for name, size in sorted(files.items())]
    return "\n".join(lines) + "\n"


def mac_shares(layers: list[LayerInfo]) -> dict[str, float]:
    macs = Counter()
    for layer in layers:
        macs[layer.mac_class] += layer.macs
    total = sum(macs.values()) or 1
    return {c: macs[c] / total for c in CLASSES if macs[c]}
