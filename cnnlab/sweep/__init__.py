"""Sweeps: the same recipe trained as several named variants (each a list of --set overrides),
every variant once per seed, summarised as mean +- sd with speed as a ratio to the first variant,
all measured side by side in one process."""
from __future__ import annotations

import statistics
from typing import Any


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(variant: str, runs: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of a sweep's table from its runs' results and the baseline variant's (a run that
    diverged counts as such). Seeds pair the runs: a variant and the baseline share the initial
    weights and the order of the batches, so the per-seed difference in test accuracy is the
    variant's effect with the seed's luck taken out."""
    done = [r for r in runs if r.get("diverged") is None]
    row: dict[str, Any] = {"variant": variant, "runs": len(runs), "diverged": [r["diverged"] for r in runs if r.get("diverged")]}
    if not done:
        return row
    acc, acc_sd = mean_sd([r["test_acc"] for r in done])
    speed = statistics.fmean(r["train_images_per_s"] for r in done)
    base = {r["seed"]: r for r in baseline if r.get("diverged") is None}
    paired = [r["test_acc"] - base[r["seed"]]["test_acc"] for r in done if r["seed"] in base]
    base_speed = statistics.fmean(r["train_images_per_s"] for r in base.values()) if base else None
    row.update(test_acc=acc, test_acc_sd=acc_sd, final_train_loss=statistics.fmean(r["final_train_loss"] for r in done),
               vs_baseline=mean_sd(paired) if paired else None,
               train_images_per_s=speed, speed_ratio=speed / base_speed if base_speed else None,
               weight_bytes=done[0]["weights"]["bytes"], weights=done[0]["weights"])
    return row
