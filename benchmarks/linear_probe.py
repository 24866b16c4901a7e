"""cnnlab's linear probe against scikit-learn's on the same frozen features and test images.

EfficientNet-Lite0's pooled top-stage features (cnnlab's feature cache) of `--per-class` training
images per class of recipes/transfer_different.yaml; L2 multinomial logistic regression with C chosen
by stratified 5-fold cross-validation over the same grid (0.001-100, half decades):
  cnnlab solver   `cnnlab finetune --regime linear` (finetune.probe: solver), on a cache hit
  cnnlab sgd      the same run with finetune.probe: sgd (the recipe's AdamW loop, zero-initialised head)
  sklearn         LogisticRegression (lbfgs) in GridSearchCV, as usually run (tol 1e-4)
  sklearn exact   the same, converged (tol 1e-10)

    python benchmarks/linear_probe.py [--per-class 10] [--seed 0]
Target: cnnlab solver within 0.5 points of scikit-learn's CV-chosen probe; its fit as fast as the
loop's on a cache hit (0.5-0.6 s before).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cnnlab import recipe as rc
from cnnlab.engine.callbacks import quiet_lightning
from cnnlab.engine import finetune as ft
from cnnlab.transfer.features import tap_slices
from cnnlab.transfer.probe import GRID


def sklearn_probe(xtr, ytr, xte, yte, seed: int, tol: float) -> tuple[float, float, float]:
    """(test accuracy, chosen C, seconds) of scikit-learn's cross-validated probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    folds = min(5, int(torch.bincount(ytr).min()))
    t0 = time.perf_counter()
    gs = GridSearchCV(LogisticRegression(tol=tol, max_iter=100_000), {"C": list(GRID)},
                      cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).fit(xtr.numpy(), ytr.numpy())
    return float(gs.score(xte.numpy(), yte.numpy())), float(gs.best_params_["C"]), time.perf_counter() - t0


def main() -> None:
    quiet_lightning()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/transfer_different.yaml")
    ap.add_argument("--per-class", type=int, default=10, help="training images per class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-probe-"))
    over = [f"data.subset={args.per_class}", f"seed={args.seed}", "finetune.regime=linear", "trainer.accelerator=cpu",
            f"output.dir={tmp}", "output.plots=false"]
    r = rc.load(args.recipe, over)
    source = ft.load_source(r)
    data = ft.load_data(r, source)
    feats, _ = ft.frozen_features(r, source, data)  # fills the cache
    cols = tap_slices(source.backbone.channels, (len(source.backbone.channels) - 1,))
    xtr, xte = feats["train"][:, cols].double(), feats["test"][:, cols].double()
    ytr, yte = data.train.labels, data.test.labels

    rows = []
    for probe in ("solver", "sgd"):
        rp = rc.load(args.recipe, over + [f"finetune.probe={probe}"])
        res = ft.fit_regime(rp, source, data, "linear", tmp / probe, progress=False)
        assert res["cache_hit"], "the features should come from the cache"
        c = res["probe"]["C"] if res["probe"] else None
        rows.append((f"cnnlab {probe}", res["test_acc"], c, res["fit_s"]))
    for name, tol in (("sklearn", 1e-4), ("sklearn exact", 1e-10)):
        acc, c, s = sklearn_probe(xtr, ytr, xte, yte, args.seed, tol)
        rows.append((name, acc, c, s))
    print(f"{args.per_class} images/class x {data.num_classes} classes, {len(yte)} test images, "
          f"{xtr.shape[1]} features (EfficientNet-Lite0 top stage), seed {args.seed}")
    for name, acc, c, s in rows:
        print(f"  {name:14s}: test {acc:6.1%}   C {c if c is not None else '-':>8}   fit {s:6.2f} s")
    ours = rows[0][1]
    for name, acc, _, _ in rows[2:]:
        print(f"  cnnlab solver - {name}: {100 * (ours - acc):+.1f} points (target within 0.5)")


if __name__ == "__main__":
    main()
