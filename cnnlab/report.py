"""The one place that renders: rich tables on the console, PNG plots."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def error(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def epoch_metrics(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """metric name -> {epoch: value}, from Lightning's CSV log (epoch-level values only)."""
    out: dict[str, dict[int, float]] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            for k, v in row.items():
                if v and k not in ("epoch", "step") and not k.endswith("_step"):
                    out.setdefault(k.removesuffix("_epoch"), {})[int(row["epoch"])] = float(v)
    return out


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    """Loss and accuracy per epoch, train and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = epoch_metrics(metrics_csv)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("loss", "acc")):
        for stage in ("train", "val"):
            series = m.get(f"{stage}/{what}")
            if series:
                epochs = sorted(series)
                ax.plot([e + 1 for e in epochs], [series[e] for e in epochs], marker="o", label=stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("loss")
    axes[1].set_title("accuracy")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def train_summary(r: dict[str, Any]) -> None:
    t = Table(title=f"run {r['run_dir']}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("test accuracy", f"{r['test_acc']:.2%}")
    if r.get("best_val_acc") is not None:
        t.add_row("best val accuracy", f"{r['best_val_acc']:.2%}")
    t.add_row("epochs", str(r["epochs"]))
    t.add_row("images train/val/test", "/".join(str(v) for v in r["images"].values()))
    t.add_row("parameters", f"{r['parameters']:,}")
    t.add_row("wall time", f"{r['wall_time_s']:.1f} s")
    t.add_row("training throughput", f"{r['train_images_per_s']:,.0f} images/s")
    t.add_row("peak host memory", f"{r['peak_memory']['host_rss_mib']:.0f} MiB")
    t.add_row("device", f"{r['device']['type']}: {r['device']['name']}")
    t.add_row("checkpoint", r["checkpoint"])
    console.print(t)
    per = Table(title="per-class test accuracy", title_justify="left")
    per.add_column("class")
    per.add_column("accuracy", justify="right")
    for name, acc in r["per_class_acc"].items():
        per.add_row(name, f"{acc:.2%}")
    console.print(per)


def eval_summary(r: dict[str, Any]) -> None:
    t = Table(title=f"checkpoint {r['checkpoint']}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("test accuracy", f"{r['test_acc']:.2%}")
    t.add_row("test loss", f"{r['test_loss']:.4f}")
    t.add_row("test images", str(r["images"]))
    console.print(t)
