"""`cnnlab train --sweep`: the recipe's `sweep:` variants, each once per seed, side by side in one
process; a table of mean +- sd and a plot of the loss curves in a sweep folder."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from cnnlab.engine.assemble import require_one_process
from cnnlab.engine.run import train
from cnnlab.env import versions
from cnnlab.engine.signals import interruptible
from cnnlab.errors import Diverged, Interrupted, UserError
from cnnlab.io import epoch_metrics, new_run_dir, write_json, write_recipe
from cnnlab.recipe import Recipe, load
from cnnlab.report.sweep import plot_sweep_curves
from cnnlab.sweep import summarise


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "variant"


def plan(recipe: Recipe) -> dict[tuple[str, int], Recipe]:
    """(variant, seed) -> its recipe, every one validated (and checked against this machine)
    before any folder is made."""
    if recipe.sweep is None:
        raise UserError("--sweep: the recipe has no sweep: section (sweep: {seeds: [0, 1], variants: {name: [KEY=VALUE, ...]}})")
    require_one_process(recipe, "train --sweep")
    base = recipe.dump()
    base.pop("sweep")
    # seed by seed, every variant in turn: a variant's runs are spread over the sweep, so a machine
    # that speeds up or slows down while it runs tilts no variant's images/s
    return {(v, s): load(None, overrides + [f"seed={s}"], base=base, preflight=True, source=f"sweep variant {v!r}")
            for s in recipe.sweep.seeds for v, overrides in recipe.sweep.variants.items()}


def run(recipe: Recipe, progress: bool = True, on_run: Callable[[str, int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train every (variant, seed); `on_run(variant, seed, result)` after each. A run that diverges
    is recorded (step, checkpoint) and the sweep goes on. SIGINT or SIGTERM stops it: the runs
    finished so far make the table, written to sweep.json marked interrupted (the run being
    trained keeps its checkpoint), and `Interrupted` says so."""
    runs_of = plan(recipe)
    out = new_run_dir(recipe.output.dir, f"{recipe.output.name or 'run'}-sweep")
    write_recipe(out, recipe.dump())
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in recipe.sweep.variants}
    curves: dict[str, dict[int, dict[int, float]]] = {v: {} for v in recipe.sweep.variants}
    try:
        with interruptible("sweeping"):
            for (variant, seed), r in runs_of.items():
                _one(variant, seed, r, out, progress, results, curves, on_run)
    except Interrupted as e:
        done = sum(map(len, results.values()))
        summary = _summary(recipe, out, results, curves)
        summary["interrupted"] = {**e.record(), "runs_done": done, "runs_planned": len(runs_of)}
        write_json(out / "sweep.json", summary)
        e.partial = summary
        raise e.kept(f"{done} of {len(runs_of)} runs finished and kept; the partial table is in {out / 'sweep.json'} "
                     "(marked interrupted)")
    summary = _summary(recipe, out, results, curves)
    write_json(out / "sweep.json", summary)
    if recipe.output.plots:
        plot_sweep_curves(summary, out / "sweep.png")
    return summary


def _one(variant: str, seed: int, r: Recipe, out: Path, progress: bool, results: dict[str, list[dict[str, Any]]],
         curves: dict[str, dict[int, dict[int, float]]], on_run: Callable[[str, int, dict[str, Any]], None] | None) -> None:
    """Train one (variant, seed) into the sweep folder; its result and loss curve go into `results`
    and `curves` once it has finished (a run stopped by a signal is not counted)."""
    r.output.dir, r.output.name = str(out), f"{_slug(variant)}-seed{seed}"
    try:
        res = train(r, progress=progress)
        run_dir = Path(res["run_dir"])
    except Diverged as e:
        run_dir = Path(e.checkpoint).parent.parent
        res = {"diverged": {"step": e.step, "checkpoint": e.checkpoint}, "run_dir": str(run_dir)}
    metrics = run_dir / "metrics.csv"  # none yet when a run diverges in its first steps
    loss = epoch_metrics(metrics).get("train/loss", {}) if metrics.is_file() else {}
    curves[variant][seed] = loss
    res.update(seed=seed, final_train_loss=loss[max(loss)] if loss else None)
    results[variant].append(res)
    if on_run is not None:
        on_run(variant, seed, res)


def _summary(recipe: Recipe, out: Path, results: dict[str, list[dict[str, Any]]],
             curves: dict[str, dict[int, dict[int, float]]]) -> dict[str, Any]:
    """sweep.json's content from the runs finished (all of them, or those before an interruption:
    variants without a finished run are left out)."""
    results = {v: rs for v, rs in results.items() if rs}
    baseline = next(iter(results.values()), [])
    rows = [summarise(v, rs, baseline) for v, rs in results.items()]
    return {"sweep_dir": str(out), "seeds": recipe.sweep.seeds, "baseline": rows[0]["variant"] if rows else None,
            "rows": rows, "variants": recipe.sweep.variants,
            "curves": {v: {str(s): c for s, c in cs.items()} for v, cs in curves.items() if cs},
            "runs": {v: [{k: r.get(k) for k in ("seed", "run_dir", "test_acc", "final_train_loss", "train_images_per_s",
                                                  "wall_time_s", "diverged")} for r in rs] for v, rs in results.items()},
            "device": next((r["device"] for rs in results.values() for r in rs if "device" in r), None),
            "versions": versions()}
