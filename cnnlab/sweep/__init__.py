"""Sweeps: the same recipe trained as several named variants (each a list of --set overrides),
every variant once per seed, summarised as mean +- sd with speed as a ratio to the first variant,
all measured side by side in one process."""
from __future__ import annotations

import statistics
from typing import Any


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(variant: str, runs: list[dict[str, Any]], baseline_images_per_s: float | None) -> dict[str, Any]:
    """One row of a sweep's table from its runs' results (a run that diverged counts as such)."""
    done = [r for r in runs if r.get("diverged") is None]
    row: dict[str, Any] = {"variant": variant, "runs": len(runs), "diverged": [r["diverged"] for r in runs if r.get("diverged")]}
    if not done:
        return row
    acc, acc_sd = mean_sd([r["test_acc"] for r in done])
    speed = statistics.fmean(r["train_images_per_s"] for r in done)
    row.update(test_acc=acc, test_acc_sd=acc_sd, final_train_loss=statistics.fmean(r["final_train_loss"] for r in done),
               train_images_per_s=speed, speed_ratio=speed / baseline_images_per_s if baseline_images_per_s else None,
               weight_bytes=done[0]["weights"]["bytes"], weights=done[0]["weights"])
    return row
