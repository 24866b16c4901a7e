"""Test-time augmentation run through the engine: the policies checked on a real image, measured
on a loader with the one-device evaluation Trainer, and written as tta.json and tta.png."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from cnnlab.engine.module import Classifier
from cnnlab.engine.trainer import evaluator
from cnnlab.env import device_info
from cnnlab.errors import UserError
from cnnlab.io import write_json
from cnnlab.recipe import Recipe
from cnnlab.tta.policy import Policy
from cnnlab.tta.run import evaluate, policies_for


def checked(recipe: Recipe, policies: list[str], sample: Tensor) -> list[Policy]:
    """The policies (the single view first), each run once on `sample`: a view that does not fit the
    images is a UserError naming it, before any work."""
    try:
        return policies_for(policies, recipe.eval, sample)
    except ValueError as e:
        raise UserError(f"eval.tta: {e}") from None


def measure(recipe: Recipe, module: Classifier, loader: Any, policies: list[str], accelerator: str,
            precision: str, progress: bool = True) -> dict[str, Any]:
    """The policies and the single view on `loader`'s images with `module`."""
    built = checked(recipe, policies, next(iter(loader))[0][:1])
    t = evaluator(accelerator, precision, progress)
    results = evaluate(module, loader, built, recipe.eval, recipe.eval.chunk or recipe.data.batch_size, t)
    return {**results, "precision": precision, "device": device_info(t)}


def write(results: dict[str, Any], folder: Path, stem: str = "tta") -> dict[str, Any]:
    """tta.json and the accuracy-against-cost chart tta.png in `folder`."""
    from cnnlab.report.tta import plot_tta

    folder.mkdir(parents=True, exist_ok=True)
    json_path, png = folder / f"{stem}.json", folder / f"{stem}.png"
    write_json(json_path, results)
    plot_tta(results, png)
    return {**results, "written": [str(json_path), str(png)]}
