"""`cnnlab tune RECIPE --lr | --batch-size`: Lightning's Tuner on the recipe's own model, data and
augmentation, through the engine's Trainer. `--lr` runs the learning-rate range test (`lr_find`)
and prints the suggestion as a `--set optim.lr=...` line to paste; `--batch-size` runs
`scale_batch_size`, stopping before a memory budget rather than after (on a CPU the kernel's
out-of-memory killer comes before any exception), and reports the largest size that ran and the
memory at it. A run folder holds tune.json and, for `--lr`, lr_find.png."""
from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from cnnlab.engine.assemble import assemble, require_one_process
from cnnlab.engine.callbacks import RunFolder
from cnnlab.engine.optim import build_optimizer
from cnnlab.engine.signals import interruptible
from cnnlab.engine.trainer import build_trainer
from cnnlab.env import host_free_bytes, versions
from cnnlab.errors import Interrupted, UserError
from cnnlab.io import new_run_dir, write_json, write_recipe
from cnnlab.profile import memory as mem
from cnnlab.recipe import Recipe, load

# the out-of-memory message Lightning's batch-size finder recognises on a CPU: it then backs off
CPU_OOM = "DefaultCPUAllocator: can't allocate memory"


class BudgetGuard:
    """Before each step of a trial: the planner's predicted peak at the trial's batch size against the
    budget. Over it, the trial ends as an allocation that failed would (Lightning's finder then backs
    off to the last size that ran), before any memory is taken. It wraps the module's
    on_train_batch_start: the finder sets the Trainer's callbacks aside while it runs its trials."""

    def __init__(self, per_image: float, fixed: float, budget: int, data: Any):
        self.per_image, self.fixed, self.budget, self.data = per_image, fixed, budget, data
        self.refused: list[int] = []

    def predicted(self, batch: int) -> float:
        return self.fixed + batch * self.per_image

    def attach(self, module: pl.LightningModule) -> None:
        before = module.on_train_batch_start

        def guarded(batch: Any, batch_idx: int) -> Any:
            bs = self.data.batch_size
            if self.predicted(bs) > self.budget:
                self.refused.append(bs)
                raise RuntimeError(f"{CPU_OOM}: batch {bs} would take {self.predicted(bs) / 2**20:,.0f} MiB, "
                                   f"over the budget of {self.budget / 2**20:,.0f} MiB")
            return before(batch, batch_idx)

        module.on_train_batch_start = guarded


def _loss_fn(recipe: Recipe) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    smoothing = recipe.optim.label_smoothing
    return lambda out, y: F.cross_entropy(out, y, label_smoothing=smoothing)


def _planner(recipe: Recipe, a: Any) -> tuple[float, float]:
    """(bytes per image, fixed bytes) of a training step's predicted peak, from the memory planner at
    two small batch sizes of the recipe's own images and model."""
    reports = []
    for n in (2, 4):
        x = a.module.prepare(a.data.train.images[:n])
        y = a.data.train.labels[:n]
        net = copy.deepcopy(a.module.net).train()
        reports.append(mem.per_layer(net, x, y, _loss_fn(recipe),
                                     lambda params, net=net: build_optimizer(list(net.named_parameters()), recipe.optim)))
    return mem.batch_scaling(reports[0], reports[1])


def check_flags(lr: bool, batch_size: bool, memory_budget: str | None, steps: int) -> int | None:
    if lr == batch_size:
        raise UserError("cnnlab tune: give one of --lr (learning-rate range test) or --batch-size (largest batch)")
    if steps < 10 and lr:
        raise UserError(f"--steps {steps}: the range test needs at least 10 steps")
    if steps < 1:
        raise UserError(f"--steps {steps}: at least 1")
    if memory_budget is not None and not batch_size:
        raise UserError("--memory-budget bounds --batch-size's trials; give it with --batch-size")
    return mem.parse_bytes(memory_budget) if memory_budget is not None else None


def run(recipe: Recipe, lr: bool = False, batch_size: bool = False, memory_budget: str | None = None,
        steps: int = 100, min_lr: float = 1e-6, max_lr: float = 10.0, max_trials: int = 12,
        progress: bool = True) -> dict[str, Any]:
    budget = check_flags(lr, batch_size, memory_budget, steps)
    require_one_process(recipe, "tune", "The tuner's trials run in one process")
    if not min_lr < max_lr:
        raise UserError(f"--min-lr {min_lr} and --max-lr {max_lr}: the range runs from the smaller to the larger")
    # the range test drives the loss up on purpose: no divergence stop (a non-finite loss ends its fit)
    r = load(None, ["optim.divergence=null"], base=recipe.dump(), source="cnnlab tune") if lr else recipe
    a = assemble(r)
    folder = new_run_dir(recipe.output.dir, f"{recipe.output.name or 'run'}-tune")
    write_recipe(folder, recipe.dump())
    try:
        with interruptible("tuning"):
            out = _lr(r, a, folder, steps, min_lr, max_lr, progress) if lr else \
                _batch(r, a, folder, budget if budget is not None else host_free_bytes(),
                       "--memory-budget" if budget is not None else "MemAvailable", max_trials, progress)
    except Interrupted as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise e.kept(f"nothing was kept: the tune folder {folder} was removed") from None
    finally:
        shutil.rmtree(folder / "scratch", ignore_errors=True)
    out.update(run_dir=str(folder), versions=versions(), seed=recipe.seed)
    write_json(folder / "tune.json", out)
    return out


