"""`cnnlab bench-data`: the methods table and chart."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlab.report.console import console
from cnnlab.report.plots import pyplot, save


def bench_data_table(r: dict[str, Any]) -> None:
    t = Table(title=f"{r['images']:,} images of {'x'.join(map(str, r['shape']))} uint8, batches of {r['batch_size']}, "
                    f"{r['repeats']} interleaved rounds: medians, and ratios as the median of the rounds' ratios",
              title_justify="left")
    for col in ("method", "cache", "images/s", "MiB/s", "x PNG (warm)", "time / memcpy's"):
        t.add_column(col, justify="left" if col in ("method", "cache") else "right")
    for x in r["rows"]:
        t.add_row(x["what"], x["cache"], f"{x['images_per_s']:,.0f}", f"{x['mb_per_s']:,.0f}",
                  f"{x['x_png_warm']:,.1f}", f"{x['x_memcpy_time']:,.1f}")
    console.print(t)
    tg = r["targets"]
    console.print(f"packed DataLoader / PNG DataLoader (warm): {tg['packed_over_png']:,.0f}x (target >= 10x); "
                  f"packed gather's time / memcpy's: {tg['memcpy_over_packed']:.2f}x warm, {tg['memcpy_over_packed_hot']:.2f}x hot "
                  "(target <= 2x)", highlight=False)
    console.print("cold: page cache dropped; warm: file cached, a fresh map (a run's first epoch); "
                  "hot: the map's pages touched by a previous pass (later epochs)", highlight=False)
    console.print(f"page cache: {', '.join(r['page_cache']) or 'no cold runs'}; PNG loader workers: {r['png_workers']}",
                  highlight=False)
    if r["h2d"]:
        h = Table(title=f"host -> device copies ({r['gpu']})", title_justify="left")
        for col in ("size", "memory, mode", "GB/s"):
            h.add_column(col, justify="left" if col == "memory, mode" else "right")
        for x in r["h2d"]:
            h.add_row(f"{x['bytes'] / 2**20:,.2f} MiB", x["mode"], f"{x['gb_per_s']:.2f}")
        console.print(h)
    else:
        console.print("host -> device copies: no GPU here, not measured", highlight=False)
    console.print(f"written {r['run_dir']}/bench_data.json, bench_data.png", highlight=False)


def plot_bench_data(r: dict[str, Any], out_png: Path) -> None:
    """Images/s of every method (log scale), cold and warm side by side."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    rows = r["rows"]
    labels = [f"{x['what']} ({x['cache']})" if x["bytes_from"] != "memory" else x["what"] for x in rows]
    colours = {"files": "tab:red", "pack": "tab:blue", "memory": "tab:grey"}
    ax.barh(labels[::-1], [x["images_per_s"] for x in rows][::-1], color=[colours[x["bytes_from"]] for x in rows][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("images/s (median)")
    ax.set_title(f"{r['images']:,} images {'x'.join(map(str, r['shape']))}, batches of {r['batch_size']}")
    ax.grid(alpha=0.3, axis="x")
    save(fig, out_png)
