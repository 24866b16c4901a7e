"""The one place that renders: rich tables on the console, PNG plots."""
from __future__ import annotations

import csv
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.table import Table

console = Console()
if not console.is_terminal:  # a log file or a pipe: wide tables stay on one line per row
    console.width = max(console.width, 120)


def error(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def epoch_metrics(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """metric name -> {epoch: value}, from a run's metrics.csv (epoch-level values only)."""
    out: dict[str, dict[int, float]] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            for k, v in row.items():
                if v and k not in ("epoch", "step") and not k.endswith("_step"):
                    out.setdefault(k.removesuffix("_epoch"), {})[int(row["epoch"])] = float(v)
    return out


def plot_curves(metrics_csv: Path, out_png: Path, label_smoothing: float = 0.0) -> None:
    """Loss and accuracy per epoch, train and validation."""
    plt = _plt()
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
    _save(fig, out_png)


def _kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v)
    return t


def data_summary(d: dict[str, Any]) -> None:
    """The data report at the start of a run: one line, and for image files a table per class."""
    n = {k: sum(v.values()) for k, v in d["splits"].items()}
    files = d.get("files")
    how = (f"; {files['decoded']} files {'from the cache' if files['cached'] else 'decoded'} in {d['load_s']:.1f} s, "
           f"originals {files['smallest'][0]}x{files['smallest'][1]} to {files['largest'][0]}x{files['largest'][1]} px, "
           f"resize {files['resize']}") if files else f"; loaded in {d['load_s']:.1f} s"
    console.print(f"data: {d['source']}, {'x'.join(map(str, d['shape']))}, train {n['train']} / val {n['val']} / "
                  f"test {n['test']}{how}", highlight=False)
    if files:
        t = Table(title="images per class", title_justify="left")
        for col in ("class", "train", "val", "test"):
            t.add_column(col, justify="left" if col == "class" else "right")
        for c in d["splits"]["train"]:
            t.add_row(c, *(str(d["splits"][s][c]) for s in ("train", "val", "test")))
        console.print(t)
    if d["skipped"]:
        console.print(f"skipped {len(d['skipped'])} unreadable file(s), e.g. {d['skipped'][0]['file']}: "
                      f"{d['skipped'][0]['reason']}", style="yellow", highlight=False)
    for w in d["warnings"]:
        console.print(f"warning: {w}", style="yellow", highlight=False)


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
    console.print(_kv_table(f"run {r['run_dir']}", rows))
    per = Table(title="per-class test accuracy", title_justify="left")
    per.add_column("class")
    per.add_column("accuracy", justify="right")
    for name, acc in r["per_class_acc"].items():
        per.add_row(name, f"{acc:.2%}")
    console.print(per)
    if r.get("tta"):
        tta_table(r["tta"])


def _placement(p: dict[str, Any]) -> str:
    where = "on " + p["device"] if p["used"] == "device" else "host memory"
    return f"{where} ({p['bytes'] / 2**20:.1f} MiB)" + (f"; asked device: {p['why']}" if p["why"] else "")


def eval_summary(r: dict[str, Any]) -> None:
    console.print(_kv_table(f"checkpoint {r['checkpoint']}", [
        ("test accuracy", f"{r['test_acc']:.2%}"), ("test loss", f"{r['test_loss']:.4f}"),
        ("test images", str(r["images"])), ("device", f"{r['device']['type']}: {r['device']['name']}, {r['precision']}"),
        ("written", r["written"])]))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: Path) -> None:
    """Lay out, write under a temporary name and rename (a reader never sees half a PNG), close."""
    fig.tight_layout()
    tmp = Path(out_png).with_name(Path(out_png).name + ".tmp")
    fig.savefig(tmp, dpi=100, format="png")
    tmp.replace(out_png)
    _plt().close(fig)


def plot_grid(g, out_png: Path) -> None:
    """Rows of real images, one column per op (and pipeline draws)."""
    plt = _plt()
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
    _save(fig, out_png)


def bench_table(b: dict[str, Any]) -> None:
    t = Table(title=f"augmentation throughput: {' + '.join(b['ops'])}, batch {b['batch_size']}, "
                    f"{b['images_per_repeat']} images per repeat, {b['threads']} threads, median",
              title_justify="left")
    t.add_column("mode")
    t.add_column("images/s", justify="right")
    t.add_column("vs loader", justify="right")
    t.add_column("vs copy", justify="right")
    ips = b["images_per_s"]
    desc = {"device": f"device ({b['device']}, batched)", "loader": f"loader ({b['loader_workers']} workers, v2 per sample)",
            "copy": "plain copy of the same bytes"}
    for k in ("device", "loader", "copy"):
        t.add_row(desc[k], f"{ips[k]:,.0f}", f"{ips[k] / ips['loader']:.1f}x", f"{ips[k] / ips['copy']:.2f}x")
    console.print(t)