def _trainer(recipe: Recipe, folder: Path, callbacks: list[pl.Callback], progress: bool) -> pl.Trainer:
    scratch = folder / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    return build_trainer(recipe.trainer, RunFolder(scratch), callbacks, has_val=False, progress=progress, root_dir=scratch)


def _lr(recipe: Recipe, a: Any, folder: Path, steps: int, min_lr: float, max_lr: float, progress: bool) -> dict[str, Any]:
    from pytorch_lightning.tuner import Tuner

    a.module.exploring = True
    trainer = _trainer(recipe, folder, [], progress)
    found = Tuner(trainer).lr_find(a.module, datamodule=a.data, min_lr=min_lr, max_lr=max_lr, num_training=steps,
                                   update_attr=False)
    lrs, losses = [float(x) for x in found.results["lr"]], [float(x) for x in found.results["loss"]]
    suggestion = steepest(lrs, losses)
    if suggestion is None or not math.isfinite(suggestion):
        raise UserError("cnnlab tune --lr: the loss never fell steadily over the range; try a wider --min-lr/--max-lr "
                        "or more --steps")
    line = f"--set optim.lr={suggestion:.3g}"
    from cnnlab.report.tune import plot_lr

    plot_lr(lrs, losses, suggestion, recipe.optim.lr, folder / "lr_find.png")
    return {"kind": "lr", "suggestion": suggestion, "set": line, "recipe_lr": recipe.optim.lr,
            "lightning_suggestion": found.suggestion(), "lrs": lrs, "losses": losses, "steps": len(lrs),
            "range": [min_lr, max_lr], "plot": str(folder / "lr_find.png")}


def steepest(lrs: list[float], losses: list[float], skip: int = 10) -> float | None:
    """The learning rate where the (smoothed) loss falls fastest against log10(lr), before its
    lowest point: the range test's usual reading. The first `skip` points are left out (the
    smoothing's start-up; Lightning skips as many), and so is everything after the loss's minimum,
    where it climbs again. Measured against log10(lr), not lr: Lightning's own suggestion takes the
    gradient against lr, which the exponential spacing tilts towards the smallest rates."""
    import numpy as np

    x, y = np.log10(np.asarray(lrs, dtype=float)), np.asarray(losses, dtype=float)
    finite = np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(y) < skip + 3:
        return None
    end = int(np.argmin(y[skip:])) + skip + 1
    if end - skip < 3:
        return None
    g = np.gradient(y[skip:end], x[skip:end])
    i = int(np.argmin(g))
    return float(10 ** x[skip + i]) if g[i] < 0 else None


def _batch(recipe: Recipe, a: Any, folder: Path, budget: int, budget_from: str, max_trials: int,
           progress: bool) -> dict[str, Any]:
    from pytorch_lightning.tuner import Tuner

    per_image, fixed = _planner(recipe, a)
    guard = BudgetGuard(per_image, fixed, budget, a.data)
    guard.attach(a.module)
    trainer = _trainer(recipe, folder, [], progress)
    start = a.data.batch_size
    found = Tuner(trainer).scale_batch_size(a.module, datamodule=a.data, mode="power", steps_per_trial=3,
                                            init_val=min(2, start), max_trials=max_trials,
                                            max_val=len(a.data.train.labels))
    if not found or found < 2 or guard.predicted(found) > budget:
        raise UserError(f"--memory-budget: not even a batch of 2 fits {budget / 2**20:,.0f} MiB "
                        f"(the planner predicts {(fixed + 2 * per_image) / 2**20:,.0f} MiB)")
    # the memory of a step at that size, measured (the planner predicted it)
    n = min(found, len(a.data.train.labels))
    x, y = a.module.prepare(a.data.train.images[:n]), a.data.train.labels[:n]
    net = copy.deepcopy(a.module.net).train()
    opt = build_optimizer(list(net.named_parameters()), recipe.optim)
    loss_fn = _loss_fn(recipe)
    measured, method = mem.measure_peak_cpu(lambda: mem.train_step(net, x, y, loss_fn, opt), net, opt, x, y)
    return {"kind": "batch_size", "largest": found, "recipe_batch_size": start, "budget_bytes": budget,
            "budget_from": budget_from, "stopped_by_budget": guard.refused, "per_image_bytes": per_image,
            "fixed_bytes": fixed, "predicted_bytes": guard.predicted(n), "measured_bytes": measured, "measured_at": n,
            "method": method, "set": f"--set data.batch_size={found}"}
