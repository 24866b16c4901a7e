"""`cnnlab train --sweep`: a line per run, the variant table and the loss curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlab.report.console import console
from cnnlab.report.plots import pyplot, save


def sweep_run(variant: str, seed: int, res: dict[str, Any]) -> None:
    """One line as each run of a sweep ends."""
    if res.get("diverged"):
        console.print(f"{variant}, seed {seed}: [red]diverged at step {res['diverged']['step']}[/]")
    else:
        console.print(f"{variant}, seed {seed}: test accuracy {res['test_acc']:.2%}, {res['train_images_per_s']:,.0f} images/s, "
                      f"{res['wall_time_s']:.1f} s", highlight=False)


def train_sweep_table(r: dict[str, Any]) -> None:
    """`cnnlab train --sweep`: per variant, test accuracy mean +- sd over seeds, final training loss,
    images/s as a ratio to the first variant (measured in the same sweep), weight memory."""
    t = Table(title=f"sweep ({r['sweep_dir']}), seeds {', '.join(map(str, r['seeds']))}", title_justify="left")
    base = r["baseline"]
    for col in ("variant", "test accuracy", f"vs {base}, paired by seed", "final train loss", "images/s", f"vs {base}", "weights"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for row in r["rows"]:
        bad = ", ".join(f"step {d['step']}" for d in row["diverged"])
        if "test_acc" not in row:
            t.add_row(row["variant"], f"[red]diverged ({bad})[/]", "-", "-", "-", "-", "-")
            continue
        acc = f"{row['test_acc']:.2%} ± {row['test_acc_sd']:.2%}" + (f" [red]({len(row['diverged'])} diverged: {bad})[/]" if bad else "")
        d = row["vs_baseline"]
        w = row["weights"]
        t.add_row(row["variant"], acc, f"{d[0] * 100:+.2f} ± {d[1] * 100:.2f} pt" if d else "-",
                  f"{row['final_train_loss']:.4f}", f"{row['train_images_per_s']:,.0f}",
                  f"{row['speed_ratio']:.2f}x" if row["speed_ratio"] else "-", f"{w['bytes'] / 1024:,.1f} KiB {w['dtype']}")
    console.print(t)
    d = r.get("device") or {}
    console.print(f"{d.get('type', '?')}: {d.get('name', '?')}; runs and sweep.json in {r['sweep_dir']}", highlight=False)


def plot_sweep_curves(r: dict[str, Any], out_png: Path) -> None:
    """Training loss per epoch, one line per variant (the mean over its seeds, each seed faint)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (variant, seeds) in enumerate(r["curves"].items()):
        color = f"C{i % 10}"
        epochs = sorted({int(e) for c in seeds.values() for e in c})
        for c in seeds.values():
            es = sorted(int(e) for e in c)
            ax.plot([e + 1 for e in es], [c[e] if e in c else c[str(e)] for e in es], color=color, alpha=0.25, lw=1)
        mean = [sum(c.get(e, c.get(str(e))) for c in seeds.values() if e in c or str(e) in c)
                / max(1, sum(e in c or str(e) in c for c in seeds.values())) for e in epochs]
        ax.plot([e + 1 for e in epochs], mean, color=color, marker="o", lw=2, label=variant)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("training loss per variant (mean over seeds; seeds faint)")
    save(fig, out_png)
