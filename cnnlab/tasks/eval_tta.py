"""`cnnlab eval-tta`: a run's checkpoint evaluated with test-time augmentation policies on the
test split its run used, each measured against the single view (tta.json, tta.png)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from cnnlab import runinfo
from cnnlab.errors import UserError
from cnnlab.lit import Classifier
from cnnlab.recipe import Recipe
from cnnlab.tta.policy import Policy
from cnnlab.tta.run import evaluate, policies_for
from cnnlab.tta.spec import DEFAULT_POLICIES

# --set on eval-tta: how the run is evaluated, never what was trained or on which images
OVERRIDABLE = ("eval.", "data.batch_size", "data.num_workers", "trainer.accelerator", "trainer.precision")


def check_overrides(overrides: list[str]) -> None:
    bad = [o for o in overrides if not o.partition("=")[0].strip().startswith(OVERRIDABLE)]
    if bad:
        raise UserError(f"--set {bad[0]}: eval-tta evaluates the run as recorded; --set takes "
                        f"eval.* (eval.views.translate.px=1, eval.chunk=512), {', '.join(OVERRIDABLE[1:])}")


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
    from cnnlab.tasks.evaluate import trainer

    built = checked(recipe, policies, next(iter(loader))[0][:1])
    t = trainer(accelerator, precision, progress)
    results = evaluate(module, loader, built, recipe.eval, recipe.eval.chunk or recipe.data.batch_size, t)
    return {**results, "precision": precision, "device": runinfo.device_info(t)}


def write(results: dict[str, Any], folder: Path, stem: str = "tta") -> dict[str, Any]:
    """tta.json and the accuracy-against-cost chart tta.png in `folder`."""
    from cnnlab.report import plot_tta

    folder.mkdir(parents=True, exist_ok=True)
    json_path, png = folder / f"{stem}.json", folder / f"{stem}.png"
    runinfo.write_json(json_path, results)
    plot_tta(results, png)
    return {**results, "written": [str(json_path), str(png)]}


def run(path: Path, overrides: list[str] = (), out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """eval-tta on a run folder or checkpoint: the recipe's `eval.tta` policies (or a standard set),
    written to `out`, the run folder, or beside the checkpoint (`best.tta.json`)."""
    from cnnlab.tasks.evaluate import load

    check_overrides(list(overrides))
    c = load(Path(path), overrides)
    policies = c.recipe.eval.tta or DEFAULT_POLICIES
    results = measure(c.recipe, c.module, c.data.test_dataloader(), policies, c.accelerator, c.precision, progress)
    results = {"checkpoint": str(c.ckpt_path), **results, "versions": runinfo.versions()}
    given = Path(path)
    if out is not None:
        return write(results, Path(out))
    if given.is_dir():
        return write(results, given)
    return write(results, c.ckpt_path.parent, f"{c.ckpt_path.stem}.tta")
