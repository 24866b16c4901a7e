"""`cnnlab augment`: the preview grid, the throughput bench and the ablation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlab.report.console import console
from cnnlab.report.plots import pyplot, save


def plot_grid(g, out_png: Path) -> None:
    """Rows of real images, one column per op (and pipeline draws)."""
    plt = pyplot()
    rows, cols = g.images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            im = g.images[r, c].permute(1, 2, 0).numpy()
            ax = axes[r][c]
            ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(g.columns[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(g.labels[r], fontsize=7)
    save(fig, out_png)


def bench_table(b: dict[str, Any]) -> None:
    t = Table(title=f"augmentation throughput: {' + '.join(b['ops'])}, batch {b['batch_size']}, "
                    f"{b['images_per_repeat']} images per repeat, {b['threads']} threads; images/s: median of "
                    f"{b['repeats']} passes, ratios: median of the passes' paired ratios (min-max)",
              title_justify="left")
    t.add_column("mode")
    t.add_column("images/s", justify="right")
    t.add_column("vs loader", justify="right")
    t.add_column("vs copy", justify="right")
    ips, p = b["images_per_s"], b["paired"]

    def span(r: dict[str, float], digits: int) -> str:
        return f"{r['median']:.{digits}f}x ({r['min']:.{digits}f}-{r['max']:.{digits}f})"

    t.add_row(f"device ({b['device']}, batched)", f"{ips['device']:,.0f}", span(p["device_over_loader"], 1),
              span(p["device_over_copy"], 2))
    t.add_row(f"loader ({b['loader_workers']} workers, v2 per sample)", f"{ips['loader']:,.0f}", "1x", "")
    t.add_row("plain copy of the same bytes", f"{ips['copy']:,.0f}", "", "1x")
    console.print(t)


def augment_summary(r: dict[str, Any]) -> None:
    """`cnnlab augment`: what the grid shows, then the bench and ablation tables when they ran."""
    console.print(f"wrote {r['grid']} ({r['grid_rows']} images x {len(r['grid_columns'])} columns: "
                  f"{', '.join(r['grid_columns'])})", highlight=False)
    if "bench" in r:
        bench_table(r["bench"])
    if "ablation" in r:
        ablation_table(r["ablation"])
        console.print(f"wrote {r['ablation_plot']}", highlight=False)


def ablation_table(a: dict[str, Any]) -> None:
    seeds = a["seeds"]
    t = Table(title=f"augmentation ablation: test accuracy at an equal budget ({a['epochs']} epochs, "
                    f"{a['images_per_class'] or 'all'} images/class, seeds {', '.join(map(str, seeds))})",
              title_justify="left")
    t.add_column("variant")
    t.add_column("test acc" + (" (mean ± sd)" if len(seeds) > 1 else ""), justify="right")
    t.add_column("vs none", justify="right")
    t.add_column("train time/run", justify="right")
    for row in a["variants"]:
        gain = row["gain_vs_none"]
        style = "green" if gain > 0 else "red" if gain < 0 else ""
        acc = f"{row['test_acc']:.2%}" + (f" ± {row['test_acc_std']:.2%}" if len(seeds) > 1 else "")
        t.add_row(row["variant"], acc, f"[{style}]{gain:+.2%}[/]" if row["variant"] != "none" else "—",
                  f"{row['wall_time_s']:.0f} s")
    console.print(t)


def plot_ablation(a: dict[str, Any], out_png: Path) -> None:
    plt = pyplot()
    names = [r["variant"] for r in a["variants"]]
    accs = [r["test_acc"] * 100 for r in a["variants"]]
    errs = [r["test_acc_std"] * 100 for r in a["variants"]]
    none = accs[0]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 4))
    colors = ["#888888"] + ["#2a9d8f" if v > none else "#e76f51" for v in accs[1:]]
    ax.bar(names, accs, color=colors, yerr=errs if len(a["seeds"]) > 1 else None, capsize=3)
    ax.axhline(none, color="black", lw=0.8, ls="--", label="no augmentation")
    lo, hi = min(a - e for a, e in zip(accs, errs)), max(a + e for a, e in zip(accs, errs))
    ax.set_ylim(max(0, lo - 2 * (hi - lo + 0.5)), hi + 0.5)
    for i, v in enumerate(accs):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"augmentation ablation, {a['epochs']} epochs, equal budget, {len(a['seeds'])} seed(s)")
    ax.legend(loc="lower right")
    save(fig, out_png)
