"""Test-time augmentation: the policy table and the accuracy-against-cost chart."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cnnlab.report.console import console
from cnnlab.report.plots import pyplot, save


def tta_table(r: dict[str, Any], title: str | None = None) -> None:
    """One row per policy: accuracy, NLL, ECE, cost, and the paired change from the single view."""
    t = Table(title=title or f"test-time augmentation ({r['images']:,} test images, {r['agg']}, "
                             f"{r['device']['type']}: {r['device']['name']})", title_justify="left")
    t.add_column("policy", no_wrap=True)
    for col in ("views", "top-1", "NLL", "ECE", "images/s", "change (95% CI)", "McNemar p"):
        t.add_column(col, justify="right", no_wrap=col != "McNemar p")
    for p in r["policies"]:
        d = p["vs_single"]
        if d is None:
            change, pval = "[dim]baseline[/]", ""
        else:
            lo, hi = d["ci95"]
            style = ("green" if d["delta"] > 0 else "red") if d["significant"] else "dim"
            change = f"[{style}]{d['delta'] * 100:+.2f} [{lo * 100:+.2f}, {hi * 100:+.2f}][/]"
            pval = f"{d['mcnemar_p']:.3g}"
        ips = f"{p['images_per_s']:,.0f}" if p["images_per_s"] else "-"
        t.add_row(p["policy"], str(p["views"]), f"{p['acc']:.2%}", f"{p['nll']:.4f}", f"{p['ece']:.4f}", ips, change, pval)
    console.print(t)
    console.print("change: points of top-1 against the single view on the same images; green/red: McNemar p < 0.05, "
                  "dim: within the noise", style="dim", highlight=False)
    for w in r.get("written", []):
        console.print(f"written {w}", highlight=False)


def plot_tta(r: dict[str, Any], out_png: Path) -> None:
    """Accuracy against cost: a bar per policy (sorted by views per image) with its paired 95%
    interval, and accuracy against images/s."""
    plt = pyplot()
    rows = sorted(r["policies"], key=lambda p: (p["views"], p["policy"]))
    base = next(p["acc"] for p in r["policies"] if p["vs_single"] is None)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = range(len(rows))
    accs = [p["acc"] * 100 for p in rows]
    err = [[(p["vs_single"]["delta"] - p["vs_single"]["ci95"][0]) * 100 if p["vs_single"] else 0 for p in rows],
           [(p["vs_single"]["ci95"][1] - p["vs_single"]["delta"]) * 100 if p["vs_single"] else 0 for p in rows]]
    colors = ["tab:gray" if p["vs_single"] is None else "tab:green" if p["vs_single"]["significant"] and p["vs_single"]["delta"] > 0
              else "tab:red" if p["vs_single"]["significant"] else "tab:blue" for p in rows]
    ax.bar(xs, accs, yerr=err, color=colors, capsize=3)
    ax.axhline(base * 100, color="k", lw=0.8, ls="--", label="single view")
    ax.set_xticks(list(xs), [f"{p['policy']}\n({p['views']} views)" for p in rows], rotation=45, ha="right", fontsize=8)
    lo = min(accs) - 1.5
    ax.set_ylim(lo, max(accs) + 1.0)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("accuracy per policy (bars: paired 95% CI of the change)")
    ax.legend(loc="lower right")
    for p in (p for p in rows if p["images_per_s"]):
        ax2.scatter(p["images_per_s"], p["acc"] * 100)
        ax2.annotate(p["policy"], (p["images_per_s"], p["acc"] * 100), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax2.set_xscale("log")
    ax2.set_xlabel("images/s (log)")
    ax2.set_ylabel("top-1 accuracy (%)")
    ax2.set_title("accuracy against throughput")
    ax2.grid(alpha=0.3)
    save(fig, out_png)