def augment_summary(r: dict[str, Any]) -> None:
    """`cnnlab augment`: what the grid shows, then the bench and ablation tables when they ran."""
    console.print(f"wrote {r['grid']} ({r['grid_rows']} images x {len(r['grid_columns'])} columns: "
                  f"{', '.join(r['grid_columns'])})", highlight=False)
    if "bench" in r:
        bench_table(r["bench"])
    if "ablation" in r:
        ablation_table(r["ablation"])
        console.print(f"wrote {r['ablation_plot']}", highlight=False)


def ablation_table(a: dict[str, Any]) -> None:
    seeds = a["seeds"]
    t = Table(title=f"augmentation ablation: test accuracy at an equal budget ({a['epochs']} epochs, "
                    f"{a['images_per_class'] or 'all'} images/class, seeds {', '.join(map(str, seeds))})",
              title_justify="left")
    t.add_column("variant")
    t.add_column("test acc" + (" (mean ± sd)" if len(seeds) > 1 else ""), justify="right")
    t.add_column("vs none", justify="right")
    t.add_column("train time/run", justify="right")
    for row in a["variants"]:
        gain = row["gain_vs_none"]
        style = "green" if gain > 0 else "red" if gain < 0 else ""
        acc = f"{row['test_acc']:.2%}" + (f" ± {row['test_acc_std']:.2%}" if len(seeds) > 1 else "")
        t.add_row(row["variant"], acc, f"[{style}]{gain:+.2%}[/]" if row["variant"] != "none" else "—",
                  f"{row['wall_time_s']:.0f} s")
    console.print(t)


def plot_ablation(a: dict[str, Any], out_png: Path) -> None:
    plt = _plt()
    names = [r["variant"] for r in a["variants"]]
    accs = [r["test_acc"] * 100 for r in a["variants"]]
    errs = [r["test_acc_std"] * 100 for r in a["variants"]]
    none = accs[0]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 4))
    colors = ["#888888"] + ["#2a9d8f" if v > none else "#e76f51" for v in accs[1:]]
    ax.bar(names, accs, color=colors, yerr=errs if len(a["seeds"]) > 1 else None, capsize=3)
    ax.axhline(none, color="black", lw=0.8, ls="--", label="no augmentation")
    lo, hi = min(a - e for a, e in zip(accs, errs)), max(a + e for a, e in zip(accs, errs))
    ax.set_ylim(max(0, lo - 2 * (hi - lo + 0.5)), hi + 0.5)
    for i, v in enumerate(accs):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"augmentation ablation, {a['epochs']} epochs, equal budget, {len(a['seeds'])} seed(s)")
    ax.legend(loc="lower right")
    _save(fig, out_png)


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


def sweep_summary(r: dict[str, Any]) -> None:
    """Every regime's test accuracy per (recipe, size), best marked; then the lecture's 2x2 table."""
    regimes = list(dict.fromkeys(x["regime"] for x in r["runs"]))
    t = Table(title=f"test accuracy per regime ({r['run_dir']})", title_justify="left")
    t.add_column("recipe")
    t.add_column("data")
    t.add_column("images/class", justify="right")
    for name in regimes:
        t.add_column(name, justify="right")
    for cell in r["grid"]:
        accs = {x["regime"]: x["test_acc"] for x in r["runs"] if x["recipe"] == cell["recipe"] and x["size"] == cell["size"]}
        row = [f"[bold green]{accs[g]:.1%} *[/]" if g == cell["best"] else f"{accs[g]:.1%}" if g in accs else "-"
               for g in regimes]
        t.add_row(cell["recipe"], "similar" if cell["similar"] else "different", str(cell["size"]), *row)
    console.print(t)
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
    plt = _plt()
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
    _save(fig, out_png)


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
    plt = _plt()
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
    _save(fig, out_png)


