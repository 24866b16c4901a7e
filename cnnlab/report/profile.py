"""`cnnlab profile`: the step's split and verdict, FLOPs against the machine's peak, memory per layer
and the planner, thread scaling, the alternatives side by side; `--machine`: this machine's limits.
Two PNGs: the split as a stacked bar, memory by layer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlab.report.console import console
from cnnlab.report.plots import pyplot, save

PHASE_NAMES = {"data": "waiting for data", "copy": "host-to-device copy", "augment": "augmentation (device)",
               "forward": "forward", "backward": "backward", "optimizer": "optimizer step", "rest": "the rest"}


def _mib(n: float | None) -> str:
    return f"{n / 2**20:,.1f}" if n is not None else "-"


def size(n: float | None) -> str:
    """Bytes in the unit that reads best: B, KiB, MiB, GiB."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def profile_summary(r: dict[str, Any]) -> None:
    s = r["steps"]
    split = s["split"]
    total = sum(v for k, v in split.items() if k != "step")
    t = Table(title=f"one training step ({r['device']}, median of {s['steps']} timed steps of "
                    f"{s['images_per_step']} images)", title_justify="left")
    for col in ("phase", "ms", "share"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for k, name in PHASE_NAMES.items():
        t.add_row(name, f"{split[k] * 1e3:.2f}", f"{split[k] / total:.1%}")
    t.add_row("[b]step[/]", f"[b]{total * 1e3:.2f}[/]", "100%")
    console.print(t)
    o = s["overhead"]
    if o["ratio"] is not None:
        console.print(f"instrumentation overhead: {o['ratio']:.3f}x (median of {o['pairs']} paired blocks, "
                      f"phased against plain steps in the same fit)", highlight=False)
    if not r["rest_ok"]:
        console.print(f"[yellow]the rest is {r['shares']['rest']:.0%} of the step: a phase is missing[/]")
    v = r["verdict"]
    console.print(f"[b]{v['text']}[/]", highlight=False)
    if v.get("measured"):
        console.print(f"[b]{v['measured']['text']}[/]", highlight=False)
    elif v["candidates"]:
        console.print("(whether these help depends on the hardware: --try-alternatives measures them here first)")
    f = r["flops"]
    if f["achieved_gflops"]:
        peak = f"{f['fraction_of_peak']:.0%} of this machine's measured matmul peak ({f['peak_gflops']:.1f} GFLOP/s)" \
            if f["fraction_of_peak"] is not None else "no measured peak for this device"
        console.print(f"compute: {f['flops_per_step'] / 1e9:.3f} GFLOP a step, {f['achieved_gflops']:.1f} GFLOP/s "
                      f"achieved, {peak}", highlight=False)
        if f.get("above_peak"):
            console.print(f"[yellow]above the cached peak, measured {r['machine'].get('measured_at')} on a busier "
                          "machine: cnnlab profile --machine --refresh measures it again[/]", highlight=False)
    _memory(r["memory"])
    if r.get("threads"):
        t = Table(title="threads (median of paired blocks)", title_justify="left")
        for col in ("threads", "images/s", "speed-up", "per added core", "efficiency"):
            t.add_column(col, justify="right")
        for x in r["threads"]:
            t.add_row(str(x["threads"]), f"{x['images_per_s']:,.0f}" if x["images_per_s"] else "-",
                      f"{x['speedup']:.2f}x" if x["speedup"] else "-",
                      f"{x['per_added_core']:+.2f}x" if x["per_added_core"] is not None else "-",
                      f"{x['efficiency']:.0%}" if x["efficiency"] is not None else "-")
        console.print(t)
    if r.get("alternatives"):
        t = Table(title="alternatives, measured side by side (median of rounds' ratios)", title_justify="left")
        for col in ("--set", "images/s", "vs the recipe"):
            t.add_column(col, justify="left" if col == "--set" else "right")
        for x in r["alternatives"]:
            if "error" in x:
                t.add_row(x["set"], f"[red]{x['error']}[/]", "-")
                continue
            limited = " (time limit)" if x["time_limited"] else ""
            t.add_row(x["set"], f"{x['images_per_s']:,.0f}{limited}" if x["images_per_s"] else "-",
                      f"{x['vs_recipe']:.2f}x" if x["vs_recipe"] else "-")
        console.print(t)
    console.print(f"written {r['run_dir']}/profile.json, profile_split.png, profile_memory.png", highlight=False)


def _memory(m: dict[str, Any]) -> None:
    t = Table(title=f"memory by layer at batch {m['batch_size']} (activations: what backward keeps, counted "
                    "with saved-tensor hooks)", title_justify="left")
    for col in ("layer", "params", "grads", "optimizer", "activations"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for row in m["layers"]:
        if row["params"] or row["activations"]:
            t.add_row(row["layer"], size(row["params"]), size(row["grads"]), size(row["optimizer"]), size(row["activations"]))
    console.print(t)
    p = m["peak"]
    console.print(f"peak: predicted {size(p['predicted_bytes'])}, measured {size(p['measured_bytes'])} "
                  f"({p['predicted_bytes'] / p['measured_bytes']:.2f}x; {p['method']})", highlight=False)
    if m.get("planner") and m["planner"]["largest_batch"] is not None:
        pl = m["planner"]
        console.print(f"largest batch for {pl['budget_bytes'] / 2**30:.2f} GiB ({pl['budget_from']}): "
                      f"{pl['largest_batch']:,} ({_mib(pl['per_image_bytes'])} MiB an image, "
                      f"{_mib(pl['fixed_bytes'])} MiB fixed)", highlight=False)
    for name, sv in m["saves"].items():
        if "error" in sv:
            console.print(f"{name}: {sv['error']}", highlight=False)
        else:
            pred = (f", predicted {size(sv['predicted_saving_bytes'])}" if "predicted_saving_bytes" in sv else "")
            console.print(f"{name}: peak {size(sv['measured_bytes'])}, saves {size(sv['saved_bytes'])} "
                          f"(measured{pred})", highlight=False)


def machine_table(m: dict[str, Any]) -> None:
    f = m["facts"]
    t = Table(title=f"this machine ({'cached' if m['cache_hit'] else 'measured'} {m['measured_at']})", title_justify="left")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("CPU", f"{f['cpu']}")
    t.add_row("cores / threads (torch)", f"{f.get('physical_cores') or '?'} / {f['logical_cpus']} ({f['torch_threads']})")
    t.add_row("SIMD", ", ".join(f["simd_flags"]) or "-")
    for g in f.get("gpus") or []:
        t.add_row(f"GPU {g['index']}", f"{g['name']}, {g['total_memory_bytes'] / 2**30:.1f} GiB, sm {g['compute_capability']}")
    for dev, table in (m.get("matmul") or {}).items():
        for dtype, x in table.items():
            t.add_row(f"matmul peak {dev} {dtype}", f"{x['gflops']:,.1f} GFLOP/s (n={x['n']})" if x.get("gflops") else "-")
    if m.get("memcpy"):
        t.add_row("memcpy", f"{m['memcpy']['gb_per_s']:.1f} GB/s")
    if m.get("h2d"):
        t.add_row("host to device", f"{m['h2d']['pageable_gb_per_s']:.1f} GB/s pageable, "
                                    f"{m['h2d']['pinned_gb_per_s']:.1f} GB/s pinned")
    d = m.get("disk") or {}
    if d.get("mb_per_s"):
        t.add_row(f"disk read ({d['cache']})", f"{d['mb_per_s']:,.0f} MB/s")
    runs = [p for p, v in (m.get("precisions") or {}).get("cpu", {}).items() if v.get("ok")]
    t.add_row("trainer.precision on cpu", ", ".join(runs))
    for dev, table in (m.get("precisions") or {}).items():
        if dev != "cpu":
            t.add_row(f"trainer.precision on {dev}", ", ".join(p for p, v in table.items() if v.get("ok")))
    console.print(t)


def plot_split(r: dict[str, Any], out_png: Path) -> None:
    """The step as one stacked bar of its phases (milliseconds)."""
    plt = pyplot()
    split = r["steps"]["split"]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    left = 0.0
    for i, (k, name) in enumerate(PHASE_NAMES.items()):
        ms = split[k] * 1e3
        ax.barh([0], [ms], left=left, color=f"C{i}", label=f"{name} ({ms:.1f} ms)")
        left += ms
    ax.set_yticks([])
    ax.set_xlabel("ms per training step")
    ax.set_title(r["verdict"]["text"][:90] + ("..." if len(r["verdict"]["text"]) > 90 else ""), fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, frameon=False)
    save(fig, out_png)


def plot_memory(r: dict[str, Any], out_png: Path) -> None:
    """Bytes per layer: parameters, gradients, optimizer state and saved activations, stacked."""
    plt = pyplot()
    rows = [x for x in r["memory"]["layers"] if x["params"] or x["activations"]]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.35), 4))
    bottom = [0.0] * len(rows)
    for i, key in enumerate(("params", "grads", "optimizer", "activations")):
        vals = [x[key] / 2**20 for x in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, color=f"C{i}", label=key)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(rows)), [x["layer"] for x in rows], rotation=70, fontsize=6, ha="right")
    ax.set_ylabel("MiB")
    p = r["memory"]["peak"]
    ax.set_title(f"memory by layer, batch {r['memory']['batch_size']}: peak predicted {_mib(p['predicted_bytes'])} MiB, "
                 f"measured {_mib(p['measured_bytes'])} MiB", fontsize=8)
    ax.legend(fontsize=7)
    save(fig, out_png)
