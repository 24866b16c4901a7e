"""`cnnlab augment`: the preview grid, the throughput bench and the ablation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlab.report.console import console
from cnnlab.report.plots import pyplot, save
from cnnlab.report.sweep import sweep_table


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
        a = r["ablation"]
        sweep_table(a, title=f"augmentation ablation: test accuracy at an equal budget ({a['epochs']} epochs, "
                             f"{a['images_per_class'] or 'all'} images/class, seeds {', '.join(map(str, a['seeds']))})")
        console.print(f"wrote {r['ablation_plot']}", highlight=False)