def bench_conv_table(r: dict[str, Any]) -> None:
    if r["rows"]:
        _layer_sweep_table(r)
    if r.get("model"):
        _model_tables(r)
    if r.get("stacking"):
        s = Table(title="stacking at equal channels", title_justify="left")
        for col in ("block", "parameters", "FLOPs", "non-linearities", "receptive field", "fwd+bwd ms"):
            s.add_column(col, justify="left" if col == "block" else "right")
        for x in r["stacking"]:
            s.add_row(x["block"], f"{x['parameters']:,}", f"{x['flops']:,}", str(x["nonlinearities"]),
                      f"{x['receptive_field']}x{x['receptive_field']}", f"{x['fwd_bwd_ms']:.2f}")
        console.print(s)
    if r.get("stacking_train"):
        s = Table(title="stacking, trained (cnnlab train of vgg-<block>)", title_justify="left")
        for col in ("model", "parameters", "epochs", "test acc", "test loss", "train img/s", "wall s"):
            s.add_column(col, justify="left" if col == "model" else "right")
        for x in r["stacking_train"]:
            s.add_row(x["model"], f"{x['parameters']:,}", str(x["epochs"]), f"{x['test_acc']:.2%}", f"{x['test_loss']:.3f}",
                      f"{x['train_images_per_s']:.0f}" if x["train_images_per_s"] else "", f"{x['wall_time_s']:.1f}")
        console.print(s)
    console.print(f"written {r['run_dir']}/bench_conv.json, bench_conv.png", highlight=False)


def _layer_sweep_table(r: dict[str, Any]) -> None:
    t = Table(title=f"convolution algorithms ({r['device']}, {r['torch_threads']} threads, median of {r['repeats']}; "
                    f"'same' padding, stride 1)", title_justify="left")
    for col in ("N,C,H,W,K,k", "algorithm", "ms", "GFLOP/s", "vs direct", "extra MiB", "rel. error"):
        t.add_column(col, justify="left" if col in ("N,C,H,W,K,k", "algorithm") else "right", no_wrap=True)
    for x in r["rows"]:
        shape = ",".join(map(str, x["shape"]))
        if "unsupported" in x:
            t.add_row(shape, x["algorithm"], "[dim]-[/]", "", "[dim]unsupported[/]", "", "")
            continue
        t.add_row(shape, x["algorithm"], f"{x['ms']:.2f}", f"{x['gflops']:.1f}", f"{x['vs_direct']:.2f}x",
                  f"{x['extra_mib']:.1f}", f"{x['rel_error']:.1e}")
    console.print(t)
    for why in dict.fromkeys(x["unsupported"] for x in r["rows"] if "unsupported" in x):
        console.print(f"unsupported: {why}", style="dim", highlight=False)


def _model_tables(r: dict[str, Any]) -> None:
    m = r["model"]
    algs = [t["algorithm"] for t in m["totals"]]
    t = Table(title=f"every convolution of {m['name']} at input {','.join(map(str, m['input']))} "
                    f"({r['device']}, median of {r['repeats']}; ms per forward)", title_justify="left")
    t.add_column("layer", no_wrap=True)
    t.add_column("weight", no_wrap=True)
    t.add_column("MFLOP", justify="right", no_wrap=True)
    for a in algs:
        t.add_column(a, justify="right", no_wrap=True)
    for x in m["layers"]:
        t.add_row(x["layer"], "x".join(map(str, x["weight"])) + (f" /{x['stride'][0]}" if x["stride"][0] > 1 else "")
                  + (f" g{x['groups']}" if x["groups"] > 1 else ""), f"{x['mflops']:.1f}",
                  *(f"{x['ms'][a]:.2f}" if a in x["ms"] else "[dim]-[/]" for a in algs))
    console.print(t)
    s = Table(title=f"{m['name']}: sums per algorithm (layers it cannot compute: '-' above, on direct in the net)",
              title_justify="left")
    for col in ("algorithm", "layers", "ms (its layers)", "vs direct", "all layers ms", "net fwd+bwd ms", "net vs direct"):
        s.add_column(col, justify="left" if col == "algorithm" else "right", no_wrap=True)
    for x in m["totals"]:
        s.add_row(x["algorithm"], f"{x['layers']}/{x['of']}", f"{x['ms']:.2f}",
                  f"{x['vs_direct']:.2f}x" if x["vs_direct"] else "", f"{x['all_layers_ms']:.2f}",
                  f"{x['net_fwd_bwd_ms']:.1f}", f"{x['net_vs_direct']:.2f}x" if x["net_vs_direct"] else "")
    console.print(s)
    for why in sorted({w for x in m["layers"] for w in x["unsupported"].values()}):
        console.print(f"unsupported: {why}", style="dim", highlight=False)


