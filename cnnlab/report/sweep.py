"""Every sweep's renderers (`cnnlab sweep`, `train --sweep`, `augment --ablate`, `finetune --sweep`):
a line per trial as it ends, the one table of cells, the metric against each grid key, the loss curves."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rich.markup import escape
from rich.table import Table

from cnnlab.errors import Interrupted
from cnnlab.report.console import console
from cnnlab.report.plots import pyplot, save


def trial_line(o: dict[str, Any]) -> None:
    """One line as each trial ends."""
    who = f"{escape(o['cell'])}, seed {o['seed']}"
    if o["status"] == "done":
        console.print(f"{who}: test accuracy {o['test_acc']:.2%}, {o['train_images_per_s']:,.0f} images/s, "
                      f"{o['wall_time_s']:.1f} s", highlight=False)
    elif o["status"] == "diverged":
        console.print(f"{who}: [red]diverged at step {o['diverged']['step']}[/]", highlight=False)
    else:
        console.print(f"{who}: [red]{o['status']}[/]" + (f" ({escape(o['why'])})" if o.get("why") else ""), highlight=False)


def _pt(x: float) -> str:
    return f"{x * 100:+.2f}"


def paired_text(d: dict[str, Any] | None) -> str:
    """A paired difference in points of accuracy with its interval, e.g. `+1.20 pt [+0.40, +2.00]`."""
    if d is None:
        return "-"
    if d["low"] is None:
        return f"{_pt(d['mean'])} pt (1 seed)"
    return f"{_pt(d['mean'])} pt [{_pt(d['low'])}, {_pt(d['high'])}]"


def sweep_table(s: dict[str, Any], title: str | None = None) -> None:
    """Per cell: test accuracy mean +- sd over seeds, the difference from the baseline paired by
    seed with its 95% interval, final training loss, images/s (and as a ratio to the baseline's,
    measured in the same sweep), wall time per run; weight memory when the cells differ in it."""
    seeds = s["seeds"]
    t = Table(title=title or f"sweep ({s['sweep_dir']}), seeds {', '.join(map(str, seeds))}", title_justify="left")
    weights = {json.dumps(r.get("weights"), sort_keys=True) for r in s["rows"] if r.get("weights")}
    show_weights = len(weights) > 1
    cols = ["cell", "test accuracy", "vs baseline, paired by seed (95% CI)", "train loss", "images/s",
            "speed vs baseline", "time/run", *(["weights"] if show_weights else [])]
    for col in cols:  # the numbers on one line each; the cell's label and the interval wrap
        t.add_column(escape(col), justify="left" if col == "cell" else "right",
                     no_wrap=col not in ("cell", "test accuracy", cols[2]))
    for row in s["rows"]:
        bad = ", ".join(f"seed {p['seed']} {p['status']}" for p in row["problems"])
        name = escape(row["cell"]) + (" (baseline)" if row["baseline"] else "")
        if "test_acc" not in row:
            t.add_row(name, f"[red]{escape(bad)}[/]", *["-"] * (len(cols) - 2))
            continue
        n = row["done"]
        acc = f"{row['test_acc']:.2%} ± {row['test_acc_sd']:.2%}" if n > 1 else f"{row['test_acc']:.2%}"
        if bad:
            acc += f" [red]({escape(bad)})[/]"
        d = row["vs_baseline"]
        style = "" if d is None or d["low"] is None else "green" if d["low"] > 0 else "red" if d["high"] < 0 else ""
        diff = "-" if row["baseline"] else (f"[{style}]{paired_text(d)}[/]" if style else paired_text(d))
        loss = f"{row['final_train_loss']:.4f}" if row.get("final_train_loss") is not None else "-"
        speed = f"{row['train_images_per_s']:,.0f}" if row.get("train_images_per_s") else "-"
        ratio = f"{row['speed_ratio']:.2f}x" if row.get("speed_ratio") else "-"
        wall = f"{row['wall_time_s']:.1f} s" if row.get("wall_time_s") is not None else "-"
        extra = []
        if show_weights:
            w = row.get("weights") or {}
            extra = [f"{w.get('bytes', 0) / 1024:,.1f} KiB {w.get('dtype', '?')}"]
        t.add_row(name, acc, diff, loss, speed, ratio, wall, *extra)
    console.print(t)
    d = s.get("device") or {}
    parts = [f"{d.get('type', '?')}: {d.get('name', '?')}"]
    if "jobs" in s:
        parts.append(f"{s['jobs']} at once x {s['threads']} thread{'s' if s['threads'] != 1 else ''} "
                     f"({s['launcher']}; {s['jobs_why']})")
    parts.append(f"wall time {s.get('wall_time_s', 0):.0f} s; runs and sweep.json in {s['sweep_dir']}")
    console.print("; ".join(parts), highlight=False)


@contextmanager
def table_if_stopped() -> Iterator[None]:
    """A sweep stopped by a signal prints the table of the trials it finished, then its one line."""
    try:
        yield
    except Interrupted as e:
        if e.partial and e.partial.get("rows"):
            sweep_table(e.partial)
        raise


def _value_key(v: Any) -> Any:
    return (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, json.dumps(v))


def plot_sweep(s: dict[str, Any], out_png: Path, title: str | None = None) -> None:
    """Test accuracy (mean over seeds, sd as error bars) against each grid key, one panel per key and
    one line per combination of the other keys; a sweep of named variants only: one bar per cell."""
    plt = pyplot()
    rows = [r for r in s["rows"] if "test_acc" in r]
    keys = list(s.get("grid") or {})
    if not keys:
        fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2.5, 4))
        ax.bar(range(len(rows)), [r["test_acc"] * 100 for r in rows], yerr=[r["test_acc_sd"] * 100 for r in rows],
               capsize=3, color=["#888888" if r["baseline"] else "#2a9d8f" for r in rows])
        ax.set_xticks(range(len(rows)), [r["cell"] for r in rows], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        lo = min((r["test_acc"] - r["test_acc_sd"]) * 100 for r in rows) if rows else 0
        ax.set_ylim(max(0, lo - 5), None)
        base = next((r for r in rows if r["baseline"]), None)
        if base is not None:
            ax.axhline(base["test_acc"] * 100, color="black", lw=0.8, ls="--", label=f"{base['cell']} (baseline)")
            ax.legend(loc="lower right", fontsize=8)
        for i, r in enumerate(rows):
            ax.text(i, r["test_acc"] * 100, f"{r['test_acc'] * 100:.2f}", ha="center", va="bottom", fontsize=8)
    else:
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
        for ax, key in zip(axes[0], keys):
            others = [k for k in keys if k != key]
            groups: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                label = ", ".join(f"{k}={json.dumps(r['values'].get(k))}" for k in others) or "mean over seeds"
                groups.setdefault(label, []).append(r)
            xs = sorted({json.dumps(v) for v in s["grid"][key]}, key=lambda j: _value_key(json.loads(j)))
            for label, rs in groups.items():
                pts = sorted(rs, key=lambda r: xs.index(json.dumps(r["values"][key])))
                ax.errorbar([xs.index(json.dumps(r["values"][key])) for r in pts], [r["test_acc"] * 100 for r in pts],
                            yerr=[r["test_acc_sd"] * 100 for r in pts], marker="o", capsize=3, label=label)
            ax.set_xticks(range(len(xs)), xs, fontsize=8)
            ax.set_xlabel(key)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            if len(groups) > 1 or others:
                ax.legend(fontsize=7)
    n = len(s["seeds"])
    fig.suptitle(f"{title or 'test accuracy'}: mean ± sd over {n} seed{'s' if n != 1 else ''}", fontsize=10)
    save(fig, out_png)


def plot_sweep_curves(s: dict[str, Any], out_png: Path) -> None:
    """Training loss per epoch, one line per cell (the mean over its seeds, each seed faint)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (cell, seeds) in enumerate(s["curves"].items()):
        color = f"C{i % 10}"
        epochs = sorted({int(e) for c in seeds.values() for e in c})
        for c in seeds.values():
            es = sorted(int(e) for e in c)
            ax.plot([e + 1 for e in es], [c[str(e)] for e in es], color=color, alpha=0.25, lw=1)
        mean = [sum(c[str(e)] for c in seeds.values() if str(e) in c) / max(1, sum(str(e) in c for c in seeds.values()))
                for e in epochs]
        ax.plot([e + 1 for e in epochs], mean, color=color, marker="o", lw=2, label=cell)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("training loss per cell (mean over seeds; seeds faint)")
    save(fig, out_png)
