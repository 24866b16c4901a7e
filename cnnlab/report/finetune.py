"""`cnnlab finetune`: one regime's run, the regime sweep and the lecture's table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlab.report.console import at_chance, console
from cnnlab.report.plots import pyplot, save
from cnnlab.report.sweep import sweep_table


def finetune_summary(r: dict[str, Any]) -> None:
    t = Table(title=f"run {r['run_dir']}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    regime = r["regime"] + (f"  (auto: {r['why']})" if r["asked"] == "auto" else "")
    t.add_row("regime", regime)
    t.add_row("test accuracy", f"{r['test_acc']:.2%}")
    if r.get("best_val_acc") is not None:
        t.add_row("best val accuracy", f"{r['best_val_acc']:.2%}")
    t.add_row("backbone", f"{r['backbone']} ({r['weights']}), trained on {r['backbone_source']}")
    t.add_row("frozen stages", ", ".join(map(str, r["frozen_stages"])) or "none")
    t.add_row("head reads stages", ", ".join(map(str, r["taps"])))
    t.add_row("trainable parameters", f"{r['trainable_params']:,}")
    if r["peak_lr"]:
        t.add_row("peak learning rates", ", ".join(f"{v:.3g}" for v in r["peak_lr"].values()))
    if p := r.get("probe"):
        then = "; fine-tuned from it" if r["regime"] == "lp-ft" else ""
        t.add_row("linear probe", f"exact (L-BFGS/Newton), C = {p['C']:.3g} by {p['folds']}-fold CV over {len(p['grid'])} values "
                                  f"({min(p['grid']):.3g}-{max(p['grid']):.3g}); test accuracy {p['test_acc']:.2%}{then}")
    t.add_row("images train/val/test", "/".join(str(v) for v in r["images"].values()))
    cache = "no" if not r["features_cached"] else ("yes, hit" if r["cache_hit"] else "yes, computed")
    t.add_row("cached features", cache)
    t.add_row("wall time", f"{r['wall_time_s']:.1f} s (features {r['features_s']:.1f} s, fit {r['fit_s']:.1f} s)")
    t.add_row("checkpoint", r["checkpoint"])
    console.print(t)
    at_chance(r)


def sweep_summary(r: dict[str, Any]) -> None:
    """Every regime's test accuracy per (recipe, size), best marked; then the lecture's 2x2 table."""
    sweep_table({"seeds": [r["seed"]], "baseline": "the first regime", "rows": r["rows"], "sweep_dir": r["run_dir"],
                 "device": r["device"], "wall_time_s": r["wall_time_s"]},
                title=f"test accuracy per regime ({r['run_dir']}); each recipe and size against its first regime")
    sizes = list(dict.fromkeys(c["size"] for c in r["grid"]))  # as the recipes list them, ascending
    g = Table(title="the lecture's table: best regime measured, and `auto`'s pick (measured similarity, data size)",
              title_justify="left")
    g.add_column("recipe")
    for size in sizes:
        g.add_column(f"{size} images/class")
    for name in dict.fromkeys(c["recipe"] for c in r["grid"]):
        cells = []
        for size in sizes:
            c = next((c for c in r["grid"] if c["recipe"] == name and c["size"] == size), None)
            if c is None:
                cells.append("[dim]not run[/]")
                continue
            kind = "similar" if c["similar"] else "different"
            pick = "[green]agrees[/]" if c["best"] == c["auto"] else (
                f"auto: {c['auto']} {c['auto_acc']:.1%}" if c.get("auto_acc") is not None else f"auto: {c['auto']}")
            cells.append(f"[bold]{c['best']}[/] {c['best_acc']:.1%}\n{kind}; {pick}")
        g.add_row(name, *cells)
    console.print(g)
    console.print(f"sweep wall time {r['wall_time_s']:.0f} s on {r['device']['type']}: {r['device']['name']}; "
                  f"{len(r['runs'])} fits", highlight=False)


def plot_regimes(rows: list[dict[str, Any]], out_png: Path) -> None:
    """Test accuracy against training images per class, one line per regime, one panel per recipe."""
    plt = pyplot()
    recipes = list(dict.fromkeys(x["recipe"] for x in rows))
    fig, axes = plt.subplots(1, len(recipes), figsize=(5 * len(recipes), 4), squeeze=False)
    for ax, name in zip(axes[0], recipes):
        mine = [x for x in rows if x["recipe"] == name]
        for regime in dict.fromkeys(x["regime"] for x in mine):
            pts = sorted((x["images_per_class"], x["test_acc"]) for x in mine if x["regime"] == regime)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=regime)
        ax.set_xscale("log")
        ax.set_xlabel("training images per class")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{name} ({'similar' if mine[0]['similar'] else 'different'} data)")
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, out_png)