def plot_bench_conv(r: dict[str, Any], out_png: Path) -> None:
    """Time against kernel size, one line per algorithm; a model's net forward+backward per algorithm;
    the trained stacking variants' accuracy."""
    panels = [k for k in ("rows", "model", "stacking_train") if r.get(k)]
    if not panels:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "rows":
            for name in dict.fromkeys(x["algorithm"] for x in r["rows"]):
                pts = sorted((x["shape"][5], x["ms"]) for x in r["rows"] if x["algorithm"] == name and "ms" in x)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            ax.set_xlabel("kernel size k")
            ax.set_ylabel("ms per forward (median)")
            ax.set_yscale("log")
            ax.legend()
            ax.set_title("convolution algorithms, side by side")
        elif panel == "model":
            tot = r["model"]["totals"]
            ax.bar([t["algorithm"] for t in tot], [t["net_fwd_bwd_ms"] for t in tot])
            ax.set_ylabel("ms per forward+backward (median)")
            ax.set_yscale("log")
            ax.tick_params(axis="x", rotation=30)
            ax.set_title(f"{r['model']['name']} at {','.join(map(str, r['model']['input']))}")
        else:
            rows = r["stacking_train"]
            ax.bar([x["model"] for x in rows], [100 * x["test_acc"] for x in rows])
            lo = min(100 * x["test_acc"] for x in rows)
            ax.set_ylim(max(0, lo - 5), 100)
            for i, x in enumerate(rows):
                ax.annotate(f"{x['test_acc']:.2%}\n{x['parameters']:,} params", (i, 100 * x["test_acc"]),
                            ha="center", va="bottom", fontsize=8)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title("stacking variants, trained")
        ax.grid(alpha=0.3)
    _save(fig, out_png)


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
    plt = _plt()
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
    _save(fig, out_png)


@contextmanager
def byte_progress(total: int) -> Iterator[Callable[[int], None]]:
    """A transient progress bar of bytes written; its value advances it by n bytes."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    if not console.is_terminal:  # nothing to redraw in a log
        yield lambda n: None
        return
    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("writing", total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def status() -> Iterator[Callable[[str], None]]:
    """A transient status line (spinner); its value sets the text."""
    if not console.is_terminal:
        yield lambda text: None
        return
    with console.status("starting") as s:
        yield lambda text: s.update(text)


def pack_summary(r: dict[str, Any]) -> None:
    rows = [("source", str(r["source"])), ("images", ", ".join(f"{n} {c:,}" for n, c in r["splits"].items())),
            ("shape", "x".join(map(str, r["shape"])) + " uint8"), ("classes", str(len(r["classes"])))]
    rows += [("file", f"{f['file']} ({f['bytes'] / 2**20:.1f} MiB)") for f in r["files"]]
    if "write_s" in r:
        rows += [("read / write", f"{r['read_s']:.1f} s / {r['write_s']:.2f} s ({r['mb_per_s']:,.0f} MiB/s)")]
    else:
        rows += [("verified", f"header, size and SHA-256 of every file in {r['seconds']:.2f} s")]
    sha = r["sha256"] if isinstance(r["sha256"], str) else f"{len(r['sha256'])} shards, each checked"
    rows.append(("sha256", sha))
    if r.get("skipped"):
        rows.append(("left out", f"{len(r['skipped'])} unreadable files (data.bad_images: skip)"))
    if r.get("not_applied"):
        rows.append(("not applied", f"{', '.join('data.' + k for k in r['not_applied'])}: whole splits are packed; "
                                    "a recipe reading the pack selects"))
    console.print(_kv_table(f"pack {r['out']}", rows))


def bench_data_table(r: dict[str, Any]) -> None:
    speed = {x["method"]: x["images_per_s"] for x in r["rows"]}
    png, copy = speed["png-warm"], speed["memcpy"]
    t = Table(title=f"{r['images']:,} images of {'x'.join(map(str, r['shape']))} uint8, batches of {r['batch_size']}, "
                    f"median of {r['repeats']}", title_justify="left")
    for col in ("method", "cache", "images/s", "MiB/s", "x PNG (warm)", "time / memcpy's"):
        t.add_column(col, justify="left" if col in ("method", "cache") else "right")
    for x in r["rows"]:
        t.add_row(x["what"], x["cache"], f"{x['images_per_s']:,.0f}", f"{x['mb_per_s']:,.0f}",
                  f"{x['images_per_s'] / png:,.1f}", f"{copy / x['images_per_s']:,.1f}")
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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    rows = r["rows"]
    labels = [f"{x['what']} ({x['cache']})" if x["bytes_from"] != "memory" else x["what"] for x in rows]
    colours = {"files": "tab:red", "pack": "tab:blue", "memory": "tab:grey"}
    ax.barh(labels[::-1], [x["images_per_s"] for x in rows][::-1], color=[colours[x["bytes_from"]] for x in rows][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("images/s (median)")
    ax.set_title(f"{r['images']:,} images {'x'.join(map(str, r['shape']))}, batches of {r['batch_size']}")
    ax.grid(alpha=0.3, axis="x")
    _save(fig, out_png)
