"""`cnnlab compare`: the runs side by side in one table, and their curves on one plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from cnnlab.report.console import console
from cnnlab.report.plots import pyplot, save

MANY = 4  # more differing keys than this: one `differs` column of key=value pairs, not a column each


def show(value: Any) -> str:
    """A recipe value as a --set would write it: 0.05, sgd, null, [16, 32, 32], {name: hflip}."""
    if isinstance(value, (dict, list)):
        import yaml

        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _value(row: dict[str, Any], key: str) -> str:
    return show(row["recipe"][key]) if key in row["recipe"] else "—"  # a key this run's recipe lacks


def pairs(row: dict[str, Any], keys: list[str], sep: str = ", ") -> str:
    """`optim.lr=0.05, seed=1`: a run's values of the differing keys, in one string."""
    return sep.join(f"{k}={_value(row, k)}" for k in keys)


def _accuracy(row: dict[str, Any]) -> str:
    """The test accuracy, or why there is none: a run that stopped is listed as such."""
    stop = row["stopped"] or {}
    if row["status"] == "diverged":
        return "[red]diverged[/]" + (f" (step {stop['step']})" if stop.get("step") is not None else "")
    if row["status"] == "interrupted":
        n = row["epochs"]
        return "[yellow]interrupted[/]" + (f" after {n:g} epoch{'s' if n != 1 else ''}" if n is not None else "")
    if row["status"] == "failed":
        return "[red]failed[/]"
    if row["test_acc"] is None:
        return "[yellow]no test accuracy[/]"
    return f"{row['test_acc']:.2%}"


def _or_dash(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def compare_table(r: dict[str, Any]) -> None:
    """One row per run: its name, the recipe keys that differ (a column each, or one `differs`
    column when there are many), test accuracy and loss, training images/s, wall time."""
    keys, rows = r["differing"], r["rows"]
    many = len(keys) > MANY
    what = (f"{len(keys)} recipe key{'s differ' if len(keys) != 1 else ' differs'}" if keys else
            "the recipes are the same but for output.dir and output.name")
    t = Table(title=f"{len(rows)} runs side by side: {what}" if len(rows) > 1 else "1 run", title_justify="left")
    t.add_column("run", no_wrap=True)
    for col in (["differs"] if many else keys):  # the only columns that wrap: long lists
        t.add_column(escape(col))
    for col in ("test acc", "test loss", "images/s", "wall time"):
        t.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        values = [pairs(row, keys, "\n")] if many else [_value(row, k) for k in keys]  # a pair a line
        t.add_row(escape(row["name"]), *map(escape, values), _accuracy(row), _or_dash(row["test_loss"], ".4f"),
                  _or_dash(row["train_images_per_s"], ",.0f"),
                  "—" if row["wall_time_s"] is None else f"{row['wall_time_s']:.1f} s")
    console.print(t)
    console.print(f"wrote {r['json']} and {r['plot']}", highlight=False)


def _label(row: dict[str, Any], keys: list[str]) -> str:
    """A line's legend: the run's name, with its values of the differing keys when they are few
    (a run folder's timestamped name alone says little about what changed)."""
    return row["name"] + (f" ({pairs(row, keys)})" if keys and len(keys) <= MANY else "")


def plot_compare(r: dict[str, Any], out_png: Path) -> None:
    """Training loss and validation accuracy per epoch, one line per run (dashed: a run that did not
    finish); a run that logged no such metric has no line in that panel."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (metric, label) in zip(axes, (("train/loss", "training loss (epoch mean)"),
                                          ("val/acc", "validation accuracy"))):
        for i, (row, curves) in enumerate(zip(r["rows"], r["curves"])):
            series = curves.get(metric)
            if not series:
                continue
            epochs = sorted(series, key=int)
            ax.plot([int(e) + 1 for e in epochs], [series[e] for e in epochs], color=f"C{i % 10}", marker="o", ms=3,
                    ls="-" if row["status"] == "finished" else "--", label=_label(row, r["differing"]))
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no run logged {metric}", ha="center", va="center", transform=ax.transAxes)
    save(fig, out_png)
