"""`cnnlab tune`: the suggestion as a line to paste, and the range test's plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.report.console import console
from cnnlab.report.plots import pyplot, save


def plot_lr(lrs: list[float], losses: list[float], suggestion: float, recipe_lr: float, out_png: Path) -> None:
    """The range test: smoothed loss against the learning rate (log scale), the suggestion marked,
    and the recipe's rate."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(lrs, losses, color="C0")
    ax.set_xscale("log")
    ax.axvline(suggestion, color="C3", linewidth=1.5, label=f"suggested {suggestion:.3g} (steepest fall)")
    ax.axvline(recipe_lr, color="grey", linestyle="--", linewidth=1, label=f"the recipe's optim.lr = {recipe_lr:g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("learning-rate range test (Lightning's lr_find)", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, out_png)


def tune_summary(r: dict[str, Any]) -> None:
    if r["kind"] == "lr":
        console.print(f"learning-rate range test: {r['steps']} steps from {r['range'][0]:g} to {r['range'][1]:g}; "
                      f"suggested {r['suggestion']:.3g} (the recipe has {r['recipe_lr']:g})", highlight=False)
    else:
        stop = (f"; batch {r['stopped_by_budget'][0]} would exceed the budget" if r["stopped_by_budget"] else "")
        console.print(f"largest batch that ran: {r['largest']:,} (the recipe has {r['recipe_batch_size']:,}){stop}; "
                      f"its step's peak: predicted {r['predicted_bytes'] / 2**20:,.1f} MiB, measured "
                      f"{r['measured_bytes'] / 2**20:,.1f} MiB, budget {r['budget_bytes'] / 2**20:,.0f} MiB "
                      f"({r['budget_from']})", highlight=False)
    console.print(f"[b]{r['set']}[/]", highlight=False)
    console.print(f"written {r['run_dir']}/tune.json" + (", lr_find.png" if r["kind"] == "lr" else ""), highlight=False)
