"""The one summary of every sweep (`cnnlab sweep`, `train --sweep`, `augment --ablate`,
`finetune --sweep`): per cell, test accuracy as mean +- sd over seeds, the difference from the
baseline cell paired by seed with its confidence interval, images/s and wall time.

Seeds pair the runs: a cell and the baseline at the same seed share the initial weights and the
order of the batches, so the per-seed difference is the cell's effect with the seed's luck taken
out, and its spread is usually far smaller than either cell's own."""
from __future__ import annotations

import math
import statistics
from typing import Any

DONE = "done"
LEVEL = 0.95  # of the paired interval


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired(values: dict[int, float], base: dict[int, float], level: float = LEVEL) -> dict[str, Any] | None:
    """The mean of `values[s] - base[s]` over the seeds both have, its sd, and Student's t interval
    at `level` (None bounds with one pair: one difference says nothing of its spread). None
    without a common seed."""
    diffs = [values[s] - base[s] for s in sorted(values) if s in base]
    if not diffs:
        return None
    mean, sd = mean_sd(diffs)
    n = len(diffs)
    low = high = None
    if n > 1:
        from scipy.stats import t

        half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    return {"mean": mean, "sd": sd, "n": n, "low": low, "high": high, "level": level}


def summarise(outcomes: list[dict[str, Any]], order: list[str] | None = None, baseline: str | None = None,
              values: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per cell (in `order`, else as the outcomes first name them) from its runs' outcomes
    (`cell`, `seed`, `status`, and for a finished run `test_acc`, `train_images_per_s`,
    `wall_time_s`, ...). The baseline is `baseline` or the first cell; a run that did not finish
    (diverged, failed, interrupted) is listed in its cell's `problems` and counts in no mean."""
    order = list(dict.fromkeys([*(order or []), *(o["cell"] for o in outcomes)]))
    by_cell = {c: [o for o in outcomes if o["cell"] == c] for c in order}
    by_cell = {c: os for c, os in by_cell.items() if os}
    base_name = baseline if baseline in by_cell else next(iter(by_cell), None)
    base = _finished(by_cell.get(base_name, []))
    rows = []
    for cell, runs in by_cell.items():
        done = _finished(runs)
        row: dict[str, Any] = {
            "cell": cell, "values": (values or {}).get(cell, {}), "runs": len(runs), "done": len(done),
            "seeds": sorted(o["seed"] for o in runs), "baseline": cell == base_name,
            "problems": [{"seed": o["seed"], "status": o["status"], "why": o.get("why")}
                         for o in runs if o["status"] != DONE]}
        if done:
            acc, acc_sd = mean_sd([o["test_acc"] for o in done.values()])
            speed = _mean(done, "train_images_per_s")
            base_speed = _mean(base, "train_images_per_s")
            losses = [o["final_train_loss"] for o in done.values() if o.get("final_train_loss") is not None]
            row.update(
                test_acc=acc, test_acc_sd=acc_sd,
                test_loss=_mean(done, "test_loss"),
                vs_baseline=None if cell == base_name else paired(
                    {s: o["test_acc"] for s, o in done.items()}, {s: o["test_acc"] for s, o in base.items()}),
                train_images_per_s=speed,
                speed_ratio=speed / base_speed if speed is not None and base_speed else None,
                wall_time_s=_mean(done, "wall_time_s"),
                final_train_loss=statistics.fmean(losses) if losses else None,
                threads=sorted({o["threads"] for o in done.values() if o.get("threads") is not None}),
                weights=next(iter(done.values())).get("weights"))
        rows.append(row)
    return rows


def _finished(runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {o["seed"]: o for o in runs if o["status"] == DONE}


def _mean(runs: dict[int, dict[str, Any]], key: str) -> float | None:
    xs = [o[key] for o in runs.values() if o.get(key) is not None]
    return statistics.fmean(xs) if xs else None
