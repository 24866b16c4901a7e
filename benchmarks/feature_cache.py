"""The feature cache's speed-up: a linear head on frozen EfficientNet-Lite0 trained for 10 epochs
from cached pooled features vs with every image passed through the frozen backbone every epoch.
Same data, head, optimizer, schedule and Trainer (`fit_regime` both times; only finetune.cache_dir
differs). Alternating runs in one process; medians.

    python benchmarks/feature_cache.py [--per-class 200] [--epochs 10] [--repeats 3]
Target: cached (features already on disk) >= 10x faster than through the backbone. With the features
computed in the run, one extraction pass against `epochs` passes caps the speed-up near `epochs`.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from cnnlab import recipe as rc
from cnnlab.engine.callbacks import quiet_lightning
from cnnlab.engine import finetune as ft


def one(r: rc.Recipe, source: ft.Source, data, out: Path) -> tuple[float, float, bool]:
    res = ft.fit_regime(r, source, data, "linear", out, progress=False)
    return res["features_s"] + res["fit_s"], res["test_acc"], bool(res["cache_hit"])


def main() -> None:
    quiet_lightning()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/transfer_different.yaml")
    ap.add_argument("--per-class", type=int, default=200, help="training images per class")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="rounds (through, cold, warm), at least 5")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    base = [f"data.subset={args.per_class}", "data.test_subset=20", f"trainer.max_epochs={args.epochs}",
            "trainer.accelerator=cpu", f"output.dir={tmp}", "output.plots=false", "finetune.regime=linear",
            "finetune.probe=sgd"]  # the same training loop both ways (the exact solver needs no epochs)
    cached = rc.load(args.recipe, base + [f"finetune.cache_dir={tmp / 'cache'}"])
    direct = rc.load(args.recipe, base + ["finetune.cache_dir=null"])
    source = ft.load_source(cached)
    data = ft.load_data(cached, source)
    one(direct, source, data, tmp / "warmup")  # oneDNN kernel selection, allocator
    cold, warm, through, accs = [], [], [], {}
    for i in range(args.repeats):
        for d in (tmp / "cache").glob("*.pt"):
            d.unlink()
        t, accs["cached"], hit = one(cached, source, data, tmp / f"cold{i}")
        assert not hit
        cold.append(t)
        t, accs["cached"], hit = one(cached, source, data, tmp / f"warm{i}")
        assert hit
        warm.append(t)
        t, accs["through backbone"], _ = one(direct, source, data, tmp / f"direct{i}")
        through.append(t)
    n = len(data.train.labels)
    c, w, b = statistics.median(cold), statistics.median(warm), statistics.median(through)
    # speed-ups: the median of each round's own ratio (a round's three runs are seconds apart)
    cold_x = sorted(t / x for t, x in zip(through, cold))
    warm_x = sorted(t / x for t, x in zip(through, warm))
    span = lambda xs: f"{statistics.median(xs):.1f}x faster, rounds {xs[0]:.1f}-{xs[-1]:.1f}x"  # noqa: E731
    print(f"\nlinear head on frozen {cached.finetune.backbone} at {data.image_size} px, {n} training images, "
          f"{args.epochs} epochs, batch {cached.data.batch_size}, {args.repeats} interleaved rounds (medians), "
          f"{torch.get_num_threads()} threads")
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"  through the backbone every epoch   : {b:7.2f} s   runs: {fmt(through)}")
    print(f"  cached, features computed this run : {c:7.2f} s   runs: {fmt(cold)}   ({span(cold_x)})")
    print(f"  cached, features already on disk   : {w:7.2f} s   runs: {fmt(warm)}   ({span(warm_x)})")
    passes = (args.epochs * n + len(data.test.labels)) / (n + len(data.test.labels))
    print(f"  target: cached (features on disk) >= 10x faster. Computing the features is itself one backbone pass,\n"
          f"  so this run's extraction caps the cold speed-up at {passes:.1f}x (backbone passes, {args.epochs} epochs vs 1)")
    print(f"  test accuracy: cached {accs['cached']:.1%}, through the backbone {accs['through backbone']:.1%} "
          f"(the same training: tests/test_finetune.py checks the heads agree)")

if __name__ == "__main__":
    main()
