"""`cnnlab eval-tta`: a run's checkpoint evaluated with test-time augmentation policies on the
test split its run used, each measured against the single view (tta.json, tta.png)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.engine import tta
from cnnlab.engine.checkpoint import load
from cnnlab.env import versions
from cnnlab.errors import UserError
from cnnlab.tta.spec import DEFAULT_POLICIES

# --set on eval-tta: how the run is evaluated, never what was trained or on which images
OVERRIDABLE = ("eval.", "data.batch_size", "data.num_workers", "trainer.accelerator", "trainer.precision")


def check_overrides(overrides: list[str]) -> None:
    bad = [o for o in overrides if not o.partition("=")[0].strip().startswith(OVERRIDABLE)]
    if bad:
        raise UserError(f"--set {bad[0]}: eval-tta evaluates the run as recorded; --set takes "
                        f"eval.* (eval.views.translate.px=1, eval.chunk=512), {', '.join(OVERRIDABLE[1:])}")


def run(path: Path, overrides: list[str] = (), out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """eval-tta on a run folder or checkpoint: the recipe's `eval.tta` policies (or a standard set),
    written to `out`, the run folder, or beside the checkpoint (`best.tta.json`)."""
    check_overrides(list(overrides))
    c = load(Path(path), overrides)
    policies = c.recipe.eval.tta or DEFAULT_POLICIES
    results = tta.measure(c.recipe, c.module, c.data.test_dataloader(), policies, c.accelerator, c.precision, progress)
    results = {"checkpoint": str(c.ckpt_path), **results, "versions": versions()}
    given = Path(path)
    if out is not None:
        return tta.write(results, Path(out))
    if given.is_dir():
        return tta.write(results, given)
    return tta.write(results, c.ckpt_path.parent, f"{c.ckpt_path.stem}.tta")
