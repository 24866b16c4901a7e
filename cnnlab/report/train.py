"""`cnnlab train`: the run summary and its loss and accuracy curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlab.io import epoch_metrics
from cnnlab.report.console import at_chance, console, kv_table
from cnnlab.report.plots import pyplot, save
from cnnlab.report.tta import tta_table


def plot_curves(metrics_csv: Path, out_png: Path, label_smoothing: float = 0.0) -> None:
    """Loss and accuracy per epoch, train and validation."""
    plt = pyplot()
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
    axes[0].set_title(f"loss (train with label smoothing {label_smoothing:g})" if label_smoothing else "loss")
    axes[1].set_title("accuracy")
    save(fig, out_png)


def train_summary(r: dict[str, Any]) -> None:
    rows = [("test accuracy", f"{r['test_acc']:.2%}")]
    if r.get("best_val_acc") is not None:
        rows.append(("best val accuracy", f"{r['best_val_acc']:.2%}"))
    rows += [("epochs", str(r["epochs"])),
             ("images train/val/test", "/".join(str(v) for v in r["images"].values())),
             ("parameters", f"{r['parameters']:,}"),
             *([("weights", f"{w['bytes'] / 2**20:.2f} MiB ({w['dtype']}{', ' + w['format'] + ' ' + w['rounding'] if w['rounding'] else ''})")]
               if (w := r.get("weights")) else []),
             ("wall time", f"{r['wall_time_s']:.1f} s"),
             ("training throughput", f"{r['train_images_per_s']:,.0f} images/s"),
             ("peak host memory", f"{r['peak_memory']['host_rss_mib']:.0f} MiB"),
             ("device", f"{r['device']['type']}: {r['device']['name']}"),
             *([("data placement", _placement(p))] if (p := r.get("placement")) else []),
             ("checkpoint", r["checkpoint"])]
    console.print(kv_table(f"run {r['run_dir']}", rows))
    per = Table(title="per-class test accuracy", title_justify="left")
    per.add_column("class")
    per.add_column("accuracy", justify="right")
    for name, acc in r["per_class_acc"].items():
        per.add_row(name, f"{acc:.2%}")
    console.print(per)
    if r.get("tta"):
        tta_table(r["tta"])
    at_chance(r)



def _placement(p: dict[str, Any]) -> str:
    where = "on " + p["device"] if p["used"] == "device" else "host memory"
    return f"{where} ({p['bytes'] / 2**20:.1f} MiB)" + (f"; asked device: {p['why']}" if p["why"] else "")
