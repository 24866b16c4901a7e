"""`cnnlab bench-conv`: algorithm tables (layer sweep, a model's layers, stacking) and the chart."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlab.report.console import console
from cnnlab.report.plots import pyplot, save


def bench_conv_table(r: dict[str, Any]) -> None:
    if r["rows"]:
        _layer_sweep_table(r)
    if r.get("model"):
        _model_tables(r)
    if r.get("stacking"):
        s = Table(title="stacking at equal channels", title_justify="left")
        for col in ("block", "parameters", "FLOPs", "non-linearities", "receptive field", "fwd+bwd ms"):
            s.add_column(col, justify="left" if col == "block" else "right")
        for x in r["stacking"]:
            s.add_row(x["block"], f"{x['parameters']:,}", f"{x['flops']:,}", str(x["nonlinearities"]),
                      f"{x['receptive_field']}x{x['receptive_field']}", f"{x['fwd_bwd_ms']:.2f}")
        console.print(s)
    if r.get("stacking_train"):
        s = Table(title="stacking, trained (cnnlab train of vgg-<block>)", title_justify="left")
        for col in ("model", "parameters", "epochs", "test acc", "test loss", "train img/s", "wall s"):
            s.add_column(col, justify="left" if col == "model" else "right")
        for x in r["stacking_train"]:
            s.add_row(x["model"], f"{x['parameters']:,}", str(x["epochs"]), f"{x['test_acc']:.2%}", f"{x['test_loss']:.3f}",
                      f"{x['train_images_per_s']:.0f}" if x["train_images_per_s"] else "", f"{x['wall_time_s']:.1f}")
        console.print(s)
    console.print(f"written {r['run_dir']}/bench_conv.json, bench_conv.png", highlight=False)


def _layer_sweep_table(r: dict[str, Any]) -> None:
    t = Table(title=f"convolution algorithms ({r['device']}, {r['torch_threads']} threads, median of {r['repeats']}; "
                    f"'same' padding, stride 1)", title_justify="left")
    for col in ("N,C,H,W,K,k", "algorithm", "ms", "GFLOP/s", "vs direct", "extra MiB", "rel. error"):
        t.add_column(col, justify="left" if col in ("N,C,H,W,K,k", "algorithm") else "right", no_wrap=True)
    for x in r["rows"]:
        shape = ",".join(map(str, x["shape"]))
        if "unsupported" in x:
            t.add_row(shape, x["algorithm"], "[dim]-[/]", "", "[dim]unsupported[/]", "", "")
            continue
        t.add_row(shape, x["algorithm"], f"{x['ms']:.2f}", f"{x['gflops']:.1f}", f"{x['vs_direct']:.2f}x",
                  f"{x['extra_mib']:.1f}", f"{x['rel_error']:.1e}")
    console.print(t)
    for why in dict.fromkeys(x["unsupported"] for x in r["rows"] if "unsupported" in x):
        console.print(f"unsupported: {why}", style="dim", highlight=False)


def _model_tables(r: dict[str, Any]) -> None:
    m = r["model"]
    algs = [t["algorithm"] for t in m["totals"]]
    t = Table(title=f"every convolution of {m['name']} at input {','.join(map(str, m['input']))} "
                    f"({r['device']}, median of {r['repeats']}; ms per forward)", title_justify="left")
    t.add_column("layer", no_wrap=True)
    t.add_column("weight", no_wrap=True)
    t.add_column("MFLOP", justify="right", no_wrap=True)
    for a in algs:
        t.add_column(a, justify="right", no_wrap=True)
    for x in m["layers"]:
        t.add_row(x["layer"], "x".join(map(str, x["weight"])) + (f" /{x['stride'][0]}" if x["stride"][0] > 1 else "")
                  + (f" g{x['groups']}" if x["groups"] > 1 else ""), f"{x['mflops']:.1f}",
                  *(f"{x['ms'][a]:.2f}" if a in x["ms"] else "[dim]-[/]" for a in algs))
    console.print(t)
    s = Table(title=f"{m['name']}: sums per algorithm (layers it cannot compute: '-' above, on direct in the net)",
              title_justify="left")
    for col in ("algorithm", "layers", "ms (its layers)", "vs direct", "all layers ms", "net fwd+bwd ms", "net vs direct"):
        s.add_column(col, justify="left" if col == "algorithm" else "right", no_wrap=True)
    for x in m["totals"]:
        s.add_row(x["algorithm"], f"{x['layers']}/{x['of']}", f"{x['ms']:.2f}",
                  f"{x['vs_direct']:.2f}x" if x["vs_direct"] else "", f"{x['all_layers_ms']:.2f}",
                  f"{x['net_fwd_bwd_ms']:.1f}", f"{x['net_vs_direct']:.2f}x" if x["net_vs_direct"] else "")
    console.print(s)
    for why in sorted({w for x in m["layers"] for w in x["unsupported"].values()}):
        console.print(f"unsupported: {why}", style="dim", highlight=False)


def plot_bench_conv(r: dict[str, Any], out_png: Path) -> None:
    """Time against kernel size, one line per algorithm; a model's net forward+backward per algorithm;
    the trained stacking variants' accuracy."""
    panels = [k for k in ("rows", "model", "stacking_train") if r.get(k)]
    if not panels:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "rows":
            for name in dict.fromkeys(x["algorithm"] for x in r["rows"]):
                pts = sorted((x["shape"][5], x["ms"]) for x in r["rows"] if x["algorithm"] == name and "ms" in x)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            ax.set_xlabel("kernel size k")
            ax.set_ylabel("ms per forward (median)")
            ax.set_yscale("log")
            ax.legend()
            ax.set_title("convolution algorithms, side by side")
        elif panel == "model":
            tot = r["model"]["totals"]
            ax.bar([t["algorithm"] for t in tot], [t["net_fwd_bwd_ms"] for t in tot])
            ax.set_ylabel("ms per forward+backward (median)")
            ax.set_yscale("log")
            ax.tick_params(axis="x", rotation=30)
            ax.set_title(f"{r['model']['name']} at {','.join(map(str, r['model']['input']))}")
        else:
            rows = r["stacking_train"]
            ax.bar([x["model"] for x in rows], [100 * x["test_acc"] for x in rows])
            lo = min(100 * x["test_acc"] for x in rows)
            ax.set_ylim(max(0, lo - 5), 100)
            for i, x in enumerate(rows):
                ax.annotate(f"{x['test_acc']:.2%}\n{x['parameters']:,} params", (i, 100 * x["test_acc"]),
                            ha="center", va="bottom", fontsize=8)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title("stacking variants, trained")
        ax.grid(alpha=0.3)
    save(fig, out_png)
