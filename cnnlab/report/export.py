"""`cnnlab export`: what was written, what it takes and returns, and how it compared with PyTorch."""
from __future__ import annotations

from typing import Any

from cnnlab.report.console import console, kv_table


def _floats(xs: list[float]) -> str:
    return ", ".join(f"{x:.4f}" for x in xs)


def export_summary(r: dict[str, Any]) -> None:
    i, c = r["input"], r["check"]
    batch = "N" if r["batch"] == "dynamic" else str(r["batch"])
    rows = [
        ("format", r["format"] + (f" (opset {r['opset']})" if "opset" in r else "")),
        ("input", f"{i['name']}: {batch} x {i['channels']} x {i['height']} x {i['width']} uint8 (0-255), "
                  + ("batch dynamic" if r["batch"] == "dynamic" else f"batch fixed at {r['batch']}")),
        ("output", f"{r['output']['name']}: {batch} x {len(r['classes'])} float32, classes in sidecar order"),
        ("folded in", f"(x / 255 - mean) / std, mean [{_floats(r['normalisation']['mean'])}], "
                      f"std [{_floats(r['normalisation']['std'])}]"),
        ("checked", f"{c['runtime']} on {c['images']} test images, batch sizes {', '.join(map(str, c['batch_sizes']))}"),
        ("largest |Δ logit|", f"{c['max_abs_diff']:.2g} (allowed {c['tolerance']:.2g}: 1e-4 x logit scale {c['logit_scale']:.3g})"),
        ("top-1 agreement", f"{c['top1_agreement']:.2%}" + (f" ({c['near_ties']} near-tie{'s' if c['near_ties'] > 1 else ''}: top two within the tolerance)"
                                                 if c["near_ties"] else "")),
    ]
    rows += [("note", n) for n in r["notes"]]
    rows += [("written", f"{r['written']} ({r['bytes'] / 2**20:.2f} MiB)"), ("sidecar", r["sidecar"])]
    console.print(kv_table(f"export {r['checkpoint']}", rows))
